"""The `podman run` command line → podman API create body (podman/spec.py):
what is translated, and that anything else is refused by name (the connector
then runs that workload through the CLI)."""

from __future__ import annotations

import pytest

from schemas.runtime_configs import PodmanConfig
from services.agent.runtimes.podman.core import run_command, run_labels
from services.agent.runtimes.podman.spec import Untranslatable, api_run


def argv(*options: str, args: tuple[str, ...] = (), general: tuple[str, ...] = ()) -> list[str]:
    config = PodmanConfig(
        image="img:1", command_options=list(options), command_args=list(args), general_options=list(general)
    )
    return run_command(
        config, name="w.i.a", labels=run_labels("a", "w", "i", "r1"), mounts=[("/host/f", "/etc/f")], image="img:1"
    )


def test_the_connectors_own_command_line_translates_whole() -> None:
    run = api_run(argv(args=("sleep", "30")))
    assert run.replace is True
    assert run.spec["name"] == "w.i.a"
    assert run.spec["image"] == "img:1"
    assert run.spec["command"] == ["sleep", "30"]
    assert run.spec["labels"] == {"ank.agent": "a", "ank.workload": "w", "ank.instance": "i", "ank.run": "r1"}
    assert run.spec["mounts"] == [
        {"type": "bind", "source": "/host/f", "destination": "/etc/f", "options": ["rbind", "ro"]}
    ]


def test_common_run_options_translate() -> None:
    run = api_run(
        argv(
            "-e", "A=1", "--env=B=x=y", "-p", "8081:80", "--publish", "127.0.0.1:9000:90/udp", "--net=host",
            "-w", "/srv", "--user", "1000:1000", "--hostname", "h1", "--entrypoint", '["/bin/sh","-c"]',
            "-v", "/data:/data:ro", "-v", "vol1:/v", "--mount", "type=tmpfs,destination=/tmp",
            "--rm", "--privileged=false", "--init", "--cap-add", "NET_ADMIN,SYS_TIME", "-l", "mine=yes",
        )
    )  # fmt: skip
    spec = run.spec
    assert spec["env"] == {"A": "1", "B": "x=y"}
    assert spec["portmappings"] == [
        {"container_port": 80, "host_port": 8081},
        {"container_port": 90, "host_port": 9000, "host_ip": "127.0.0.1", "protocol": "udp"},
    ]
    assert spec["netns"] == {"nsmode": "host"}
    assert (spec["work_dir"], spec["user"], spec["hostname"]) == ("/srv", "1000:1000", "h1")
    assert spec["entrypoint"] == ["/bin/sh", "-c"]
    assert {"type": "bind", "source": "/data", "destination": "/data", "options": ["rbind", "ro"]} in spec["mounts"]
    assert {"type": "tmpfs", "source": "tmpfs", "destination": "/tmp", "options": []} in spec["mounts"]
    assert spec["volumes"] == [{"Name": "vol1", "Dest": "/v", "Options": []}]
    assert (spec["remove"], spec["privileged"], spec["init"]) == (True, False, True)
    assert spec["cap_add"] == ["NET_ADMIN", "SYS_TIME"]
    assert spec["labels"]["mine"] == "yes"


def test_our_labels_win_over_the_manifests() -> None:
    assert api_run(argv("--label", "ank.agent=other")).spec["labels"]["ank.agent"] == "a"


def test_a_name_of_the_manifest_replaces_ours_and_gets_no_replace() -> None:
    run = api_run(argv("--name", "custom"))
    assert run.spec["name"] == "custom"
    assert run.replace is False


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--memory", "64m"), "--memory"),
        (("--bogus",), "--bogus"),
        (("-it",), "-it"),
        (("-e", "FROM_HOST"), "FROM_HOST"),
        (("-p", "8000-8010:80"), "8000-8010:80"),
        (("--network", "container:x"), "container:x"),
        (("-v", "/anonymous"), "/anonymous"),
        (("--mount", "type=volume,source=v,destination=/v"), "type=volume"),
        (("--rm=maybe",), "--rm=maybe"),
        (("--entrypoint", ""), "--entrypoint"),
    ],
)
def test_what_is_not_translated_is_refused_by_name(options: tuple[str, ...], named: str) -> None:
    with pytest.raises(Untranslatable, match=named):
        api_run(argv(*options))


def test_general_options_are_not_translated() -> None:
    with pytest.raises(Untranslatable, match="generalOptions --log-level"):
        api_run(argv(general=("--log-level", "debug")))
