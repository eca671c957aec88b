"""podman-kube: the Control Interface mounted into the one container that
`controlInterfaceTarget: <pod>/<container>` names (as in Ankaios), through a
hostPath volume added to that pod. A Deployment's pod is named after the
Deployment (`<name>` or podman's `<name>-pod`)."""

from __future__ import annotations

from typing import Any

import yaml

from services.agent.control_interface.mount import TARGET
from services.agent.runtimes.base import StartError

VOLUME = "ank-control-interface"


def mount_into(manifest_text: str, target: str, folder: str) -> str:
    """The kube manifest with the FIFO folder mounted at TARGET in the
    target container. A target that names no container is a permanent error."""
    pod_name, _, container_name = target.partition("/")
    if not pod_name or not container_name:
        raise StartError(
            f"controlInterfaceTarget {target!r}: expected '<pod>/<container>' for a workload with "
            "controlInterfaceAccess",
            permanent=True,
        )
    documents = [doc for doc in yaml.safe_load_all(manifest_text) if doc is not None]
    for doc in documents:
        pod = _pod(doc, pod_name)
        if pod is None:
            continue
        spec = pod.setdefault("spec", {})
        for container in spec.get("containers") or []:
            if isinstance(container, dict) and container.get("name") == container_name:
                mounts = container.setdefault("volumeMounts", [])
                mounts.append({"name": VOLUME, "mountPath": TARGET})
                volumes = spec.setdefault("volumes", [])
                volumes.append({"name": VOLUME, "hostPath": {"path": folder, "type": "Directory"}})
                return str(yaml.safe_dump_all(documents, sort_keys=False))
    raise StartError(f"controlInterfaceTarget {target!r} names no container of the manifest", permanent=True)


def _pod(doc: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    metadata = doc.get("metadata") or {}
    if doc.get("kind") == "Pod" and metadata.get("name") == name:
        return doc
    if doc.get("kind") == "Deployment" and name in (metadata.get("name"), f"{metadata.get('name')}-pod"):
        template = (doc.get("spec") or {}).get("template")
        return template if isinstance(template, dict) else None
    return None
