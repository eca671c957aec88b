"""Which workloads the agent measures for one status: at most `budget` per
status period, round-robin, the others reported with their last measurement.
Measuring every workload every period made the agent's cost per period grow
with the workloads it holds (a /proc read or two per process, every 2 s): at
100 workloads per agent, most of the CPU of a 10,000-workload fleet."""

from __future__ import annotations

from schemas.messages import WorkloadUsage

USAGE_PER_STATUS = 32


class UsageSampler:
    def __init__(self, budget: int = USAGE_PER_STATUS) -> None:
        self.budget = budget
        self._last: dict[str, WorkloadUsage] = {}
        self._measured_at: dict[str, int] = {}  # workload -> the round it was last measured in
        self._round = 0

    def pick(self, held: list[str]) -> list[str]:
        """The workloads to measure now: never measured first, then those
        measured longest ago (ties by name), at most `budget`."""
        ordered = sorted(held, key=lambda name: (self._measured_at.get(name, -1), name))
        return ordered[: self.budget]

    def update(
        self, held: list[str], picked: list[str], measured: dict[str, WorkloadUsage]
    ) -> dict[str, WorkloadUsage]:
        """Records this round's measurements; the usage to report for `held`
        (a picked workload the runtime could not measure is left out)."""
        self._round += 1
        keep = set(held)
        for name in picked:
            self._measured_at[name] = self._round
            if name in measured:
                self._last[name] = measured[name]
            else:
                self._last.pop(name, None)
        for gone in [n for n in self._measured_at if n not in keep]:
            self._measured_at.pop(gone, None)
            self._last.pop(gone, None)
        return {name: self._last[name] for name in held if name in self._last}
