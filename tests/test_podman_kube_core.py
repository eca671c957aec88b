"""The podman-kube connector's translation of a runtimeConfig into the query
parameters of podman's `POST /libpod/play/kube` (pure)."""

from __future__ import annotations

import pytest

from services.agent.runtimes.podman_kube.core import NotThroughApi, decode_kube_config, play_params

MANIFEST = "manifest: |\n  kind: Pod\n"


def params(extra: str) -> dict[str, object]:
    return play_params(decode_kube_config(MANIFEST + extra))


def test_no_options_replace_and_start() -> None:
    assert params("") == {"replace": True, "start": True}


def test_play_options_become_query_parameters_in_both_spellings() -> None:
    got = params(
        "playOptions: [--network, none, --log-driver=k8s-file, --no-hosts, --ip=10.88.0.9,"
        " --ip, 10.88.0.10, --mac-address, 'aa:bb:cc:dd:ee:ff', --tls-verify=false, --start=false, -q]\n"
    )
    assert got == {
        "replace": True,
        "start": False,
        "network": ["none"],
        "logDriver": "k8s-file",
        "noHosts": True,
        "staticIPs": ["10.88.0.9", "10.88.0.10"],
        "staticMACs": ["aa:bb:cc:dd:ee:ff"],
        "tlsVerify": False,
    }


def test_an_explicit_replace_is_kept_once() -> None:
    assert params("playOptions: [--replace]\n") == {"replace": True, "start": True}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("playOptions: [--configmap, /etc/cm.yaml]\n", "--configmap"),
        ("playOptions: [--build]\n", "--build"),
        ("playOptions: [--userns, auto]\n", "--userns"),
        ("playOptions: [--network]\n", "--network without a value"),
        ("playOptions: [--start=maybe]\n", "--start=maybe"),
        ("generalOptions: [--log-level, debug]\n", "generalOptions --log-level debug"),
        ("downOptions: [--force]\n", "downOptions --force"),
    ],
)
def test_what_the_api_cannot_take_is_named(extra: str, named: str) -> None:
    with pytest.raises(NotThroughApi, match=named.replace("-", r"\-")):
        params(extra)
