"""The agent measures at most a budget of workloads per status (round-robin,
the others with their last measurement): a status period's cost does not grow
with the workloads held."""

from __future__ import annotations

from schemas.messages import WorkloadUsage
from services.agent.usage import UsageSampler


def _measure(names: list[str], value: int) -> dict[str, WorkloadUsage]:
    return {n: WorkloadUsage(memory_bytes=value) for n in names}


def test_each_status_measures_at_most_the_budget_and_every_workload_in_turn() -> None:
    sampler = UsageSampler(budget=4)
    held = [f"w{i:02}" for i in range(10)]
    seen: list[str] = []
    for round_no in range(3):  # 10 workloads, 4 per round: all measured within 3 rounds
        picked = sampler.pick(held)
        assert len(picked) == 4
        seen += picked
        usage = sampler.update(held, picked, _measure(picked, round_no + 1))
    assert set(seen) == set(held)
    # every workload is reported, each with its last measurement
    assert sorted(usage) == held
    # w08, w09 (never measured) went first in the third round, then w00, w01 (measured longest ago)
    assert seen[8:] == ["w08", "w09", "w00", "w01"]
    assert usage["w02"].memory_bytes == 1 and usage["w05"].memory_bytes == 2 and usage["w00"].memory_bytes == 3


def test_the_longest_unmeasured_come_first_and_gone_workloads_are_forgotten() -> None:
    sampler = UsageSampler(budget=2)
    held = ["a", "b", "c"]
    first = sampler.pick(held)
    sampler.update(held, first, _measure(first, 1))
    assert sampler.pick(held)[0] == "c"  # never measured: first
    usage = sampler.update(["a", "c"], ["c"], _measure(["c"], 2))
    assert sorted(usage) == ["a", "c"]  # b is no longer held
    new = sampler.pick(["a", "c", "d"])
    assert new[0] == "d"


def test_a_workload_the_runtime_could_not_measure_is_not_reported_stale() -> None:
    sampler = UsageSampler(budget=5)
    sampler.update(["a"], ["a"], _measure(["a"], 7))
    assert sampler.update(["a"], ["a"], {}) == {}
