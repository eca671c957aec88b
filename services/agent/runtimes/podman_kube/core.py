"""The `podman-kube` connector's decisions, without podman: the Kubernetes
YAML to play for a workload and how many containers make it run. Pure.

Theory of operation
-------------------
The workload's `manifest` (Pods, Deployments and whatever else `podman kube
play` accepts, as a multi-document YAML) is played with the workload's four
labels (`ank.agent`, `ank.workload`, `ank.instance`, `ank.run`) added to
every pod template: podman puts a pod's labels on its containers (not on
the infra container), so the same event stream and the same run summary as
for `podman` (podman/core.py) follow the pod's containers: Running when all
of them run, exited when all have ended (the first non-zero exit code), lost
when one is removed behind the agent's back. Images are mapped through the
image map like a podman workload's.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from ank_common.nested import dig
from schemas.runtime_configs import PodmanKubeConfig
from services.agent.runtimes.base import StartError
from services.agent.runtimes.podman.core import ImageMap, decode_runtime_config, map_image

# Fields Ankaios accepts in a podman-kube runtimeConfig that this connector
# does not use: dropped, not rejected. (controlInterfaceTarget is used: the
# Control Interface is mounted into that container.)
IGNORED_ANKAIOS_FIELDS: tuple[str, ...] = ()
POD_KINDS = ("Pod", "Deployment")


def decode_kube_config(text: str) -> PodmanKubeConfig:
    try:
        raw = yaml.load(text, Loader=yaml.BaseLoader) if text.strip() else None
    except yaml.YAMLError:
        raw = None  # decode_runtime_config names the YAML error
    if isinstance(raw, dict) and any(field in raw for field in IGNORED_ANKAIOS_FIELDS):
        text = yaml.safe_dump({k: v for k, v in raw.items() if k not in IGNORED_ANKAIOS_FIELDS})
    config = decode_runtime_config(text, PodmanKubeConfig, "podman-kube")
    if not config.manifest.strip():
        raise StartError("runtimeConfig of runtime podman-kube: `manifest` is empty", permanent=True)
    return config


class KubePlay:
    """The manifest to play and what it will run."""

    def __init__(self, text: str, expected: int, pods: list[str]) -> None:
        self.text = text
        self.expected = expected  # containers that must run for the workload to be Running
        self.pods = pods


def prepare_manifest(manifest: str, labels: Mapping[str, str], image_map: ImageMap) -> KubePlay:
    """The manifest with our labels on every pod and images mapped. A manifest
    that can never be played raises StartError(permanent=True)."""
    try:
        documents = [doc for doc in yaml.safe_load_all(manifest) if doc is not None]
    except yaml.YAMLError as exc:
        raise StartError(f"podman-kube manifest is not valid YAML: {exc}", permanent=True) from None
    expected = 0
    pods: list[str] = []
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise StartError(f"podman-kube manifest document {index} is not a mapping", permanent=True)
        kind = doc.get("kind")
        if kind not in POD_KINDS:
            continue
        name = dig(doc, "metadata", "name")
        if not isinstance(name, str) or not name:
            raise StartError(f"podman-kube manifest: {kind} {index} has no metadata.name", permanent=True)
        if kind == "Pod":
            pod, replicas = doc, 1
            pods.append(name)
        else:
            pod = dig(doc, "spec", "template")
            replicas_value = dig(doc, "spec", "replicas")
            replicas = replicas_value if isinstance(replicas_value, int) and replicas_value >= 0 else 1
            pods.append(f"{name}-pod")
            if not isinstance(pod, dict):
                raise StartError(f"podman-kube manifest: Deployment {name} has no spec.template", permanent=True)
        metadata = pod.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise StartError(f"podman-kube manifest: {kind} {name}: metadata is not a mapping", permanent=True)
        pod_labels = metadata.setdefault("labels", {})
        if not isinstance(pod_labels, dict):
            raise StartError(f"podman-kube manifest: {kind} {name}: labels is not a mapping", permanent=True)
        pod_labels.update(labels)
        containers = dig(pod, "spec", "containers")
        if not isinstance(containers, list) or not containers:
            raise StartError(f"podman-kube manifest: {kind} {name} has no containers", permanent=True)
        for container in [*containers, *(dig(pod, "spec", "initContainers") or [])]:
            if isinstance(container, dict) and isinstance(container.get("image"), str):
                container["image"] = map_image(image_map, container["image"])
        expected += replicas * len(containers)
    if not pods:
        raise StartError("podman-kube manifest has no Pod or Deployment", permanent=True)
    return KubePlay(yaml.safe_dump_all(documents, sort_keys=False), expected, pods)


def play_command(config: PodmanKubeConfig, manifest_file: str) -> list[str]:
    """`podman [generalOptions] kube play --replace [playOptions] FILE`: --replace
    so that a pod left over by an earlier run of the instance gives way."""
    replace = [] if "--replace" in config.play_options else ["--replace"]
    return [*config.general_options, "kube", "play", *replace, *config.play_options, manifest_file]


def down_command(general_options: list[str], down_options: list[str], manifest_file: str) -> list[str]:
    return [*general_options, "kube", "down", *down_options, manifest_file]


class NotThroughApi(Exception):
    """A runtimeConfig option the podman API's play kube has no parameter for
    (Podman 4.3): the workload is played through the CLI."""


# `podman kube play` options and the query parameter of `POST /libpod/play/kube`
# (Podman 4.3) each sets: a flag (no value) or an option with a value. Each
# checked against podman 4.3.1's service, which ignores a parameter it does
# not know (`userns` is one: --userns stays on the CLI).
PLAY_FLAGS: dict[str, str] = {"--replace": "replace", "--no-hosts": "noHosts", "--start": "start"}
PLAY_VALUES: dict[str, str] = {
    "--network": "network",
    "--net": "network",
    "--log-driver": "logDriver",
    "--ip": "staticIPs",
    "--mac-address": "staticMACs",
    "--tls-verify": "tlsVerify",
    "--start": "start",
    "--replace": "replace",
    "--no-hosts": "noHosts",
}
PLAY_LISTS = ("network", "staticIPs", "staticMACs")
PLAY_IGNORED = ("--quiet", "-q")  # what the CLI prints only


def play_params(config: PodmanKubeConfig) -> dict[str, object]:
    """The query parameters of `POST /libpod/play/kube` for this config (with
    `replace`, as play_command adds --replace; `start` true unless the options
    say otherwise). Raises NotThroughApi naming the first option that has no
    parameter, and for any generalOptions or downOptions (they configure
    podman itself or its `kube down`, which the API service cannot take per
    request)."""
    if config.general_options:
        raise NotThroughApi(f"generalOptions {' '.join(config.general_options)}")
    if config.down_options:
        raise NotThroughApi(f"downOptions {' '.join(config.down_options)}")
    params: dict[str, object] = {"replace": True, "start": True}
    lists: dict[str, list[str]] = {}
    options = list(config.play_options)
    index = 0
    while index < len(options):
        option = options[index]
        index += 1
        if option in PLAY_IGNORED:
            continue
        name, has_value, value = option.partition("=")
        if not has_value and name in PLAY_FLAGS:
            params[PLAY_FLAGS[name]] = True
            continue
        if name not in PLAY_VALUES:
            raise NotThroughApi(option)
        if not has_value:
            if index >= len(options):
                raise NotThroughApi(f"{option} without a value")
            value = options[index]
            index += 1
        key = PLAY_VALUES[name]
        if key in PLAY_LISTS:
            lists.setdefault(key, []).append(value)
        elif key in ("start", "replace", "noHosts", "tlsVerify"):
            if value.lower() not in ("true", "false"):
                raise NotThroughApi(f"{option} (not true/false)")
            params[key] = value.lower() == "true"
        else:
            params[key] = value
    params.update(lists)
    return params
