"""Podman benchmarks, with real containers (local test images).

P3        create → Running for a podman workload through the connector
          (PodmanRuntime.create until its `running` notification), beside raw
          `podman run -d` of the same image and command in the same run,
          samples interleaved. Goal: <= 1.15x raw.
P3-sys    the same through the whole system: a manifest put on ank/desired
          until Running(Ok) reaches a subscriber (router, planner, agent as
          processes), beside the same raw `podman run -d`.
P3-crash  crash → Running again under ALWAYS through the whole system
          (SIGKILL of the container's main process from outside until
          Running(Ok) with the next restart count), beside podman's own
          `--restart=always` (SIGKILL until podman's `start` event of the
          restarted container), samples interleaved. The agent starts the ended container again
          (the default); P3-crash-new is a second agent of the same run with
          ANK_PODMAN_RESTART=recreate (a new container per restart).

The agents reach podman through its API service (agent status
`runtime_transports`); P3-cli is the connector forced onto the CLI path.

Skipped (no rows) when podman cannot run here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import latency_row
from schemas.messages import WorkloadState
from services.agent.runtimes.base import RuntimeEvent, StartSpec
from services.agent.runtimes.podman import PodmanRuntime
from services.agent.runtimes.podman.cli import PodmanCli
from services.agent.runtimes.podman.core import ContainerEvent, parse_event
from services.bus import Bus
from tests.helpers import running_router, wait_for
from tests.system import running_system
from tests.test_podman_helpers import IMAGE_MAP, IMAGE_RULES, podman_unusable, remove_agent_containers

IMAGE = "localhost/ank-test/sleepy:latest"
TARGET = "<= 1.15x peer"
TARGET_SYS = "<= 0.85x raw podman run -d"
TARGET_CRASH = "<= 1.0x podman's own restart"


def _raw_run(cli: PodmanCli, agent: str) -> float:
    """Seconds of one `podman run -d` of IMAGE (labelled for clean-up)."""
    name = f"raw-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = cli.run(["run", "-d", "--name", name, "--label", f"ank.agent={agent}", IMAGE])
    took = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"podman run failed: {result.stderr.strip()}")
    cli.run(["rm", "-f", "-t", "0", name])
    return took


def time_to_running(runtime: Any, spec: StartSpec, timeout: float) -> float:
    """Seconds from the connector's create to its running event; the instance is removed after."""
    running = threading.Event()

    def notify(event: RuntimeEvent) -> None:
        if event.kind == "running":
            running.set()

    started = time.monotonic()
    handle = runtime.create(spec, notify)
    if not running.wait(timeout):
        raise RuntimeError(f"no running event within {timeout:.0f} s")
    took = time.monotonic() - started
    runtime.remove(handle)
    return took


def _connector_run(runtime: PodmanRuntime, agent: str, index: int) -> float:
    spec = StartSpec(agent=agent, workload=f"bench{index}", instance="b", runtime_config=f"image: {IMAGE}\n")
    return time_to_running(runtime, spec, 30)


class _States:
    def __init__(self) -> None:
        self.items: list[tuple[float, WorkloadState]] = []
        self.cond = threading.Condition()

    def __call__(self, _key: str, state: WorkloadState) -> None:
        with self.cond:
            self.items.append((time.monotonic(), state))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[WorkloadState], bool], after: float, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, state in self.items:
                    if at >= after and predicate(state):
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no matching WorkloadState")
                self.cond.wait(remaining)


def _manifest(agent: str, name: str, policy: str = "NEVER") -> str:
    return (
        f"apiVersion: v1\nworkloads:\n  {name}:\n    runtime: podman\n    agent: {agent}\n"
        f"    restartPolicy: {policy}\n    runtimeConfig: |\n      image: ghcr.io/eclipse-ankaios/tests/sleepy:latest\n"
    )


def running(workload: str, restarts: int = 0, agent: str = "") -> Callable[[WorkloadState], bool]:
    """A predicate: `workload` (on `agent`, if given) is Running after at least `restarts` restarts."""

    def predicate(s: WorkloadState) -> bool:
        here = not agent or s.agent == agent
        return here and s.workload == workload and s.execution_state.state == "Running" and s.restart_count >= restarts

    return predicate


def _system(
    samples: int, cli: PodmanCli, raw_agent: str
) -> tuple[list[float], list[float], list[float], list[float], list[float], list[float]]:
    """(manifest → Running, raw run, crash → Running, the same with new
    containers, podman restart) samples."""
    create: list[float] = []
    raw: list[float] = []
    crash: list[float] = []
    crash_new: list[float] = []
    podman_restart: list[float] = []  # beside `crash`
    podman_restart_new: list[float] = []  # beside `crash_new`
    agent = f"bench_{uuid.uuid4().hex[:6]}"
    recreating = f"{agent}_new"
    with tempfile.TemporaryDirectory() as tmp, running_router() as (endpoint, _router):
        try:
            with running_system(endpoint, Path(tmp)) as system, Bus("bench/podman", server=endpoint) as bus:
                system.env["ANK_IMAGE_MAP"] = IMAGE_MAP
                system.env["ANK_LOG"] = "WARNING"
                system.planner()
                system.agent(agent, "--stop-grace", "1", "--stable-after", "0.05", "--backoff-initial", "0")
                system.env["ANK_PODMAN_RESTART"] = "recreate"
                system.agent(recreating, "--stop-grace", "1", "--stable-after", "0.05", "--backoff-initial", "0")
                states = _States()
                bus.subscribe("ank/state/**", WorkloadState, states)
                wait_for(lambda: bool(bus.get("ank/cmd/state", timeout=1.0)), 30, "planner")
                wait_for(lambda: bool(bus.alive(f"ank/agents/{agent}")), 30, "agent")
                wait_for(lambda: bool(bus.alive(f"ank/agents/{recreating}")), 30, "agent")
                for i in range(samples):
                    raw.append(_raw_run(cli, raw_agent))
                    name = f"w{i}"
                    started = time.monotonic()
                    bus.put("ank/desired", _manifest(agent, name).encode())
                    at = states.wait(running(name), started)
                    create.append(at - started)
                # crash → Running under ALWAYS, each sample beside one of podman's own restart
                restarter = _PodmanRestarter(cli, raw_agent)
                for on, series, peer in ((agent, crash, podman_restart), (recreating, crash_new, podman_restart_new)):
                    started = time.monotonic()
                    bus.put("ank/desired", _manifest(on, "crashy", "ALWAYS").encode())
                    states.wait(running("crashy", agent=on), started)
                    for restart in range(1, samples + 1):
                        ours = ["--filter", f"label=ank.agent={on}", "--filter", "label=ank.workload=crashy"]
                        ids = cli.run(["ps", "-q", "--filter", "status=running", *ours]).stdout.split()
                        pid = _main_pid(cli, ids[0])
                        killed = time.monotonic()
                        os.kill(pid, signal.SIGKILL)
                        at = states.wait(running("crashy", restarts=restart, agent=on), killed)
                        series.append(at - killed)
                        peer.append(restarter.sample())
                restarter.close()
        finally:
            remove_agent_containers(agent)
            remove_agent_containers(recreating)
    return create, raw, crash, crash_new, podman_restart, podman_restart_new


class _PodmanRestarter:
    """podman's own --restart=always: `podman kill` until the restarted
    container's start event, one sample at a time (interleaved with ours)."""

    def __init__(self, cli: PodmanCli, agent: str) -> None:
        self.cli = cli
        self.name = f"restarter-{uuid.uuid4().hex[:6]}"
        self.events: list[tuple[float, ContainerEvent]] = []
        self.cond = threading.Condition()
        self.watcher = subprocess.Popen(
            [cli.binary, "events", "--format", "json", "--filter", f"container={self.name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=cli.env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.3)  # podman events takes a moment to follow the log
        cli.run(["run", "-d", "--name", self.name, "--label", f"ank.agent={agent}", "--restart=always", IMAGE])

    def _read(self) -> None:
        assert self.watcher.stdout is not None
        for line in self.watcher.stdout:
            event = parse_event(line)
            if event is not None:
                with self.cond:
                    self.events.append((time.monotonic(), event))
                    self.cond.notify_all()

    def sample(self) -> float:
        with self.cond:
            seen = len(self.events)
        pid = _main_pid(self.cli, self.name)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = killed + 30
        with self.cond:
            while not any(e.Status == "start" for _, e in self.events[seen:]):
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("podman did not restart the container")
            return next(t for t, e in self.events[seen:] if e.Status == "start") - killed

    def close(self) -> None:
        self.cli.run(["rm", "-f", "-t", "0", self.name])
        self.watcher.terminate()
        self.watcher.wait(10)


def interleaved(
    samples: int,
    agent: str,
    make: Callable[..., Any],
    raw_run: Callable[[Path], float],
    connector_run: Callable[[Any, str, int], float],
) -> tuple[list[float], list[float], list[float]]:
    """Seconds of the connector through podman's API service, of the same
    connector forced onto the CLI, and of the raw podman command, sample by
    sample in turn (after one warm-up of the raw command and the service)."""
    api: list[float] = []
    forced: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        through_api, through_cli = make(Path(tmp) / "api"), make(Path(tmp) / "cli", transport="cli")
        try:
            raw_run(Path(tmp))  # warm up the storage and the image
            through_api.service.api()  # the API service up before the first sample (an agent: at its first one)
            for i in range(samples):
                raw.append(raw_run(Path(tmp)))
                api.append(connector_run(through_api, agent, i))
                forced.append(connector_run(through_cli, agent, samples + i))
        finally:
            through_api.close()
            through_cli.close()
            remove_agent_containers(agent)
    return api, forced, raw


def _main_pid(cli: PodmanCli, container: str) -> int:
    """The host pid of the container's main process (killed as a crash would)."""
    return int(cli.run(["inspect", "--format", "{{.State.Pid}}", container]).stdout.strip())


def run(quick: bool = False) -> list[dict[str, Any]]:
    reason = podman_unusable()
    if reason:
        print(f"bench_podman: skipped: {reason}")
        return []
    samples = 3 if quick else 10
    cli = PodmanCli()
    agent = f"bench_{uuid.uuid4().hex[:6]}"
    ours, ours_cli, raw = interleaved(
        samples,
        agent,
        lambda folder, **kw: PodmanRuntime(folder, cli=cli, image_map=IMAGE_RULES, **kw),
        lambda _tmp: _raw_run(cli, agent),
        _connector_run,
    )
    try:
        sys_create, sys_raw, crash, crash_new, podman_restart, podman_restart_new = _system(samples, cli, agent)
    finally:
        remove_agent_containers(agent)  # the raw and podman-restart containers carry its label

    def row(
        id_: str, name: str, samples_: list[float], peer: list[float], note: str, target: str = TARGET
    ) -> dict[str, Any]:
        return latency_row(id_, name, samples_, peer=peer, target=target, note=note)

    return [
        row("P3", "podman create -> Running (connector, API)", ours, raw, "peer: raw `podman run -d`, interleaved"),
        row(
            "P3-cli",
            "podman create -> Running (connector forced onto the CLI)",
            ours_cli,
            raw,
            "peer: raw `podman run -d`, interleaved",
        ),
        row(
            "P3-sys",
            "podman manifest on ank/desired -> Running(Ok) (whole system)",
            sys_create,
            sys_raw,
            "peer: raw `podman run -d`, interleaved",
            TARGET_SYS,
        ),
        row(
            "P3-crash",
            "container killed -> Running again, ALWAYS (whole system, container started again)",
            crash,
            podman_restart,
            "peer: podman --restart=always, kill until its start event, interleaved",
            TARGET_CRASH,
        ),
        row(
            "P3-crash-new",
            "container killed -> Running again, ALWAYS (whole system, ANK_PODMAN_RESTART=recreate)",
            crash_new,
            podman_restart_new,
            "peer: podman --restart=always, kill until its start event, interleaved",
            TARGET_CRASH,
        ),
    ]
