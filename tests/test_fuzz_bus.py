"""Bad input on every key the services listen to, against the real processes.

A real router, planner, agent (process runtime), health-watcher and
scheduler run as processes; a workload runs on the agent. Hypothesis then
publishes, per key, random bytes, random JSON, JSON shaped like the key's
Struct with one field mutated (wrong types, huge numbers, unknown states,
negative seq, wrong `v`, missing fields, unknown fields) and, on the
manifest keys, valid-looking manifests with a mutation (checked invalid
with the same reader the planner uses, so that none of them may apply).

What each message is expected to do is decided here with the bus's own
rule (Bus.decode: oversized, malformed or `v` != 1 is dropped and reported):

- a message the bus must reject goes to the real key (the agent's plan, the
  running workload's state and health, ...): every receiving service must
  drop it and report one `ank/events/dropped` event (the planner one
  `ank/events/rejected` per bad manifest);
- a message that decodes goes to a decoy key (an agent or workload that
  does not exist), where it must change nothing either.

After each key: every service still runs and answers, the desired state is
the same, the workload runs with the same pid and restart count, and the
planner's recent events (`ank get eventlog`) include the rejections. The
count of messages is 10,000 per key under ANK_FAULTS=1, 150 otherwise.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ank_common.manifest import parse_manifest
from schemas.manifest import Workload
from schemas.messages import (
    AgentPlan,
    AgentStatus,
    ApplyRequest,
    ApplyResult,
    Binding,
    CompleteState,
    DeleteRequest,
    EnergyReport,
    HealthReport,
    Message,
    PlannedWorkload,
    WorkloadState,
)
from schemas.state import ExecutionState
from services.bus import MAX_PAYLOAD, checks
from tests.helpers import wait_for
from tests.test_faults_stack import (
    SLEEPER,
    Stack,
    manifest_of,
    recent_events,
    running_stack,
    scaled,
    unique,
    workload_processes,
)

pytestmark = [pytest.mark.faults]

S = TypeVar("S", bound=msgspec.Struct)
MESSAGES_PER_KEY = scaled(10_000, 150)
BATCH = 100  # messages sent before waiting for their rejections to be reported
REPORT_TIMEOUT_S = 20.0
REJECTED_LINE = "rejected a manifest on ank/desired"  # the planner logs each rejection

# -- strategies --------------------------------------------------------------------------------

# Lone surrogates are left out of the random text: they hit one known bug
# (test_a_lone_surrogate_in_a_manifest_...) every time and would hide the rest.
UNICODE = st.characters(exclude_categories=["Cs"])


def texts(min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    return st.text(alphabet=UNICODE, min_size=min_size, max_size=max_size)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts(max_size=24)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(max_size=12), inner, max_size=4),
    max_leaves=16,
)
# Values that are wrong for most fields: other types, numbers out of every
# integer range, unknown enum values, negative sequence numbers.
nasty_values = (
    st.sampled_from(
        [
            None,
            True,
            "",
            "Exploded",
            "Running",
            "x" * 300,
            -1,
            0,
            2**63,
            2**64 + 1,
            -(2**63) - 1,
            10**40,
            1e308,
            -1e308,
            0.5,
            [],
            [1, "a"],
            {},
            {"state": "Bogus"},
            {"state": "Running", "substate": "Lost"},
            "\x00\ufffe",
        ]
    )
    | json_values
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def shaped_like(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """`base` (a valid message as JSON) with one field replaced, removed, or an unknown one added;
    sometimes also the envelope made wrong (v, seq)."""
    keys = sorted(base)

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        message = dict(base)
        how = draw(st.sampled_from(["replace", "remove", "add", "envelope"]))
        if how == "replace":
            message[draw(st.sampled_from(keys))] = draw(nasty_values)
        elif how == "remove":
            message.pop(draw(st.sampled_from(keys)))
        elif how == "add":
            message[draw(texts(1, 12))] = draw(nasty_values)
        else:
            message["v"] = draw(st.sampled_from([0, 2, -1, 2**64, "1", None, 1]))
            message["seq"] = draw(st.sampled_from([-1, -(2**62), 0, 2**63 - 1, 2**64, "7"]))
        return _json_bytes(message)

    return mutate()


def garbage_or_shaped(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(_json_bytes),
        shaped_like(base),
    )


VALID_RUNTIME_CONFIG = "command: sleep\nargs: ['100000']\n"


def manifest_texts(agent: str) -> st.SearchStrategy[str]:
    """Valid-looking manifests with one mutation, as YAML or JSON text."""
    workload = {
        "runtime": "process",
        "agent": agent,
        "restartPolicy": "ALWAYS",
        "dependencies": {},
        "runtimeConfig": VALID_RUNTIME_CONFIG,
    }
    fields_ = sorted(workload)

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        name = draw(st.sampled_from(["fz", "fz-1", "bad name", "", "x" * 70, "ünï", "a/b"]))
        wl: dict[str, Any] = dict(workload)
        doc: dict[str, Any] = {"apiVersion": "v1", "workloads": {name: wl}}
        how = draw(st.sampled_from(["field", "drop", "unknown", "api", "cycle", "top"]))
        if how == "field":
            wl[draw(st.sampled_from(fields_))] = draw(nasty_values)
        elif how == "drop":
            wl.pop("runtime")
        elif how == "unknown":
            wl[draw(texts(1, 10))] = draw(nasty_values)
        elif how == "api":
            doc["apiVersion"] = draw(st.sampled_from(["v2", "", None, 1, "V1", "v0.2"]))
        elif how == "cycle":
            wl["dependencies"] = {name: "ADD_COND_RUNNING"}
        else:
            doc[draw(st.sampled_from(["workloads", "configs", "apiVersion"]))] = draw(nasty_values)
        if draw(st.booleans()):
            return json.dumps(doc, ensure_ascii=False)
        import yaml  # the YAML form, as users write manifests

        return yaml.safe_dump(doc, allow_unicode=True)

    return st.one_of(
        mutated(),
        texts(max_size=300),
        st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    )


def rejected_by_planner(text: str | bytes) -> bool:
    """Whether the planner's own reader rejects it (so that it must change nothing)."""
    parsed = parse_manifest(text)
    return bool(parsed.errors) or parsed.manifest is None or not parsed.manifest.workloads


def bus_rejects(payload: bytes, schema: type[msgspec.Struct]) -> bool:
    """Bus.decode's rule: oversized, malformed or another contract version."""
    if len(payload) > checks.max_size(schema):
        return True
    try:
        message = msgspec.json.decode(payload, type=schema)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return True
    return isinstance(message, Message) and message.v != 1


def fuzz(strategy: st.SearchStrategy[Any], examples: int, send: Callable[[Any], None]) -> None:
    """Runs `send` on `examples` values drawn by hypothesis (no shrinking
    against a live system: a failure is reproduced from the sent log)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        send(value)

    run()


# -- the system under fuzz ----------------------------------------------------------------------


@dataclass
class Fuzzed:
    """The system and what it looked like before the fuzzing."""

    stack: Stack
    agent: str
    workload: str
    ghost_agent: str
    ghost_workload: str
    desired: Any = None
    pids: dict[str, list[int]] = field(default_factory=dict)
    restart_count: int = 0
    services: tuple[str, ...] = ("planner", "health-watcher", "scheduler")

    @property
    def senders(self) -> dict[str, str]:
        """Process name (tests.system) -> its sender name on the bus."""
        return {
            "planner": "planner",
            "health-watcher": "health-watcher",
            "scheduler": "scheduler",
            f"agent-{self.agent}": f"agent/{self.agent}",
        }

    def snapshot(self) -> None:
        latest = self.stack.all_running([self.workload], timeout=3.0)
        assert latest, "the workload is not Running before the fuzzing"
        complete = self.stack.state()
        assert complete is not None
        self.desired = complete.desired
        self.pids = workload_processes(self.agent)
        self.restart_count = latest[self.workload].restart_count

    def assert_unchanged(self) -> None:
        for name in self.senders:
            assert self.stack.alive(name), f"{name} died:\n{self.stack.system.log(name)[-3000:]}"
        complete = self.stack.state(timeout=5.0)
        assert complete is not None, "the planner no longer answers ank/cmd/state"
        assert complete.desired == self.desired, "the desired state changed"
        latest = self.stack.all_running([self.workload], timeout=5.0)
        assert latest, f"{self.workload} is no longer Running: {self.stack.latest_states()}"
        assert latest[self.workload].restart_count == self.restart_count, "the workload was restarted"
        assert workload_processes(self.agent) == self.pids, "the workload processes changed"
        replies = self.stack.bus.get(f"ank/state/{self.agent}/**", timeout=3.0)
        agent_states = [msgspec.json.decode(p, type=WorkloadState) for _k, p in replies]
        assert [ws.workload for ws in agent_states if ws.agent == self.agent] == [self.workload], (
            "the agent no longer answers its state queryable"
        )


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    base = tmp_path_factory.mktemp("fuzz")
    with running_stack(base) as stack:
        # every drop reported (no rate limit), so that reports can be counted against sends
        stack.system.env["ANK_DROP_REPORT_WINDOW_S"] = "0"
        agent = unique("fz")
        state = Fuzzed(stack, agent, "steady", unique("ghost"), unique("ghostwl"))
        stack.start_planner()
        # the plan is waiting before the agent starts: see docs/reliability.md, open problem 1
        result = stack.apply(manifest_of(agent, ["steady"], runtime_config=SLEEPER))
        assert result.ok, result.errors
        stack.start_agent(agent)
        stack.start_health_watcher()
        stack.start_scheduler()
        stack.wait(lambda: stack.all_running(["steady"]), 20, "steady Running")

        # every service is up once it reports a drop of its own (repeated: a put before a
        # subscriber exists is lost)
        def all_report() -> bool:
            stack.bus.put("ank/state/probe/x", b"{")
            try:
                return bool(
                    stack.observer.wait(
                        lambda: all(
                            stack.observer.count_events(s, "dropped")
                            for s in ("planner", "health-watcher", "scheduler")
                        ),
                        0.5,
                        "drops reported",
                    )
                )
            except AssertionError:
                return False

        wait_for(all_report, 30, "every service subscribed")
        state.snapshot()
        yield state


@dataclass(frozen=True)
class PutKey:
    """A key services subscribe to: its Struct, a valid message to mutate,
    the decoy key for messages that decode, and who must report a drop."""

    name: str
    schema: type[msgspec.Struct]
    real_key: Callable[[Fuzzed], str]
    decoy_key: Callable[[Fuzzed], str]
    base: Callable[[Fuzzed], msgspec.Struct]
    droppers: Callable[[Fuzzed], list[str]]


def _planned(f: Fuzzed) -> PlannedWorkload:
    return PlannedWorkload(
        name=f.ghost_workload,
        instance="i1",
        workload=Workload(runtime="process", runtime_config=SLEEPER, agent=f.ghost_agent),
    )


PUT_KEYS = [
    PutKey(
        "plan",
        AgentPlan,
        lambda f: f"ank/plan/{f.agent}",
        lambda f: f"ank/plan/{f.ghost_agent}",
        lambda f: AgentPlan(agent=f.ghost_agent, generation=7, workloads=[_planned(f)], sender="fuzz", seq=1),
        lambda f: [f"agent/{f.agent}"],
    ),
    PutKey(
        "health",
        HealthReport,
        lambda f: f"ank/health/{f.agent}/{f.workload}",
        lambda f: f"ank/health/{f.agent}/{f.ghost_workload}",
        lambda f: HealthReport(workload=f.ghost_workload, agent=f.agent, status="unhealthy", sender="fuzz", seq=1),
        lambda f: [f"agent/{f.agent}"],
    ),
    PutKey(
        "state",
        WorkloadState,
        lambda f: f"ank/state/{f.agent}/{f.workload}",
        lambda f: f"ank/state/{f.ghost_agent}/{f.ghost_workload}",
        lambda f: WorkloadState(
            workload=f.ghost_workload,
            agent=f.ghost_agent,
            execution_state=ExecutionState("Failed", "ExecFailed"),
            restart_count=3,
            sender="fuzz",
            seq=1,
        ),
        lambda f: ["planner", "health-watcher", "scheduler"],
    ),
    PutKey(
        "bind",
        Binding,
        lambda f: f"ank/bind/{f.workload}",
        lambda f: f"ank/bind/{f.ghost_workload}",
        lambda f: Binding(workload=f.ghost_workload, agent=f.ghost_agent, policy="MALE", sender="fuzz", seq=1),
        lambda f: ["planner"],
    ),
    PutKey(
        "energy",
        EnergyReport,
        lambda f: f"ank/energy/{f.agent}",
        lambda f: f"ank/energy/{f.ghost_agent}",
        lambda f: EnergyReport(node=f.ghost_agent, energy_wh=50.0, capacity_wh=100.0, sender="fuzz", seq=1),
        lambda f: ["scheduler"],
    ),
    PutKey(
        "status",
        AgentStatus,
        lambda f: f"ank/agents/{f.agent}/status",
        lambda f: f"ank/agents/{f.ghost_agent}/status",
        lambda f: AgentStatus(agent=f.ghost_agent, arch="x86_64", os="linux", sender="fuzz", seq=1),
        lambda f: ["scheduler"],
    ),
]


@dataclass
class Tally:
    sent: int = 0
    rejected: int = 0  # sent to the real key, must be reported
    decoy: int = 0
    log: list[bytes] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text("\n".join(p.hex() for p in self.log[-2000:]))


def _await_reports(f: Fuzzed, droppers: list[str], subject: str, before: dict[str, int], expected: int) -> None:
    observer = f.stack.observer
    observer.wait(
        lambda: all(observer.count_events(s, "dropped", subject) - before[s] >= expected for s in droppers),
        REPORT_TIMEOUT_S,
        f"{expected} drops of {subject} reported by each of {droppers}: "
        + str({s: observer.count_events(s, "dropped", subject) - before[s] for s in droppers}),
    )


@pytest.mark.parametrize("spec", PUT_KEYS, ids=[k.name for k in PUT_KEYS])
def test_garbage_on_a_subscribed_key_is_dropped_reported_and_changes_nothing(
    fuzzed: Fuzzed, spec: PutKey, tmp_path: Path
) -> None:
    f = fuzzed
    real, decoy = spec.real_key(f), spec.decoy_key(f)
    droppers = spec.droppers(f)
    observer = f.stack.observer
    before = {s: observer.count_events(s, "dropped", real) for s in droppers}
    base = msgspec.to_builtins(spec.base(f))
    tally = Tally()

    def send(payload: bytes) -> None:
        tally.sent += 1
        tally.log.append(payload)
        if bus_rejects(payload, spec.schema):
            tally.rejected += 1
            f.stack.bus.put(real, payload)
        else:
            tally.decoy += 1
            f.stack.bus.put(decoy, payload)
        if tally.sent % BATCH == 0:
            _await_reports(f, droppers, real, before, tally.rejected)

    started = time.monotonic()
    try:
        fuzz(garbage_or_shaped(base), MESSAGES_PER_KEY, send)
        _await_reports(f, droppers, real, before, tally.rejected)
    finally:
        tally.save(tmp_path / "sent.hex")
    seconds = time.monotonic() - started
    print(
        f"{spec.name}: {tally.sent} sent ({tally.rejected} to {real}, {tally.decoy} decodable to {decoy}) "
        f"in {seconds:.1f}s"
    )
    assert tally.rejected > tally.sent // 2
    # exactly one report per rejected message and receiver (none lost, none doubled)
    for sender in droppers:
        assert observer.count_events(sender, "dropped", real) - before[sender] == tally.rejected
    f.assert_unchanged()
    kept = [e for e in recent_events(f.stack.bus) if e.kind == "dropped" and e.subject == real]
    assert kept, f"`ank get eventlog` shows no drop of {real}"


def test_garbage_manifests_on_ank_desired_are_rejected_with_an_event_and_change_nothing(
    fuzzed: Fuzzed, tmp_path: Path
) -> None:
    f = fuzzed
    observer = f.stack.observer
    before = observer.count_events("planner", "rejected", "ank/desired")
    logged_before = f.stack.system.log("planner").count(REJECTED_LINE)
    tally = Tally()

    def await_rejections() -> None:
        def reported() -> bool:
            return observer.count_events("planner", "rejected", "ank/desired") - before >= tally.rejected

        try:
            observer.wait(reported, REPORT_TIMEOUT_S, "rejections reported")
        except AssertionError:
            events = observer.count_events("planner", "rejected", "ank/desired") - before
            logged = f.stack.system.log("planner").count(REJECTED_LINE) - logged_before
            raise AssertionError(
                f"{tally.rejected} garbage manifests sent, the planner logged {logged} rejections "
                f"and {events} rejection events arrived"
            ) from None

    def send(text: str) -> None:
        payload = text.encode("utf-8", errors="surrogatepass")
        if not rejected_by_planner(payload):
            return  # a valid manifest would rightly apply: not garbage
        tally.sent += 1
        tally.rejected += 1
        tally.log.append(payload)
        f.stack.bus.put("ank/desired", payload)
        if tally.sent % BATCH == 0:
            await_rejections()

    try:
        fuzz(manifest_texts(f.agent), MESSAGES_PER_KEY, send)
        await_rejections()
    finally:
        tally.save(tmp_path / "sent.hex")
    assert tally.sent > MESSAGES_PER_KEY // 2
    assert observer.count_events("planner", "rejected", "ank/desired") - before == tally.rejected
    f.assert_unchanged()
    shown = f.stack.system.ank("get", "eventlog", "-o", "json")
    kinds = [json.loads(line)["kind"] for line in shown.stdout.splitlines() if line.strip()]
    # the planner keeps the latest 1000 events: after this test they are rejections
    assert "rejected" in kinds, f"`ank get eventlog` shows {collections.Counter(kinds)}: {shown.stderr}"


def _apply_requests(agent: str) -> st.SearchStrategy[bytes]:
    base = msgspec.to_builtins(ApplyRequest(manifest="apiVersion: v1\nworkloads: {}\n", sender="fuzz", seq=1))
    as_request = manifest_texts(agent).map(
        # JSON cannot carry a lone surrogate: the request is valid JSON, its manifest garbage
        lambda text: msgspec.json.encode(ApplyRequest(manifest=text.encode("utf-8", "replace").decode()))
    )
    return st.one_of(garbage_or_shaped(base), as_request)


def _decoded(payload: bytes, schema: type[S]) -> S | None:
    try:
        return msgspec.json.decode(payload, type=schema)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None


def _the_result(f: Fuzzed, key: str, payload: bytes) -> ApplyResult:
    """The planner's one ApplyResult for a command query."""
    replies = f.stack.bus.get(key, payload, timeout=10.0)
    assert len(replies) == 1, f"{len(replies)} replies to {payload[:200]!r}"
    return msgspec.json.decode(replies[0][1], type=ApplyResult)


def test_garbage_apply_requests_get_an_error_reply_and_change_nothing(fuzzed: Fuzzed) -> None:
    f = fuzzed
    answered = 0

    def send(payload: bytes) -> None:
        nonlocal answered
        request = _decoded(payload, ApplyRequest)
        if request is not None and not rejected_by_planner(request.manifest):
            return  # a valid manifest would rightly apply
        result = _the_result(f, "ank/cmd/apply", payload)
        assert not result.ok and result.errors, f"{payload[:200]!r} was not rejected: {result}"
        assert all(str(e) for e in result.errors)
        answered += 1

    fuzz(_apply_requests(f.agent), MESSAGES_PER_KEY, send)
    assert answered > MESSAGES_PER_KEY // 2
    f.assert_unchanged()


def test_garbage_delete_requests_change_nothing(fuzzed: Fuzzed) -> None:
    f = fuzzed
    base = msgspec.to_builtins(DeleteRequest(workloads=[f.ghost_workload], sender="fuzz", seq=1))
    answered = 0

    def send(payload: bytes) -> None:
        nonlocal answered
        request = _decoded(payload, DeleteRequest)
        if request is not None and f.workload in request.workloads:
            return  # a real delete of the workload: not garbage
        result = _the_result(f, "ank/cmd/delete", payload)
        if request is None:
            assert not result.ok and "invalid DeleteRequest" in result.errors[0].message
        else:
            assert not result.deleted and not result.added
        answered += 1

    fuzz(garbage_or_shaped(base), MESSAGES_PER_KEY, send)
    assert answered > MESSAGES_PER_KEY // 2
    f.assert_unchanged()


def test_queries_with_garbage_payloads_and_parameters_are_still_answered(fuzzed: Fuzzed) -> None:
    """ank/cmd/state, ank/plan/<agent> (planner) and ank/state/<agent>/**
    (agent) answer whatever payload and parameters a query carries."""
    f = fuzzed
    params = st.text(alphabet=st.characters(codec="ascii", exclude_characters="#?\x00"), max_size=40)
    answered = 0

    def send(value: tuple[bytes, str]) -> None:
        nonlocal answered
        payload, parameters = value
        suffix = f"?{parameters}" if parameters else ""
        replies = f.stack.bus.get(f"ank/cmd/state{suffix}", payload, timeout=10.0)
        assert len(replies) == 1
        assert msgspec.json.decode(replies[0][1], type=CompleteState).desired == f.desired
        plans = f.stack.bus.get(f"ank/plan/{f.agent}{suffix}", payload, timeout=10.0)
        assert [msgspec.json.decode(p, type=AgentPlan).agent for _k, p in plans] == [f.agent]
        states = f.stack.bus.get(f"ank/state/{f.agent}/**{suffix}", payload, timeout=10.0)
        assert [msgspec.json.decode(p, type=WorkloadState).workload for _k, p in states] == [f.workload]
        answered += 1

    fuzz(st.tuples(st.binary(max_size=200), params), scaled(2_000, 50), send)
    f.assert_unchanged()


def _log_parameters() -> st.SearchStrategy[str]:
    value = st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.text(alphabet=st.characters(codec="ascii", exclude_characters="#?;=\x00"), max_size=12),
    )
    pair = st.tuples(st.sampled_from(["tail", "offset", "follow", "x", ""]), value).map("=".join)
    return st.lists(pair, max_size=4).map(";".join)


def test_log_queries_with_garbage_parameters_get_a_reply_or_an_error_and_the_agent_stays(fuzzed: Fuzzed) -> None:
    """`ank/logs/<agent>/<workload>` (the agent) answers every query: the log,
    or an error reply naming the problem; never nothing, never a crash."""
    f = fuzzed
    key = f"ank/logs/{f.agent}/{f.workload}"
    outcomes: collections.Counter[str] = collections.Counter()

    def ask(parameters: str) -> None:
        selector = f"{key}?{parameters}" if parameters else key
        replies = list(f.stack.bus.session.get(selector, timeout=10.0))
        assert len(replies) == 1, f"{len(replies)} replies to {selector!r}"
        if replies[0].ok is not None:
            chunk = msgspec.json.decode(replies[0].ok.payload.to_bytes())
            assert isinstance(chunk.get("text"), str) and isinstance(chunk.get("offset"), int), chunk
            outcomes["log"] += 1
        else:
            assert replies[0].err is not None and replies[0].err.payload.to_string(), selector
            outcomes["error"] += 1

    fuzz(_log_parameters(), scaled(2_000, 50), ask)
    print(f"logs: {dict(outcomes)}")
    ask("tail=1")
    f.assert_unchanged()


LONE_SURROGATE = 'apiVersion: "\\uDFFF"\nworkloads:\n  a:\n    runtime: process\n    agent: nobody\n'


def test_a_lone_surrogate_in_a_manifest_is_rejected_with_an_apply_result_and_an_event(fuzzed: Fuzzed) -> None:
    f = fuzzed
    replies = list(
        f.stack.bus.session.get(
            "ank/cmd/apply", payload=msgspec.json.encode(ApplyRequest(manifest=LONE_SURROGATE)), timeout=10.0
        )
    )
    assert len(replies) == 1 and replies[0].ok is not None, (
        replies[0].err.payload.to_string() if replies and replies[0].err else "no reply"
    )
    assert not msgspec.json.decode(replies[0].ok.payload.to_bytes(), type=ApplyResult).ok
    observer = f.stack.observer
    before = observer.count_events("planner", "rejected", "ank/desired")
    f.stack.bus.put("ank/desired", LONE_SURROGATE.encode())
    observer.wait(lambda: observer.count_events("planner", "rejected", "ank/desired") > before, 5, "rejected event")


# -- oversized payloads and YAML bombs ----------------------------------------------------------

BILLION_LAUGHS = "\n".join(
    [
        "apiVersion: v1",
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *[f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)],
        "workloads:",
        "  boom:",
        "    runtime: process",
        "    agent: nobody",
        "    runtimeConfig: *i",
    ]
)
DEEP_YAML = "apiVersion: v1\nworkloads:\n  deep:\n    runtime: process\n    tags: " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = '{"apiVersion":"v1","workloads":' + '{"a":' * 5000 + "{}" + "}" * 5000 + "}"
RECURSIVE_ALIAS = "apiVersion: v1\nworkloads: &w\n  loop: *w\n"


def _big_manifest(agent: str, size: int) -> str:
    padding = "#" + "x" * 1000 + "\n"
    head = manifest_of(agent, ["big"])
    return head + padding * (size // len(padding) + 1)


BOMBS = {
    "billion-laughs": (BILLION_LAUGHS, ("alias", "expan", "node")),
    "deep-yaml": (DEEP_YAML, ("nest", "depth", "deep")),
    "deep-json": (DEEP_JSON, ("nest", "depth", "deep")),
    "recursive-alias": (RECURSIVE_ALIAS, ("recursive", "alias")),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_yaml_bombs_on_ank_desired_and_apply_are_rejected_naming_the_problem(fuzzed: Fuzzed, bomb: str) -> None:
    f = fuzzed
    text, words = BOMBS[bomb]
    result = f.stack.apply(text, timeout=30.0)
    assert not result.ok
    reason = "; ".join(str(e) for e in result.errors).lower()
    assert any(w in reason for w in words), reason
    observer = f.stack.observer
    before = observer.count_events("planner", "rejected", "ank/desired")
    f.stack.bus.put("ank/desired", text.encode())
    observer.wait(lambda: observer.count_events("planner", "rejected", "ank/desired") > before, 30, f"{bomb} rejected")
    event = observer.events_from("planner", "rejected")[-1]
    assert any(w in event.message.lower() for w in words), event.message
    f.assert_unchanged()


@pytest.mark.parametrize("size", [1024 * 1024 + 10, MAX_PAYLOAD + 10])
def test_oversized_manifests_are_rejected_naming_the_size_limit(fuzzed: Fuzzed, size: int) -> None:
    f = fuzzed
    text = _big_manifest(f.agent, size)
    result = f.stack.apply(text, timeout=30.0)
    assert not result.ok
    reason = "; ".join(str(e) for e in result.errors)
    assert "larger than" in reason or "exceeds" in reason, reason
    observer = f.stack.observer
    before = observer.count_events("planner", "rejected", "ank/desired")
    f.stack.bus.put("ank/desired", text.encode())
    observer.wait(lambda: observer.count_events("planner", "rejected", "ank/desired") > before, 30, "rejected")
    message = observer.events_from("planner", "rejected")[-1].message
    assert "larger than" in message or "exceeds" in message, message
    f.assert_unchanged()


def test_oversized_state_message_is_dropped_naming_the_size_limit(fuzzed: Fuzzed) -> None:
    f = fuzzed
    key = f"ank/state/{f.agent}/{f.workload}"
    observer = f.stack.observer
    before = observer.count_events("planner", "dropped", key)
    f.stack.bus.put(key, b'{"pad":"' + b"x" * (MAX_PAYLOAD + 10) + b'"}')
    observer.wait(lambda: observer.count_events("planner", "dropped", key) > before, 30, "oversized state dropped")
    dropped = [e for e in observer.events_from("planner", "dropped") if e.subject == key][-1]
    assert "exceeds" in dropped.message, dropped.message
    f.assert_unchanged()


def test_stale_and_misrouted_messages_that_decode_change_nothing(fuzzed: Fuzzed) -> None:
    """Well-formed messages that must still be ignored: a plan older than the
    applied one, a plan or health verdict whose payload names another agent
    than its key, a state about another workload than its key."""
    f = fuzzed
    huge = 2**62
    messages: list[tuple[str, msgspec.Struct]] = [
        (f"ank/plan/{f.agent}", AgentPlan(agent=f.agent, generation=-1)),
        (f"ank/plan/{f.agent}", AgentPlan(agent=f.agent, generation=0)),
        (f"ank/plan/{f.agent}", AgentPlan(agent=f.ghost_agent, generation=huge)),
        (
            f"ank/health/{f.agent}/{f.workload}",
            HealthReport(workload=f.workload, agent=f.ghost_agent, status="unhealthy", consecutive_failures=99),
        ),
        (
            f"ank/state/{f.agent}/{f.ghost_workload}",
            WorkloadState(workload=f.workload, agent=f.agent, execution_state=ExecutionState("Removed")),
        ),
    ]
    for key, message in messages:
        f.stack.bus.put(key, message)
    _agent_caught_up(f)
    f.assert_unchanged()


def _agent_caught_up(f: Fuzzed) -> None:
    """Returns once the agent has handled what was sent before: a garbage plan
    sent now is reported after those (one session, one key order)."""
    key = f"ank/plan/{f.agent}"
    before = f.stack.observer.count_events(f"agent/{f.agent}", "dropped", key)
    f.stack.bus.put(key, b"not a plan")
    f.stack.observer.wait(
        lambda: f.stack.observer.count_events(f"agent/{f.agent}", "dropped", key) > before, 10, "the agent caught up"
    )


def test_a_health_verdict_on_another_workloads_key_leaves_this_workload_alone(fuzzed: Fuzzed) -> None:
    f = fuzzed
    victim = unique("victim")
    assert f.stack.apply(manifest_of(f.agent, [victim])).ok
    try:
        latest = f.stack.observer.wait(lambda: f.stack.all_running([victim]), 20, f"{victim} Running")
        pids = workload_processes(f.agent)[victim]
        report = HealthReport(workload=victim, agent=f.agent, status="unhealthy", consecutive_failures=99)
        f.stack.bus.put(f"ank/health/{f.agent}/{f.ghost_workload}", report)
        _agent_caught_up(f)
        now = f.stack.latest_states()[victim]
        assert str(now.execution_state) == "Running(Ok)", now
        assert now.restart_count == latest[victim].restart_count
        assert workload_processes(f.agent)[victim] == pids
    finally:
        f.stack.bus.get("ank/cmd/delete", msgspec.json.encode(DeleteRequest(workloads=[victim])), 10)
        f.stack.observer.wait(lambda: victim not in workload_processes(f.agent), 20, f"{victim} removed")


def test_the_agent_still_runs_a_new_plan_after_the_fuzzing(fuzzed: Fuzzed) -> None:
    f = fuzzed
    result = f.stack.apply(manifest_of(f.agent, ["after"]))
    assert result.ok, result.errors
    try:
        f.stack.observer.wait(lambda: f.stack.all_running(["after", f.workload]), 20, "after Running")
        assert len(workload_processes(f.agent).get("after", [])) == 1
    finally:
        replies = f.stack.bus.get("ank/cmd/delete", msgspec.json.encode(DeleteRequest(workloads=["after"])), 10)
        assert replies
    f.stack.observer.wait(lambda: "after" not in workload_processes(f.agent), 20, "after removed")
