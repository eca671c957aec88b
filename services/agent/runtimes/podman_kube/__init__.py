"""Runtime `podman-kube`: Kubernetes YAML played with `podman kube play`
(docs/podman.md)."""

from services.agent.runtimes.podman_kube.connector import PodmanKubeRuntime, make_runtime

__all__ = ["PodmanKubeRuntime", "make_runtime"]
