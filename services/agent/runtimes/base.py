"""The one interface every runtime connector implements (STYLE.md §2).

A connector turns "run this workload" into a running thing and reports what
happens to it as events; it decides nothing (restart policy, backoff and
states are the agent core's). It never polls on a timer: exits are noticed
from the runtime's own event source (pidfd / waitpid for processes, podman's
event stream for containers) and passed to `notify`, which is safe to call
from any thread (the agent shell posts it onto its event loop).

Life of a workload instance, as the agent drives it:
    handle = runtime.create(spec, notify)   # may raise StartError
    ... notify(RuntimeEvent(kind="running"))      # when it runs
    ... notify(RuntimeEvent(kind="exited", exit_code=N))
    runtime.stop(handle, grace_s)           # SIGTERM, SIGKILL after grace; notify "exited"
    runtime.remove(handle)                  # forget it (logs may stay)
After an agent restart:
    handles = runtime.adopt(records, notify)     # what still runs, as it was started
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from schemas.messages import WorkloadUsage


class StartSpec(msgspec.Struct, frozen=True):
    """What the agent asks a runtime to run."""

    agent: str
    workload: str
    instance: str  # identity of the rendered configuration; changes on update
    runtime_config: str  # the manifest's runtimeConfig text (YAML)
    files: list[tuple[str, bytes]] = []  # (mountPoint, content) already rendered/decoded
    run_dir: str = ""  # the agent's per-workload folder (logs, files, records)
    # host folder of the instance's Control Interface FIFOs, to appear at
    # /run/ankaios/control_interface in the workload; "" = it has none
    control_interface: str = ""


class RunHandle(msgspec.Struct, frozen=True):
    """A running (or exited) instance. `record` is what the runtime needs to
    find it again after an agent restart (persisted by the agent)."""

    workload: str
    instance: str
    runtime: str
    id: str  # pid, container id, pod name
    record: dict[str, str] = {}


class RuntimeEvent(msgspec.Struct, frozen=True):
    workload: str
    instance: str
    kind: Literal["running", "exited", "lost", "unhealthy"]
    exit_code: int | None = None
    info: str = ""


class StartError(Exception):
    """The workload could not be created. `permanent`: the configuration can
    never work (Pending(StartingFailed)); otherwise the agent retries with
    backoff (Pending(Starting) "Retry N: ...")."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


Notify = Callable[[RuntimeEvent], None]


class Runtime(Protocol):
    name: str  # "process", "podman", "podman-kube"

    def available(self) -> bool:
        """Whether this node can run it at all (binary present, service up)."""
        ...

    def create(self, spec: StartSpec, notify: Notify) -> RunHandle:
        """Creates and starts the workload; returns at once (does not wait for
        it to exit). Raises StartError."""
        ...

    def stop(self, handle: RunHandle, grace_s: float) -> None:
        """Asks it to stop (SIGTERM), kills it after grace_s. May return
        before it is gone; the exit arrives through notify."""
        ...

    def remove(self, handle: RunHandle) -> None:
        """Forgets a stopped instance (removes the container)."""
        ...

    def adopt(self, records: list[RunHandle], notify: Notify) -> list[RunHandle]:
        """Of the instances recorded before an agent restart, those still
        running, now watched again (others are not returned)."""
        ...

    def logs(self, handle: RunHandle, *, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """The instance's output lines."""
        ...

    def usage(self, handles: list[RunHandle]) -> dict[str, WorkloadUsage]:
        """cpu % and memory per workload, where the runtime can measure them."""
        ...

    def close(self) -> None:
        """Stops watching (the agent is exiting); leaves workloads running."""
        ...


def log_path(run_dir: str | Path, workload: str) -> Path:
    return Path(run_dir) / f"{workload}.log"
