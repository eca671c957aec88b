"""The podman connectors' decisions, without podman: what command to run for a
workload, what a failed command means, and which RuntimeEvents follow from
podman's event stream. Pure: no subprocess, no clock, no threads.

Theory of operation
-------------------
Every container the connectors create carries four labels: `ank.agent`,
`ank.workload`, `ank.instance` and `ank.run`. `ank.run` is fresh for every
create, so a restart of the same workload instance (same container name,
`--replace`) never mixes the events of the old container with the new one.
One `podman events --filter label=ank.agent=<agent>` stream feeds every
event to `on_container_event`, which finds the run by its `ank.run` label
(events of unknown runs are dropped) and updates the run's containers.

A run is one `podman run` (one container) or one `podman kube play` (the
pod's containers; the infra container carries no labels). Its containers
move through these phases, driven by podman's event `Status`:

    event        container phase      notes
    start        running              also `podman run -d` returning the id
    died         exited(code)         `ContainerExitCode` of the event (absent: 0)
    exit-file    exited(code)         conmon's exit file, seen at once (inotify);
                                      the stream's late `start`/`died` of that
                                      container are then ignored
    remove       gone
    (others)     unchanged            create, init, cleanup, attach, ...

After each event the run's summary is derived from its containers:

    running   at least `expected` containers run
    exited    none runs and at least `expected` have exited or are gone;
              exit code: the first non-zero, else 0
    lost      a container vanished that nobody asked to remove (`--rm`,
              `podman rm` by hand) and it is not being stopped

A RuntimeEvent is emitted when the summary changes (running again after an
exit is a change: a restart by podman itself). Nothing is emitted once the
agent asked to remove the run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

import msgspec
import yaml

from schemas.runtime_configs import PodmanConfig
from services.agent.runtimes.base import RuntimeEvent, StartError

LABEL_AGENT = "ank.agent"
LABEL_WORKLOAD = "ank.workload"
LABEL_INSTANCE = "ank.instance"
LABEL_RUN = "ank.run"
IMAGE_MAP_ENV = "ANK_IMAGE_MAP"

C = TypeVar("C")

# -- runtimeConfig -------------------------------------------------------------------


def decode_runtime_config(text: str, kind: type[C], runtime: str) -> C:
    """The runtimeConfig YAML as a config Struct; a config that can never work
    raises StartError(permanent=True) naming the problem. Every field is text,
    so scalars are read as written (`[sleep, 30]`, `[true]`), as Ankaios does."""
    try:
        raw = yaml.load(text, Loader=yaml.BaseLoader) if text.strip() else None
    except yaml.YAMLError as exc:
        raise StartError(f"runtimeConfig of runtime {runtime} is not valid YAML: {exc}", permanent=True) from None
    if not isinstance(raw, dict):
        raise StartError(
            f"runtimeConfig of runtime {runtime} must be a mapping, got {type(raw).__name__}", permanent=True
        )
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise StartError(f"runtimeConfig of runtime {runtime}: {exc}", permanent=True) from None


def decode_podman_config(text: str) -> PodmanConfig:
    config = decode_runtime_config(text, PodmanConfig, "podman")
    if not config.image.strip():
        raise StartError("runtimeConfig of runtime podman: `image` is empty", permanent=True)
    return config


# -- image map -----------------------------------------------------------------------

ImageMap = tuple[tuple[str, str], ...]


def parse_image_map(text: str) -> ImageMap:
    """`FROM=TO` rules separated by commas, spaces or newlines. A FROM ending in
    `/` maps every image under that prefix (`ghcr.io/eclipse-ankaios/tests/=
    localhost/ank-test/`). Raises ValueError naming a malformed rule."""
    rules: list[tuple[str, str]] = []
    for rule in re.split(r"[,\s]+", text.strip()):
        if not rule:
            continue
        source, sep, target = rule.partition("=")
        if not sep or not source or not target:
            raise ValueError(f"image map rule {rule!r} is not FROM=TO")
        rules.append((source, target))
    return tuple(rules)


def map_image(rules: ImageMap, image: str) -> str:
    """The image to run instead of `image`: an exact rule first, else the
    longest matching prefix rule, else `image` itself."""
    for source, target in rules:
        if source == image:
            return target
    best = ("", "")
    for source, target in rules:
        if source.endswith("/") and image.startswith(source) and len(source) > len(best[0]):
            best = (source, target)
    if best[0]:
        return best[1] + image[len(best[0]) :]
    return image


# -- the `podman run` command --------------------------------------------------------


def container_name(workload: str, instance: str, agent: str) -> str:
    """As Ankaios names them: `<workload>.<instance>.<agent>`."""
    return f"{workload}.{instance}.{agent}"


def run_labels(agent: str, workload: str, instance: str, run_id: str) -> dict[str, str]:
    return {LABEL_AGENT: agent, LABEL_WORKLOAD: workload, LABEL_INSTANCE: instance, LABEL_RUN: run_id}


def names_itself(command_options: Iterable[str]) -> bool:
    """Whether the manifest's commandOptions give the container a name."""
    return any(opt == "--name" or opt.startswith("--name=") for opt in command_options)


def run_command(
    config: PodmanConfig,
    *,
    name: str,
    labels: Mapping[str, str],
    mounts: Iterable[tuple[str, str]] = (),
    image: str | None = None,
    control_interface: str = "",
) -> list[str]:
    """`podman [generalOptions] run -d <name, mounts> [commandOptions] <labels>
    image [commandArgs]`. A `--name` of the manifest replaces ours (as in
    Ankaios). Our labels come last: podman keeps the last value of a label,
    and the agent finds its containers by them. `mounts`: (host file,
    mountPoint) bind-mounted read-only; `control_interface`: the FIFO folder,
    bind-mounted read-write at /run/ankaios/control_interface."""
    argv = [*config.general_options, "run", "-d"]
    if not names_itself(config.command_options):
        # --replace: a leftover of the same name (an earlier run of this
        # instance, or one from before an agent restart) gives way.
        argv += ["--name", name, "--replace"]
    for source, target in mounts:
        argv += ["--mount", f"type=bind,source={source},destination={target},ro=true"]
    if control_interface:
        argv += ["--mount", f"type=bind,source={control_interface},destination=/run/ankaios/control_interface"]
    argv += config.command_options
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    argv += [image or config.image, *config.command_args]
    return argv


# What a failed podman command means: (pattern in its stderr, permanent).
# Missing images may appear later (pulled, built, mapped): retry. A command
# line podman does not understand never will.
FAILURE_TABLE: tuple[tuple[str, bool], ...] = (
    (r"unknown (shorthand )?flag", True),
    (r"flag needs an argument", True),
    (r"invalid (argument|reference format)", True),
    (r"image not known|unable to find|did not resolve to an alias|manifest unknown|pinging container registry", False),
    (r"initializing source|no such image|repository .* not found|name unknown", False),
)


def start_error(command: str, exit_code: int, stderr: str) -> StartError:
    """The StartError for a podman command (`run`, `kube play`) that failed."""
    message = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip()) or f"exit {exit_code}"
    message = message.removeprefix("Error: ")
    for pattern, permanent in FAILURE_TABLE:
        if re.search(pattern, stderr, re.IGNORECASE):
            return StartError(f"podman {command} failed: {message}", permanent=permanent)
    return StartError(f"podman {command} failed: {message}", permanent=False)


# -- events --------------------------------------------------------------------------


class ContainerEvent(msgspec.Struct, frozen=True):
    """One line of `podman events --format json` (the fields used here)."""

    ID: str = ""
    Name: str = ""
    Status: str = ""
    Type: str = ""
    Time: str = ""
    ContainerExitCode: int | None = None
    Attributes: dict[str, str] = {}


_event_decoder = msgspec.json.Decoder(ContainerEvent)


def parse_event(line: bytes | str) -> ContainerEvent | None:
    """A container event of the stream, or None for anything else (blank
    lines, other types, garbage: the stream must never stop on one line)."""
    line = line.strip()
    if not line:
        return None
    try:
        event = _event_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if event.Type and event.Type != "container":
        return None
    return event


class _Actor(msgspec.Struct, frozen=True):
    ID: str = ""
    Attributes: dict[str, str] = {}


class _ApiEvent(msgspec.Struct, frozen=True):
    """One line of libpod's `GET /events` (Podman 4.3: Docker's event shape)."""

    status: str = ""
    id: str = ""
    Type: str = ""
    Action: str = ""
    Actor: _Actor = _Actor()
    timeNano: int = 0


_api_event_decoder = msgspec.json.Decoder(_ApiEvent)
# Attributes the API's Actor carries besides the labels (the CLI's line has them as fields).
_NOT_LABELS = frozenset({"name", "image", "containerExitCode", "podId"})


def parse_api_event(line: bytes | str) -> ContainerEvent | None:
    """A line of the API's event stream as the CLI's line gives it (parse_event):
    Status, ID, Name, the exit code (absent when 0, as the CLI omits it),
    the labels as Attributes, and Time as `<seconds>.<nanoseconds>` (what
    `since` takes to restart the stream there). None for anything else."""
    line = line.strip()
    if not line:
        return None
    try:
        event = _api_event_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if event.Type and event.Type != "container":
        return None
    attributes = event.Actor.Attributes
    try:
        code = int(attributes.get("containerExitCode", "0") or "0")
    except ValueError:
        code = 0
    seconds, nanos = divmod(max(0, event.timeNano), 1_000_000_000)
    return ContainerEvent(
        ID=event.Actor.ID or event.id,
        Name=attributes.get("name", ""),
        Status=event.status or event.Action,
        Type=event.Type,
        Time=f"{seconds}.{nanos:09d}" if event.timeNano > 0 else "",
        ContainerExitCode=code or None,
        Attributes={k: v for k, v in attributes.items() if k not in _NOT_LABELS},
    )


ContainerPhase = Literal["running", "exited", "gone"]
Summary = Literal["", "running", "exited", "lost"]

# The exit-file fast path (podman/cli.py) reports an exit as this Status,
# usually ahead of podman's own `start` and `died` events of that container.
EXIT_FILE = "exit-file"
# podman event Status → the phase it puts a container in.
EVENT_PHASES: dict[str, ContainerPhase] = {"start": "running", "died": "exited", EXIT_FILE: "exited", "remove": "gone"}


class Run(msgspec.Struct, frozen=True):
    """One create of a workload instance and what is known of its containers."""

    workload: str
    instance: str
    run_id: str
    expected: int = 1  # containers that make the workload run (kube: the pod's)
    phases: dict[str, ContainerPhase] = {}  # container id → phase
    exit_codes: dict[str, int] = {}
    early_exits: frozenset[str] = frozenset()  # exits told by exit files, not yet by the stream
    stopping: bool = False  # the agent asked it to stop: its disappearance is expected
    removing: bool = False  # the agent asked to remove it: nothing more to say
    summary: Summary = ""


def summarise(run: Run) -> tuple[Summary, int | None]:
    phases = list(run.phases.values())
    running = phases.count("running")
    ended = len(phases) - running
    if run.expected and running >= run.expected:
        return "running", None
    if running == 0 and ended >= max(run.expected, 1):
        if "gone" in phases and not run.stopping:
            unexplained = [cid for cid, phase in run.phases.items() if phase == "gone" and cid not in run.exit_codes]
            if unexplained or run.summary in ("exited", "lost"):
                return "lost", None
        codes = list(run.exit_codes.values())
        return "exited", next((code for code in codes if code != 0), 0 if codes else None)
    return run.summary, None


def on_container_event(run: Run, event: ContainerEvent) -> tuple[Run, list[RuntimeEvent]]:
    """The run after one of its containers' events, and what to tell the agent."""
    phase = EVENT_PHASES.get(event.Status)
    if phase is None or not event.ID or run.removing:
        return run, []
    previous = run.phases.get(event.ID)
    early = run.early_exits
    if event.ID in early and event.Status in ("start", "died"):
        # the stream catching up with an exit the exit file told first: its
        # `start` is not a restart, its `died` no news
        if event.Status == "died":
            run = msgspec.structs.replace(run, early_exits=early - {event.ID})
        return run, []
    if event.Status == EXIT_FILE:
        early = early | {event.ID}
    if previous == "gone" or (phase == "exited" and previous == "exited"):
        return msgspec.structs.replace(run, early_exits=early), []  # replayed or duplicate
    phases = {**run.phases, event.ID: phase}
    exit_codes = dict(run.exit_codes)
    if phase == "exited":
        # podman omits ContainerExitCode when it is 0 (Go's omitempty).
        exit_codes[event.ID] = event.ContainerExitCode or 0
    elif phase == "running":
        exit_codes.pop(event.ID, None)
    return _resummarise(msgspec.structs.replace(run, phases=phases, exit_codes=exit_codes, early_exits=early))


def on_started(run: Run, container_id: str) -> tuple[Run, list[RuntimeEvent]]:
    """`podman run -d` returned `container_id`: it has started, unless its
    events already told more (a short command may have exited already)."""
    if container_id in run.phases:
        return run, []
    return on_container_event(run, ContainerEvent(ID=container_id, Status="start"))


def on_stop_asked(run: Run) -> tuple[Run, list[RuntimeEvent]]:
    """The agent asks the run to stop; its exit follows from the events. A run
    that has already ended has no exit to come: it is told again, so that the
    agent's stop completes."""
    run = msgspec.structs.replace(run, stopping=True)
    if run.summary not in ("exited", "lost"):
        return run, []
    codes = list(run.exit_codes.values())
    code = next((c for c in codes if c != 0), 0) if codes else None
    return run, [RuntimeEvent(workload=run.workload, instance=run.instance, kind="exited", exit_code=code)]


def _resummarise(run: Run) -> tuple[Run, list[RuntimeEvent]]:
    summary, exit_code = summarise(run)
    if summary == run.summary or summary == "":
        return run, []
    event = RuntimeEvent(workload=run.workload, instance=run.instance, kind=summary, exit_code=exit_code)
    if summary == "lost":
        event = msgspec.structs.replace(event, info="container removed outside the agent (--rm or by hand)")
    return msgspec.structs.replace(run, summary=summary), [event]


# -- usage ---------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int | None:
    """`876.5kB` → 876500 (podman prints decimal units, as go-units does)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        return None
    try:
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    except ValueError:
        return None


def parse_percent(text: str) -> float | None:
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        return None


def parse_stats(rows: Any) -> dict[str, tuple[float | None, int | None]]:
    """`podman stats --no-stream --format json` → (cpu %, memory bytes) by
    container name and by short id."""
    usage: dict[str, tuple[float | None, int | None]] = {}
    if not isinstance(rows, list):
        return usage
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        memory = str(row.get("mem_usage", "")).split("/")[0]
        value = (parse_percent(str(row.get("cpu_percent", ""))), parse_size(memory))
        usage[row["name"]] = value
        usage[str(row.get("id", ""))[:12]] = value
    return usage


def parse_api_stats(rows: Any) -> dict[str, tuple[float | None, int | None]]:
    """libpod's `GET /containers/stats` rows → the same as parse_stats: (cpu %,
    memory bytes) by container name and by short id."""
    usage: dict[str, tuple[float | None, int | None]] = {}
    if not isinstance(rows, list):
        return usage
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("Name"), str):
            continue
        cpu, memory = row.get("CPU"), row.get("MemUsage")
        value = (
            float(cpu) if isinstance(cpu, (int, float)) and not isinstance(cpu, bool) else None,
            memory if isinstance(memory, int) and not isinstance(memory, bool) and memory >= 0 else None,
        )
        usage[row["Name"]] = value
        usage[str(row.get("ContainerID", ""))[:12]] = value
    return usage


_FRAME_HEADER = 8  # stream (0 stdin, 1 stdout, 2 stderr), 3 zero bytes, payload size (big-endian uint32)


class LogLines:
    """libpod's `GET /containers/{id}/logs` body → the lines `podman logs`
    prints (stdout and stderr together, each line without its newline).
    Without a TTY the body is multiplexed: frames of an 8-byte header and a
    payload; with one (`-t`) it is the raw output, told by its first bytes
    not being a header. Fed the body in pieces as they come; pure."""

    def __init__(self) -> None:
        self._pending = b""
        self._raw: bool | None = None
        self._partial: dict[int, bytes] = {}

    def feed(self, data: bytes) -> list[str]:
        self._pending += data
        if self._raw is None:
            if len(self._pending) < 4:
                return []
            head = self._pending[:4]
            self._raw = not (head[0] in (0, 1, 2) and head[1:4] == b"\0\0\0")
        if self._raw:
            text, self._pending = self._pending, b""
            return self._lines(1, text)
        out: list[str] = []
        while len(self._pending) >= _FRAME_HEADER:
            size = int.from_bytes(self._pending[4:8], "big")
            if len(self._pending) < _FRAME_HEADER + size:
                break
            stream = self._pending[0]
            payload = self._pending[_FRAME_HEADER : _FRAME_HEADER + size]
            self._pending = self._pending[_FRAME_HEADER + size :]
            out += self._lines(stream, payload)
        return out

    def end(self) -> list[str]:
        """The unfinished lines at the end (a truncated frame is dropped)."""
        rest = [self._partial.pop(stream) for stream in sorted(self._partial)]
        if self._pending and self._raw is not False:
            rest.append(self._pending)
        self._pending = b""
        return [part.decode(errors="replace") for part in rest if part]

    def _lines(self, stream: int, data: bytes) -> list[str]:
        *whole, last = (self._partial.pop(stream, b"") + data).split(b"\n")
        if last:
            self._partial[stream] = last
        return [line.decode(errors="replace") for line in whole]
