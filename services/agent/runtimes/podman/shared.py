"""One podman API service per agent, shared by the podman and podman-kube
connectors (each of which would otherwise start its own `podman system
service` where no system socket answers). Counted: the last connector to
close ends it (a connector closed twice counts once)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from services.agent.runtimes.podman.api import API_ENV, PodmanService
from services.agent.runtimes.podman.cli import PodmanCli

_lock = threading.Lock()
_Key = tuple[str, tuple[tuple[str, str], ...], str, str]
_services: dict[_Key, tuple[PodmanService, set[int]]] = {}  # → the service, its users' ids


def _key(cli: PodmanCli, run_dir: Path, transport: str | None) -> _Key:
    wanted = (transport or os.environ.get(API_ENV, "") or "auto").lower()
    return (cli.binary, tuple(sorted(cli.env.items())), str(run_dir.resolve()), wanted)


def acquire_service(user: object, cli: PodmanCli, run_dir: Path, *, transport: str | None = None) -> PodmanService:
    """The service of connectors with the same podman binary, environment,
    run folder and transport wish; a new one for the first."""
    key = _key(cli, run_dir, transport)
    with _lock:
        if key not in _services:
            _services[key] = (PodmanService(cli, run_dir, transport=transport), set())
        service, users = _services[key]
        users.add(id(user))
        return service


def release_service(user: object, service: PodmanService) -> None:
    """`user` is done with it; the last one closes it."""
    with _lock:
        for key, (held, users) in list(_services.items()):
            if held is service:
                users.discard(id(user))
                if users:
                    return
                del _services[key]
                break
    service.close()
