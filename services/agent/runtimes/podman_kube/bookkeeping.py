"""Ankaios's podman-kube bookkeeping, as Ankaios names it: per workload
instance two podman volumes, `<workload>.<hash>.<agent>.config` (the kube
manifest and the options it was played with) and `<workload>.<hash>.<agent>.pods`
(the pods it made), each carrying its data base64-encoded in the volume
label `data`. Tools (and Ankaios's system tests) find a workload's pods
through them. Pure: the commands; the connector runs them."""

from __future__ import annotations

import base64
import json


def instance_name(workload: str, instance: str, agent: str) -> str:
    return f"{workload}.{instance}.{agent}"


def volume_names(workload: str, instance: str, agent: str) -> tuple[str, str]:
    base = instance_name(workload, instance, agent)
    return f"{base}.config", f"{base}.pods"


def encode(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def config_data(manifest: str, play_options: list[str], down_options: list[str]) -> str:
    return json.dumps({"manifest": manifest, "playOptions": play_options, "downOptions": down_options})


def pods_data(pods: list[str]) -> str:
    return json.dumps(pods)


def create_commands(general_options: list[str], name: str, data: str) -> list[list[str]]:
    """Replaces a volume of that name (a leftover of an earlier run of the
    same instance) by one holding `data`."""
    return [
        [*general_options, "volume", "rm", "--force", name],
        [*general_options, "volume", "create", "--label", f"data={encode(data)}", name],
    ]


def remove_command(general_options: list[str], names: list[str]) -> list[str]:
    return [*general_options, "volume", "rm", "--force", *names]
