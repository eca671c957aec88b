"""The runtimeConfig of each runtime. In a manifest `runtimeConfig` is a YAML
string (as in Ankaios); the agent's runtime connector decodes it into one of
these when it creates the workload, so a bad runtimeConfig makes that workload
Pending(StartingFailed), as in Ankaios, not the whole manifest invalid."""

from __future__ import annotations

import msgspec


class PodmanConfig(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """runtime `podman`: `podman [generalOptions] run [commandOptions] image [commandArgs]`."""

    image: str
    command_options: list[str] = []
    command_args: list[str] = []
    general_options: list[str] = []


class PodmanKubeConfig(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """runtime `podman-kube`: `podman kube play` of a Kubernetes YAML."""

    manifest: str
    play_options: list[str] = []
    down_options: list[str] = []
    general_options: list[str] = []
    control_interface_target: str = ""  # Ankaios: the container that gets the control interface


class ProcessConfig(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """runtime `process` (ank-zenoh extension): a native program."""

    command: str
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
