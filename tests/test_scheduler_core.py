"""Native mode's decisions (services.scheduler.core): which workloads are
the scheduler's, bindings, FailedScheduling and backoff, retries on relevant
events, re-placement on agent loss and low energy with hysteresis. Pure."""

from __future__ import annotations

import msgspec

from schemas.liveliness import AgentLiveliness
from schemas.manifest import Manifest, Scheduling, Workload
from schemas.messages import AgentStatus, Binding, CompleteState, EnergyReport, WorkloadState
from schemas.state import NOT_SCHEDULED, RUNNING
from services.scheduler.core import (
    Action,
    AgentStatusSeen,
    DesiredStateRead,
    NativeConfig,
    NativeEvent,
    NativeState,
    PublishBinding,
    PublishEvent,
    Requery,
    WorkloadStateSeen,
    next_wake_ms,
    node_views,
    request_for,
    step,
)
from services.scheduler.core import bindings as current_bindings
from services.scheduler.framework import EnergyReported, Tick

T0 = 1_700_000_000_000


def wl(agent: str | None = "", **scheduling: object) -> Workload:
    # wire names (minEnergyWh, ...), as a manifest spells them
    hints = msgspec.convert(scheduling, Scheduling) if scheduling else None
    return Workload(runtime="process", agent=agent, scheduling=hints)


def desired(**workloads: Workload) -> CompleteState:
    return CompleteState(desired=Manifest(api_version="v1", workloads=workloads))


def bindings(actions: list[Action]) -> dict[str, str]:
    return {a.binding.workload: a.binding.agent for a in actions if isinstance(a, PublishBinding)}


def events(actions: list[Action], kind: str) -> list[PublishEvent]:
    return [a for a in actions if isinstance(a, PublishEvent) and a.kind == kind]


def feed(core: NativeState, event: NativeEvent, now: int) -> tuple[NativeState, list[Action]]:
    decided = step(core, event, now)
    return decided.state, decided.actions


def fleet(core: NativeState, energies: dict[str, float], now: int = T0, arch: str = "arm64") -> NativeState:
    for name, wh in energies.items():
        core = step(core, AgentLiveliness(name, True), now).state
        core = step(
            core, AgentStatusSeen(AgentStatus(agent=name, arch=arch, os="linux", tags={"role": "bot"})), now
        ).state
        core = step(core, EnergyReported(EnergyReport(node=name, energy_wh=wh, time_ms=now)), now).state
    return core


def energy(core: NativeState, name: str, wh: float, now: int) -> tuple[NativeState, list[Action]]:
    return feed(core, EnergyReported(EnergyReport(node=name, energy_wh=wh, time_ms=now)), now)


def test_a_step_returns_a_new_state_and_leaves_the_given_one_as_it_was() -> None:
    before = fleet(NativeState(NativeConfig(default_energy_cost_wh=5)), {"a": 50})
    after, actions = feed(before, DesiredStateRead(desired(w=wl())), T0)
    assert bindings(actions) == {"w": "a"} and after.workloads["w"].agent == "a"
    assert before.workloads == {} and before.in_flight == {} and not before.desired_known
    assert node_views(before, T0)[0].reserved_wh == 0 and node_views(after, T0)[0].reserved_wh == 5
    # the same event on the same state decides the same again
    assert feed(before, DesiredStateRead(desired(w=wl())), T0) == (after, actions)


def test_which_workloads_are_the_schedulers() -> None:
    config = NativeConfig(default_energy_cost_wh=1.5)
    assert request_for("a", wl(agent=""), config) is not None
    assert request_for("b", wl(agent=None), config) is not None
    assert request_for("c", wl(agent="robot-1"), config) is None
    fixed_but_hinted = request_for("d", wl(agent="robot-1", minEnergyWh=5.0), config)
    assert fixed_but_hinted is not None and fixed_but_hinted.min_energy_wh == 5.0
    assert fixed_but_hinted.energy_cost_wh == 1.5
    explicit = request_for("e", wl(energyCostWh=4.0, selector={"arch": "arm64"}, policy="random"), config)
    assert explicit is not None and explicit.energy_cost_wh == 4.0 and explicit.policy == "random"


def test_not_scheduled_workload_is_bound_to_the_richest_matching_agent() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 40, "r2": 90, "r3": 60})
    core = step(core, AgentStatusSeen(AgentStatus(agent="r2", arch="amd64", os="linux")), T0).state  # r2 is not arm64
    core, actions = feed(core, DesiredStateRead(desired(nav=wl(selector={"arch": "arm64"}))), T0)
    assert bindings(actions) == {"nav": "r3"}
    [scheduled] = events(actions, "Scheduled")
    assert "nav bound to r3" in scheduled.message
    binding = next(a.binding for a in actions if isinstance(a, PublishBinding))
    assert binding.policy == "MALE" and binding.reason.startswith("MALE: most projected energy; r3 projected 60.0 Wh")


def test_nothing_placed_before_the_desired_state_is_known() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 40})
    core, out = feed(core, Tick(), T0)
    assert out == []
    core, out = feed(core, DesiredStateRead(desired(w=wl())), T0)
    assert bindings(out) == {"w": "r1"}


def test_fixed_agent_workload_without_extension_is_left_alone() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 40})
    core, out = feed(core, DesiredStateRead(desired(w=wl(agent="r9"))), T0)
    assert out == []
    assert core.workloads == {}


def test_burst_spreads_over_nodes_through_in_flight_costs() -> None:
    core = NativeState(NativeConfig(default_energy_cost_wh=5))
    core = fleet(core, {"a": 50, "b": 49, "c": 48})
    core, actions = feed(core, DesiredStateRead(desired(**{f"w{i}": wl() for i in range(6)})), T0)
    placed = bindings(actions)
    assert sorted(placed.values()) == ["a", "a", "b", "b", "c", "c"]


def test_in_flight_cost_is_released_when_the_workload_lands() -> None:
    core = NativeState(NativeConfig(default_energy_cost_wh=5))
    core = fleet(core, {"a": 50})
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    assert node_views(core, T0)[0].reserved_wh == 5
    core = step(core, WorkloadStateSeen(WorkloadState(workload="w", agent="a", execution_state=RUNNING)), T0 + 10).state
    assert node_views(core, T0)[0].reserved_wh == 0


def test_in_flight_cost_expires_after_in_flight_ms() -> None:
    core = NativeState(NativeConfig(default_energy_cost_wh=5, in_flight_ms=1000, max_energy_age_ms=10**9))
    core = fleet(core, {"a": 50})
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    assert next_wake_ms(core) == T0 + 1000
    core = step(core, Tick(), T0 + 1000).state
    assert node_views(core, T0)[0].reserved_wh == 0
    assert next_wake_ms(core) is None


def test_nothing_fits_emits_failed_scheduling_then_backs_off_1_to_10_s() -> None:
    core = NativeState(NativeConfig(max_energy_age_ms=10**9))
    core = fleet(core, {"r1": 5})
    core, actions = feed(core, DesiredStateRead(desired(w=wl(minEnergyWh=20.0))), T0)
    [failed] = events(actions, "FailedScheduling")
    assert failed.severity == "warning" and failed.subject == "w"
    assert "0/1 nodes are available: 1 energy below reserve" in failed.message
    assert "r1: energy below reserve" in failed.message
    delays = []
    now = T0
    for _ in range(6):
        wake = next_wake_ms(core)
        assert wake is not None
        delays.append(wake - now)
        now = wake
        core, out = feed(core, Tick(), now)
        assert out == []  # the same failure: no repeated event
    assert delays == [1000, 2000, 4000, 8000, 10000, 10000]
    # a different failure is news: the report goes stale -> a new event
    core, out = feed(core, Tick(), now + 10**9)
    [stale] = events(out, "FailedScheduling")
    assert "energy report stale" in stale.message


def test_failed_workload_is_retried_at_once_when_a_relevant_node_appears() -> None:
    core = NativeState()
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    assert core.workloads["w"].attempts == 1
    # a new agent with energy: placed without waiting for the backoff
    core = fleet(core, {"r7": 30}, now=T0 + 10)
    assert core.workloads["w"].agent == "r7"


def test_failed_workload_is_retried_at_once_when_energy_recovers() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 5})
    core = step(core, DesiredStateRead(desired(w=wl(minEnergyWh=10.0))), T0).state
    assert core.workloads["w"].agent == ""
    core, out = energy(core, "r1", 30, T0 + 50)
    assert bindings(out) == {"w": "r1"}


def test_energy_report_does_not_retry_a_workload_its_node_rejected_for_another_reason() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 50}, arch="amd64")
    core = step(core, DesiredStateRead(desired(w=wl(selector={"arch": "arm64"}))), T0).state
    assert core.workloads["w"].rejected_by == {"r1": "Selector"}
    core, out = energy(core, "r1", 90, T0 + 50)
    assert out == []
    assert next_wake_ms(core) == T0 + 1000  # still waits for its backoff


def test_agent_lost_re_places_its_workloads_at_once() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 90, "r2": 50})
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    assert core.workloads["w"].agent == "r1"
    core, actions = feed(core, AgentLiveliness("r1", False), T0 + 100)
    assert bindings(actions) == {"w": "r2"}
    binding = next(a.binding for a in actions if isinstance(a, PublishBinding))
    assert "re-placed: agent r1 lost" in binding.reason


def test_agent_lost_with_nowhere_to_go_fails_and_binds_when_an_agent_returns() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 90})
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    core, actions = feed(core, AgentLiveliness("r1", False), T0 + 100)
    assert events(actions, "FailedScheduling") and not bindings(actions)
    core, out = feed(core, AgentLiveliness("r1", True), T0 + 200)
    assert bindings(out) == {"w": "r1"}


def test_low_energy_re_places_only_below_reserve_minus_hysteresis_after_min_dwell() -> None:
    core = NativeState(NativeConfig(hysteresis_wh=2, min_dwell_ms=10_000, default_energy_cost_wh=0))
    core = fleet(core, {"r1": 50, "r2": 40})
    core = step(core, DesiredStateRead(desired(w=wl(minEnergyWh=20.0))), T0).state
    assert core.workloads["w"].agent == "r1"
    # below the reserve but inside the hysteresis band: stays
    core, out = energy(core, "r1", 19, T0 + 20_000)
    assert out == []
    # below reserve - hysteresis, but bound too recently? no: 20 s > 10 s dwell -> moves
    core, actions = energy(core, "r1", 17.5, T0 + 21_000)
    assert bindings(actions) == {"w": "r2"}
    # r2 falls below the band right after the move: the dwell time keeps it there
    core, out = energy(core, "r2", 10, T0 + 22_000)
    assert out == []
    assert core.workloads["w"].agent == "r2"


def test_low_energy_with_no_better_node_keeps_the_binding_and_stays_when_the_node_recovers() -> None:
    core = NativeState(NativeConfig(hysteresis_wh=2, min_dwell_ms=0, default_energy_cost_wh=0))
    core = fleet(core, {"r1": 50})
    core = step(core, DesiredStateRead(desired(w=wl(minEnergyWh=20.0))), T0).state
    core, actions = energy(core, "r1", 10, T0 + 1000)
    [failed] = events(actions, "FailedScheduling")
    assert "cannot move off r1" in failed.message
    assert core.workloads["w"].agent == "r1"  # never unbound to nowhere
    core, out = energy(core, "r1", 25, T0 + 2000)
    assert out == []  # charged: it stays, no new binding
    assert not core.workloads["w"].needs_placement


def test_adopts_the_agent_a_workload_already_runs_on_after_a_restart() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 10, "r2": 90})
    state = CompleteState(
        desired=Manifest(api_version="v1", workloads={"w": wl()}),
        workload_states=[WorkloadState(workload="w", agent="r1", execution_state=RUNNING, time_ms=T0 - 5)],
    )
    core, out = feed(core, DesiredStateRead(state), T0)
    assert out == []
    assert core.workloads["w"].agent == "r1"
    assert current_bindings(core) == [Binding(workload="w", agent="r1", policy="MALE", reason="current binding")]


def test_not_scheduled_for_an_unknown_workload_asks_for_the_desired_state() -> None:
    core = NativeState()
    core = step(core, DesiredStateRead(desired()), T0).state
    ws = WorkloadState(workload="new", agent="", execution_state=NOT_SCHEDULED)
    core, out = feed(core, WorkloadStateSeen(ws), T0)
    assert out == [Requery("new is NotScheduled and not in the desired state known to the scheduler")]


def test_not_scheduled_long_after_binding_re_sends_the_binding() -> None:
    core = NativeState(NativeConfig(in_flight_ms=5000))
    core = fleet(core, {"r1": 50})
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    ws = WorkloadState(workload="w", agent="", execution_state=NOT_SCHEDULED)
    core, out = feed(core, WorkloadStateSeen(ws), T0 + 100)
    assert out == []  # our binding is still on its way
    core, out = feed(core, WorkloadStateSeen(ws), T0 + 6000)
    assert bindings(out) == {"w": "r1"}


def test_removed_workload_is_forgotten_and_its_reservation_released() -> None:
    core = NativeState(NativeConfig(default_energy_cost_wh=5))
    core = fleet(core, {"r1": 50})
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    core = step(core, DesiredStateRead(desired()), T0 + 1).state
    assert core.workloads == {} and len(core.in_flight) == 0
    assert node_views(core, T0)[0].reserved_wh == 0


def test_changed_selector_moves_a_workload_whose_node_no_longer_matches() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 90})
    core = fleet(core, {"x1": 10}, arch="amd64")
    core = step(core, DesiredStateRead(desired(w=wl())), T0).state
    assert core.workloads["w"].agent == "r1"
    core, actions = feed(core, DesiredStateRead(desired(w=wl(selector={"arch": "amd64"}))), T0 + 5)
    assert bindings(actions) == {"w": "x1"}


def test_late_energy_measurement_does_not_replace_a_newer_one() -> None:
    core = NativeState()
    core = fleet(core, {"r1": 50})
    core, _ = energy(core, "r1", 5, T0 - 10_000)
    assert core.energy["r1"].energy_wh == 50


def test_fleet_manifest_is_valid_and_its_workloads_are_placed_by_their_hints() -> None:
    from ank_common.manifest import parse_manifest
    from tests.helpers import ROOT

    parsed = parse_manifest((ROOT / "manifests" / "fleet.yaml").read_text())
    assert parsed.ok, parsed.errors
    assert parsed.rendered is not None
    core = NativeState()
    core = fleet(core, {"tb1": 30, "tb2": 90, "tb3": 60})
    core = step(
        core, AgentStatusSeen(AgentStatus(agent="tb3", arch="arm64", os="linux", tags={"accelerator": "npu"})), T0
    ).state
    core, out = feed(core, DesiredStateRead(CompleteState(desired=parsed.rendered)), T0)
    placed = bindings(out)
    assert "fleet-dashboard" not in placed  # fixed agent, no extension: the planner's
    assert placed["object-detector"] == "tb3"  # the only robot with an npu
    assert placed["slam-mapper"] == "tb2"  # arm64 + role=bot, richest
    assert set(placed) == {"slam-mapper", "object-detector", "telemetry-uplink", "patrol-logger", "route-planner"}
