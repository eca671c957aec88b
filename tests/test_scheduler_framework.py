"""The scheduling framework (services.scheduler.framework): filters, scores,
normalisation, tie-break, reserve, backoff. Pure: no bus, no clock."""

from __future__ import annotations

import msgspec
import pytest

from services.scheduler.framework import (
    ENERGY_FILTERS,
    POLICIES,
    CycleContext,
    NodeView,
    NoFit,
    Placement,
    PlacementRequest,
    Profile,
    Reservations,
    Taint,
    Toleration,
    backoff_ms,
    normalise,
    schedule,
)

NOW = 1_000_000


def node(name: str, wh: float | None = 50.0, **kw: object) -> NodeView:
    kw.setdefault("energy_time_ms", NOW - 1000 if wh is not None else None)
    return NodeView(name=name, energy_wh=wh, **kw)  # type: ignore[arg-type]


def ctx(**kw: object) -> CycleContext:
    return CycleContext(now_ms=NOW, **kw)  # type: ignore[arg-type]


def req(**kw: object) -> PlacementRequest:
    kw.setdefault("workload", "w")
    return PlacementRequest(**kw)  # type: ignore[arg-type]


def placed(result: Placement | NoFit) -> str:
    assert isinstance(result, Placement), getattr(result, "message", result)
    return result.node


def test_male_picks_the_node_with_most_energy() -> None:
    nodes = [node("a", 30), node("b", 80), node("c", 55)]
    result = schedule(req(), nodes, ctx())
    assert placed(result) == "b"
    assert isinstance(result, Placement) and result.policy == "MALE" and result.candidates == 3
    assert "80.0 Wh" in result.reason


def test_equal_energy_ties_break_by_node_name_whatever_the_order() -> None:
    assert placed(schedule(req(), [node("z", 40), node("m", 40), node("k", 40)], ctx())) == "k"
    assert placed(schedule(req(), [node("k", 40), node("z", 40), node("m", 40)], ctx())) == "k"


def test_dead_agent_and_agent_without_status_are_filtered() -> None:
    result = schedule(req(), [node("a", 90, alive=False), node("b", 90, has_status=False)], ctx())
    assert isinstance(result, NoFit)
    assert result.reasons == {"a": "agent not alive", "b": "agent status unknown"}


def test_not_ready_and_unschedulable_nodes_are_filtered() -> None:
    result = schedule(req(), [node("a", ready=False), node("b", unschedulable=True), node("c", 10)], ctx())
    assert placed(result) == "c"


def test_selector_matches_arch_and_tags() -> None:
    nodes = [
        node("x86", 90, arch="amd64", labels={"zone": "a"}),
        node("arm-b", 80, arch="arm64", labels={"zone": "b"}),
        node("arm-a", 20, arch="arm64", labels={"zone": "a"}),
    ]
    assert placed(schedule(req(selector={"arch": "arm64"}), nodes, ctx())) == "arm-b"
    assert placed(schedule(req(selector={"arch": "arm64", "zone": "a"}), nodes, ctx())) == "arm-a"
    none = schedule(req(selector={"arch": "riscv64"}), nodes, ctx())
    assert isinstance(none, NoFit)
    assert none.reasons["x86"] == "selector mismatch: arch='amd64', wants 'riscv64'"
    assert none.message == "0/3 nodes are available: 3 selector mismatch"


def test_stale_or_missing_energy_is_filtered_unless_unmetered_nodes_are_allowed() -> None:
    stale = node("stale", 99, energy_time_ms=NOW - 60_000)
    missing = node("missing", None)
    result = schedule(req(), [stale, missing], ctx(max_energy_age_ms=30_000))
    assert isinstance(result, NoFit)
    assert result.reasons["stale"].startswith("energy report stale: 60.0 s old")
    assert result.reasons["missing"] == "no energy report"
    assert placed(schedule(req(), [missing], ctx(require_energy=False))) == "missing"


def test_reserve_keeps_a_node_that_would_drop_below_it() -> None:
    nodes = [node("poor", 12), node("rich", 30)]
    # 12 - 3 < 10: poor is out even though it is above the reserve now
    result = schedule(req(min_energy_wh=10, energy_cost_wh=3), [nodes[0]], ctx())
    assert isinstance(result, NoFit)
    assert result.reasons["poor"] == "energy below reserve: 9.0 Wh after placement < 10.0 Wh"
    assert placed(schedule(req(min_energy_wh=10, energy_cost_wh=3), nodes, ctx())) == "rich"


def test_in_flight_reservations_spread_a_burst_across_nodes() -> None:
    views = {"a": node("a", 50), "b": node("b", 48), "c": node("c", 45)}
    in_flight = Reservations()
    chosen = []
    for i in range(6):
        result = schedule(req(workload=f"w{i}", energy_cost_wh=2), list(views.values()), ctx())
        name = placed(result)
        chosen.append(name)
        in_flight.add(f"w{i}", name, 2, NOW + 30_000)
        views[name] = msgspec.structs.replace(views[name], reserved_wh=in_flight.reserved_wh(name))
    # a:50 -> 48 (tie with b, a wins by name) -> 46; b:48 -> 46; ... each node gets work
    assert chosen == ["a", "a", "b", "a", "b", "c"]
    assert set(chosen) == {"a", "b", "c"}


def test_a_rejection_names_its_filter_as_a_typed_reason() -> None:
    stale = node("stale", 99, energy_time_ms=NOW - 60_000, arch="arm64")
    poor = node("poor", 5, arch="arm64")
    other = node("other", 99, arch="amd64")
    result = schedule(req(min_energy_wh=10, selector={"arch": "arm64"}), [stale, poor, other], ctx())
    assert isinstance(result, NoFit)
    assert result.filters == {"stale": "EnergyFresh", "poor": "EnergyReserve", "other": "Selector"}
    assert {n for n, f in result.filters.items() if f in ENERGY_FILTERS} == {"stale", "poor"}


def test_reservations_count_per_node_until_released_or_expired() -> None:
    in_flight = Reservations()
    in_flight.add("w1", "a", 2, NOW + 1000)
    in_flight.add("w2", "a", 3, NOW + 2000)
    in_flight.add("w3", "b", 1, NOW + 500)
    assert (in_flight.reserved_wh("a"), in_flight.reserved_wh("b")) == (5, 1)
    assert in_flight.next_expiry_ms() == NOW + 500
    assert in_flight.release("w1") == "a" and in_flight.release("w1") is None
    assert in_flight.reserved_wh("a") == 3
    in_flight.add("w2", "b", 4, NOW + 2000)  # re-placed: counted on its new node only
    assert (in_flight.reserved_wh("a"), in_flight.reserved_wh("b")) == (0, 5)
    assert sorted(in_flight.expired(NOW + 500)) == ["w3"] and len(in_flight) == 2
    assert in_flight.node_of("w2") == "b" and "w3" in in_flight


def test_taints_need_a_matching_toleration() -> None:
    tainted = node("gpu", 90, taints=(Taint("dedicated", "gpu", "NoSchedule"),))
    soft = node("soft", 80, taints=(Taint("maybe", "", "PreferNoSchedule"),))
    assert placed(schedule(req(), [tainted, soft], ctx())) == "soft"
    equal = Toleration(key="dedicated", operator="Equal", value="gpu", effect="NoSchedule")
    assert placed(schedule(req(tolerations=(equal,)), [tainted, soft], ctx())) == "gpu"
    assert placed(schedule(req(tolerations=(Toleration(operator="Exists"),)), [tainted], ctx())) == "gpu"
    wrong = Toleration(key="dedicated", value="cpu")
    result = schedule(req(tolerations=(wrong,)), [tainted], ctx())
    assert isinstance(result, NoFit) and result.reasons["gpu"] == "untolerated taint: dedicated=gpu:NoSchedule"


def test_round_robin_walks_the_ring_and_random_is_reproducible() -> None:
    nodes = [node("a", 10), node("b", 90), node("c", 50)]
    ring = ("a", "b", "c")
    picks = [placed(schedule(req(policy="round-robin"), nodes, ctx(cursor=i, ring=ring))) for i in range(4)]
    assert picks == ["a", "b", "c", "a"]
    first = [placed(schedule(req(policy="random", workload=f"w{i}"), nodes, ctx(seed=7))) for i in range(20)]
    again = [placed(schedule(req(policy="random", workload=f"w{i}"), nodes, ctx(seed=7))) for i in range(20)]
    assert first == again and len(set(first)) > 1


def test_unknown_policy_is_a_clear_failure() -> None:
    result = schedule(req(policy="cheapest"), [node("a")], ctx())
    assert isinstance(result, NoFit)
    assert "unknown policy: 'cheapest'" in result.reasons["a"]


def test_a_new_policy_is_a_profile_not_a_change_of_the_loop() -> None:
    class LeastEnergy:
        name = "LeastEnergy"

        def score(self, request: PlacementRequest, n: NodeView, c: CycleContext) -> float:
            return -n.projected_wh

    frugal = Profile("frugal", POLICIES["MALE"].filters, ((LeastEnergy(), 1.0),), describe="least energy")
    assert placed(schedule(req(), [node("a", 10), node("b", 90)], ctx(), frugal)) == "a"


def test_normalise_scales_to_0_100_and_all_equal_to_100() -> None:
    assert normalise({"a": 10, "b": 20, "c": 15}) == {"a": 0.0, "b": 100.0, "c": 50.0}
    assert normalise({"a": 3, "b": 3}) == {"a": 100.0, "b": 100.0}
    assert normalise({}) == {}


@pytest.mark.parametrize(
    ("attempts", "delay"), [(0, 0), (1, 1000), (2, 2000), (3, 4000), (4, 8000), (5, 10000), (50, 10000)]
)
def test_backoff_grows_from_1_s_to_10_s(attempts: int, delay: int) -> None:
    assert backoff_ms(attempts) == delay


def test_no_nodes_at_all_says_so() -> None:
    result = schedule(req(), [], ctx())
    assert isinstance(result, NoFit) and result.message == "0/0 nodes are available: no nodes known"
