"""The fleet study: does MALE (most energy first) keep a robot fleet alive
longer than round-robin or random placement, for the same work?

`python -m services.scheduler.sim` (the CLI's `ank sim fleet`): N robots with
different batteries drain with their idle draw plus the power of the
workloads they run; workloads arrive (Poisson), run for a random time and
finish. Every arrival is placed by the SAME scheduling core as the real
scheduler (services.scheduler.framework.schedule, with its filters, reserve and
in-flight projection), once per policy, on identical arrivals (same seed).

Reported per policy (mean over seeds): time to the first depleted robot,
work served (workload-hours completed or run) up to the earliest first
depletion of all policies (the window where every policy has its whole
fleet, so the work offered is the same), placements refused, and the energy
spread across robots (standard deviation of their energy, time-averaged up
to that window). PNG plots go to --out.

Discrete time (step --step-s); deterministic for a seed; no clock, no bus.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.scheduler.framework import CycleContext, NodeView, Placement, PlacementRequest, schedule
from services.scheduler.sim_options import add_arguments

POLICIES = ("MALE", "round-robin", "random")


@dataclass(frozen=True)
class FleetSpec:
    robots: int = 8
    capacity_min_wh: float = 40.0
    capacity_max_wh: float = 120.0
    idle_w: float = 3.0
    arrivals_per_hour: float = 60.0
    duration_mean_s: float = 720.0
    power_min_w: float = 4.0
    power_max_w: float = 12.0
    reserve_wh: float = 2.0
    in_flight_s: float = 30.0
    hours: float = 12.0
    step_s: float = 10.0


@dataclass
class Job:
    name: str
    arrive_s: float
    duration_s: float
    power_w: float


@dataclass
class Robot:
    name: str
    capacity_wh: float
    energy_wh: float
    alive: bool = True
    running: dict[str, tuple[Job, float]] = field(default_factory=dict)  # name -> (job, ends at)


@dataclass
class RunResult:
    policy: str
    first_depletion_s: float | None  # None: nobody depleted within the horizon
    refused_s: list[float]  # when a placement found no robot
    lost: int  # jobs cut off by a depleting robot
    times_s: list[float]
    energy: dict[str, list[float]]  # robot -> energy per sample
    served_s_by_time: list[float]  # cumulative workload-seconds served per sample
    spread_by_time: list[float]  # std dev of robot energy per sample


def make_fleet(spec: FleetSpec, rng: random.Random) -> list[Robot]:
    robots = []
    for i in range(spec.robots):
        # spread the capacities evenly, shuffled: different batteries, same total per seed
        capacity = spec.capacity_min_wh + (spec.capacity_max_wh - spec.capacity_min_wh) * i / max(1, spec.robots - 1)
        robots.append(Robot(name=f"robot-{i + 1:02d}", capacity_wh=capacity, energy_wh=capacity))
    order = list(range(spec.robots))
    rng.shuffle(order)
    return [robots[i] for i in order]


def make_jobs(spec: FleetSpec, rng: random.Random) -> list[Job]:
    jobs: list[Job] = []
    t = 0.0
    horizon = spec.hours * 3600
    while True:
        t += rng.expovariate(spec.arrivals_per_hour / 3600)
        if t >= horizon:
            return jobs
        duration = rng.expovariate(1 / spec.duration_mean_s)
        power = rng.uniform(spec.power_min_w, spec.power_max_w)
        jobs.append(Job(f"job-{len(jobs):05d}", t, duration, power))


def run_policy(policy: str, spec: FleetSpec, seed: int) -> RunResult:
    rng = random.Random(seed)
    robots = make_fleet(spec, rng)
    jobs = make_jobs(spec, rng)
    ring = tuple(sorted(r.name for r in robots))
    by_name = {r.name: r for r in robots}
    in_flight: list[tuple[float, str, float]] = []  # (until_s, robot, cost_wh)
    placements = lost = 0
    served_s = 0.0
    first_depletion: float | None = None
    result = RunResult(policy, None, [], 0, [], {r.name: [] for r in robots}, [], [])
    next_job = 0
    steps = int(spec.hours * 3600 / spec.step_s)
    for step in range(steps + 1):
        now = step * spec.step_s
        # finish jobs, drain batteries
        for robot in robots:
            if not robot.alive:
                continue
            load_w = 0.0
            for name, (job, ends) in list(robot.running.items()):
                run = min(spec.step_s, max(0.0, ends - (now - spec.step_s)))
                load_w += job.power_w * run / spec.step_s
                served_s += run
                if ends <= now:
                    del robot.running[name]
            robot.energy_wh -= (spec.idle_w + load_w) * spec.step_s / 3600
            if robot.energy_wh <= 0:
                robot.energy_wh, robot.alive = 0.0, False
                lost += len(robot.running)
                robot.running.clear()
                if first_depletion is None:
                    first_depletion = now
        in_flight = [f for f in in_flight if f[0] > now]
        # place the arrivals of this step
        while next_job < len(jobs) and jobs[next_job].arrive_s <= now:
            job = jobs[next_job]
            next_job += 1
            reserved: dict[str, float] = {}
            for _, name, cost in in_flight:
                reserved[name] = reserved.get(name, 0.0) + cost
            views = [
                NodeView(
                    name=r.name,
                    alive=r.alive,
                    arch="arm64",
                    energy_wh=r.energy_wh,
                    capacity_wh=r.capacity_wh,
                    energy_time_ms=int(now * 1000),
                    reserved_wh=reserved.get(r.name, 0.0),
                )
                for r in robots
            ]
            cost_wh = job.power_w * job.duration_s / 3600
            request = PlacementRequest(
                workload=job.name, policy=policy, min_energy_wh=spec.reserve_wh, energy_cost_wh=cost_wh
            )
            ctx = CycleContext(now_ms=int(now * 1000), cursor=placements, seed=seed, ring=ring)
            decision = schedule(request, views, ctx)
            if isinstance(decision, Placement):
                placements += 1
                by_name[decision.node].running[job.name] = (job, now + job.duration_s)
                in_flight.append((now + spec.in_flight_s, decision.node, cost_wh))
            else:
                result.refused_s.append(now)
        if step % max(1, int(60 / spec.step_s)) == 0:  # sample once a minute
            result.times_s.append(now)
            for r in robots:
                result.energy[r.name].append(r.energy_wh)
            result.served_s_by_time.append(served_s)
            alive = [r.energy_wh for r in robots if r.alive]
            result.spread_by_time.append(statistics.pstdev(alive) if len(alive) > 1 else 0.0)
    result.first_depletion_s, result.lost = first_depletion, lost
    return result


@dataclass
class Summary:
    policy: str
    first_depletion_h: float  # mean over seeds (horizon when nobody depleted)
    served_h: float  # workload-hours served within the common window, mean over seeds
    served_own_h: float  # workload-hours served until its own first depletion
    refused: float  # placements refused within the common window
    spread_wh: float


def _at(result: RunResult, series: list[float], t: float) -> float:
    index = max(0, min(len(series) - 1, int(t // 60)))
    return series[index]


def study(spec: FleetSpec, seeds: Sequence[int]) -> tuple[list[Summary], dict[int, dict[str, RunResult]]]:
    runs: dict[int, dict[str, RunResult]] = {}
    for seed in seeds:
        runs[seed] = {p: run_policy(p, spec, seed) for p in POLICIES}
    horizon = spec.hours * 3600
    summaries = []
    for policy in POLICIES:
        ttfd, served, served_own, refused, spread = [], [], [], [], []
        for seed in seeds:
            per_seed = runs[seed]
            window = min(r.first_depletion_s if r.first_depletion_s is not None else horizon for r in per_seed.values())
            run = per_seed[policy]
            ttfd.append((run.first_depletion_s if run.first_depletion_s is not None else horizon) / 3600)
            served.append(_at(run, run.served_s_by_time, window) / 3600)
            own = run.first_depletion_s if run.first_depletion_s is not None else horizon
            served_own.append(_at(run, run.served_s_by_time, own) / 3600)
            refused.append(sum(1 for t in run.refused_s if t <= window))
            upto = max(1, int(window // 60))
            spread.append(statistics.fmean(run.spread_by_time[:upto]))
        summaries.append(
            Summary(
                policy,
                statistics.fmean(ttfd),
                statistics.fmean(served),
                statistics.fmean(served_own),
                statistics.fmean(refused),
                statistics.fmean(spread),
            )
        )
    return summaries, runs


def plot(spec: FleetSpec, summaries: list[Summary], runs: dict[str, RunResult], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(POLICIES), figsize=(15, 4.5), sharey=True)
    for ax, policy in zip(axes, POLICIES, strict=True):
        run = runs[policy]
        hours = [t / 3600 for t in run.times_s]
        for name, series in sorted(run.energy.items()):
            ax.plot(hours, series, linewidth=1.2, label=name)
        if run.first_depletion_s is not None:
            ax.axvline(run.first_depletion_s / 3600, color="red", linestyle="--", linewidth=1)
            ax.text(run.first_depletion_s / 3600, 2, " first depleted", color="red", fontsize=8)
        ax.set_title(policy)
        ax.set_xlabel("time (h)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("battery energy (Wh)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{spec.robots} robots, {spec.capacity_min_wh:.0f}-{spec.capacity_max_wh:.0f} Wh, same arrivals")
    fig.tight_layout()
    energy_png = out / "fleet_energy.png"
    fig.savefig(energy_png, dpi=90)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [s.policy for s in summaries]
    left.bar(names, [s.first_depletion_h for s in summaries], color=["tab:green", "tab:blue", "tab:gray"])
    left.set_ylabel("time to first depleted robot (h)")
    left.set_title("fleet lifetime (mean over seeds)")
    right.bar(names, [s.spread_wh for s in summaries], color=["tab:green", "tab:blue", "tab:gray"])
    right.set_ylabel("energy spread across robots (Wh, std dev)")
    right.set_title("balance")
    fig.tight_layout()
    summary_png = out / "fleet_summary.png"
    fig.savefig(summary_png, dpi=90)
    plt.close(fig)
    return [energy_png, summary_png]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ank sim fleet", description="MALE vs round-robin vs random on a robot fleet")
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Runs the study for parsed options."""
    if args.robots < 2 or args.seeds < 1 or args.hours <= 0 or args.arrivals_per_hour <= 0:
        print("ank sim fleet: --robots >= 2, --seeds >= 1, --hours > 0 and --arrivals-per-hour > 0", file=sys.stderr)
        return 2
    spec = FleetSpec(robots=args.robots, hours=args.hours, arrivals_per_hour=args.arrivals_per_hour)
    seeds = list(range(args.seed, args.seed + args.seeds))
    summaries, runs = study(spec, seeds)
    male = next(s for s in summaries if s.policy == "MALE")
    rr = next(s for s in summaries if s.policy == "round-robin")
    print(
        f"fleet: {spec.robots} robots {spec.capacity_min_wh:.0f}-{spec.capacity_max_wh:.0f} Wh, "
        f"{spec.arrivals_per_hour:.0f} workloads/h, {spec.hours:g} h, seeds {seeds[0]}..{seeds[-1]}"
    )
    columns = ("first depleted (h)", "work served* (wl-h)", "served to own (wl-h)", "refused*", "spread* (Wh)")
    print(f"{'policy':<12}" + "".join(f"{c:>22}" for c in columns))
    for s in summaries:
        values = (s.first_depletion_h, s.served_h, s.served_own_h, s.refused, s.spread_wh)
        print(f"{s.policy:<12}" + "".join(f"{v:>22.2f}" for v in values))
    gain = (male.first_depletion_h / rr.first_depletion_h - 1) * 100 if rr.first_depletion_h else math.inf
    print(
        f"MALE vs round-robin: time to first depletion {gain:+.0f} % (target >= +25 %), "
        f"work served {male.served_h:.2f} vs {rr.served_h:.2f} workload-hours"
    )
    print("* within the common window (up to the earliest first depletion of any policy)")
    if not args.no_plots:
        for path in plot(spec, summaries, runs[seeds[0]], args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
