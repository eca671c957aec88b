"""Runtime `podman`: containers started with `podman run -d`, watched through
podman's event stream (docs/podman.md)."""

from services.agent.runtimes.podman.connector import PodmanRuntime, make_runtime

__all__ = ["PodmanRuntime", "make_runtime"]
