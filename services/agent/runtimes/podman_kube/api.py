"""The podman-kube connector's calls to podman's API service (the libpod
endpoints of Podman 4.3), through the podman connector's client
(podman/api.py): play and tear down a Kubernetes YAML, and Ankaios's two
bookkeeping volumes. Each raises ApiFailure as PodmanApi's calls do."""

from __future__ import annotations

import json
from typing import Any

from services.agent.runtimes.podman.api import ApiFailure, PodmanApi

YAML_HEADERS = {"Content-Type": "application/x-yaml"}
# Podman pulls a missing image during play: as long as the CLI's `kube play`.
PLAY_TIMEOUT_S = 300
DOWN_TIMEOUT_S = 120


def play(api: PodmanApi, manifest: str, params: dict[str, object]) -> list[str]:
    """`POST /libpod/play/kube`: the ids of the pods it made (started unless
    params say start=false). A pod whose containers failed is an ApiFailure.
    With replace: a pod of the same name gives way (Podman 4.3's service
    does not act on `replace` itself: its CLI tears down first; here the
    YAML's pods are torn down, then played again, only when a name is in use)."""

    def post() -> Any:
        return api._call(
            "post",
            "/play/kube",
            ok=(200,),
            data=manifest.encode(),
            headers=YAML_HEADERS,
            params=params,
            timeout=PLAY_TIMEOUT_S,
        )

    try:
        response = post()
    except ApiFailure as exc:
        if not (params.get("replace") and "already exists" in str(exc)):
            raise
        down(api, manifest)
        response = post()
    report = response.json()
    pods = report.get("Pods") if isinstance(report, dict) else None
    ids: list[str] = []
    for pod in pods if isinstance(pods, list) else []:
        if not isinstance(pod, dict):
            continue
        errors = [str(e) for e in pod.get("ContainerErrors") or [] if e]
        if errors:
            raise ApiFailure("; ".join(errors), status=500)
        ids.append(str(pod.get("ID", "")))
    return ids


def down(api: PodmanApi, manifest: str) -> None:
    """`DELETE /libpod/play/kube`: stops and removes the pods of the YAML;
    pods already gone are no error."""
    try:
        api._call(
            "delete", "/play/kube", ok=(200,), data=manifest.encode(), headers=YAML_HEADERS, timeout=DOWN_TIMEOUT_S
        )
    except ApiFailure as exc:
        if "no such pod" not in str(exc):
            raise


def replace_volume(api: PodmanApi, name: str, labels: dict[str, str]) -> None:
    """A volume of that name (a leftover of an earlier run goes first)."""
    remove_volume(api, name)
    body = json.dumps({"Name": name, "Label": labels})
    api._call("post", "/volumes/create", ok=(201,), data=body, headers={"Content-Type": "application/json"})


def remove_volume(api: PodmanApi, name: str) -> None:
    api._call("delete", f"/volumes/{name}", ok=(204, 404), params={"force": True})
