"""The systemd units of manifests/systemd/: each runs a console entry point of
the project with flags its service accepts, systemd-analyze finds nothing to
complain about, the agent's workloads outlive the agent (KillMode=process),
and — started from their own ExecStart lines and ank.env, with only the
paths changed — they make a working system on loopback."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zenoh

from schemas import Manifest, Workload, WorkloadState
from services.bus import Bus, load_config
from tests.helpers import ROOT, Collector, child_env, free_port, stop_process, wait_for, wait_port

UNITS_DIR = ROOT / "manifests" / "systemd"
INSTALLED_BIN = "/opt/ank-zenoh/bin/"
INSTANCE = "car1"  # the instance name for ank-agent@.service
UNITS = {
    "ank-router.service": "ank-router",
    "ank-planner.service": "ank-planner",
    "ank-agent@.service": "ank-agent",
    "ank-health-watcher.service": "ank-health-watcher",
    "ank-scheduler.service": "ank-scheduler",
}
ENTRY_POINTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """section -> [(key, value)] in order. Not configparser: systemd repeats
    keys (After=, EnvironmentFile=) and each occurrence counts."""
    unit: Unit = {}
    section = ""
    text = path.read_text().replace("\\\n", " ")  # continuation lines
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"{path.name}:{number}: not a key=value line in a section: {raw!r}"
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


def parse_env_file(path: Path, *, commented: bool = False) -> dict[str, list[str]]:
    """KEY -> values from a systemd EnvironmentFile. With `commented`, also the
    commented-out `#KEY=value` examples (they are documentation to copy)."""
    env: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if commented and re.match(r"#[A-Z_]+=", line):
            line = line[1:]
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {raw!r}"
        env.setdefault(key, []).append(value)
    return env


def expand(command: str, env: dict[str, str], instance: str = INSTANCE) -> list[str]:
    """An ExecStart line as systemd runs it: `${X}` inside a word, `$X` as a
    whole word split on whitespace, `%i` the instance."""
    argv: list[str] = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv += env.get(whole.group(1), "").split()
            continue
        word = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)
        argv.append(word.replace("%i", instance).replace("%%", "%"))
    return argv


def exec_start(unit_name: str) -> str:
    return one(parse_unit(UNITS_DIR / unit_name), "Service", "ExecStart")


@functools.cache
def help_text(script: str) -> str:
    """`--help` of a console entry point, run from its module:function."""
    module, _, function = ENTRY_POINTS[script].partition(":")
    code = f"import sys; sys.argv = [{script!r}, '--help']; from {module} import {function}; sys.exit({function}())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{script} --help failed: {result.stderr}"
    return result.stdout


def option_names(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("-") and not re.fullmatch(r"-[0-9.]+", a)]


# -- static checks ---------------------------------------------------------------------------


def test_every_unit_runs_a_console_entry_point_of_the_project() -> None:
    assert sorted(p.name for p in UNITS_DIR.glob("*.service")) == sorted(UNITS)
    for unit_name, script in UNITS.items():
        program = shlex.split(exec_start(unit_name))[0]
        assert program == INSTALLED_BIN + script, f"{unit_name}: ExecStart runs {program}"
        assert script in ENTRY_POINTS, f"{unit_name}: {script} is not in pyproject's [project.scripts]"


@pytest.mark.parametrize("unit_name", sorted(UNITS))
def test_every_flag_in_exec_start_and_in_ank_env_is_accepted_by_the_service(unit_name: str) -> None:
    script = UNITS[unit_name]
    accepted = help_text(script)
    env_values = parse_env_file(UNITS_DIR / "ank.env", commented=True)
    command = exec_start(unit_name)
    # Every value (and every commented example) of the variables the line uses.
    variants: list[dict[str, str]] = [{k: v[-1] for k, v in env_values.items()}]
    for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", command):
        variants += [{**variants[0], name: value} for value in env_values.get(name, [])]
    checked = set()
    for env in variants:
        for option in option_names(expand(command, env)):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", accepted), (
                f"{unit_name}: {script} does not accept {option} (see `{script} --help`)"
            )
            checked.add(option)
    assert "--zenoh-config" in checked


def test_every_variable_an_exec_start_uses_is_set_in_ank_env() -> None:
    env = parse_env_file(UNITS_DIR / "ank.env")
    for unit_name in UNITS:
        for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", exec_start(unit_name)):
            assert name in env, f"{unit_name} uses ${name}, which ank.env does not set"


def test_units_read_ank_env_restart_on_failure_and_start_after_the_router() -> None:
    for unit_name in UNITS:
        unit = parse_unit(UNITS_DIR / unit_name)
        assert values(unit, "Service", "EnvironmentFile")[0] == "/etc/ank-zenoh/ank.env", unit_name
        assert one(unit, "Service", "Restart") == "on-failure", unit_name
        assert one(unit, "Install", "WantedBy") == "multi-user.target", unit_name
        if unit_name == "ank-router.service":
            continue
        after = " ".join(values(unit, "Unit", "After")).split()
        assert "ank-router.service" in after, f"{unit_name} is not ordered after the router"
        wants = " ".join(values(unit, "Unit", "Wants")).split()
        # The agent also runs on nodes whose router is remote: ordered, not pulled in.
        assert ("ank-router.service" in wants) == (unit_name != "ank-agent@.service"), unit_name


def test_stopping_the_agent_unit_stops_only_the_agent_not_its_workloads() -> None:
    unit = parse_unit(UNITS_DIR / "ank-agent@.service")
    assert one(unit, "Service", "KillMode") == "process"
    assert "--name %i" in one(unit, "Service", "ExecStart")
    for unit_name in UNITS:
        if unit_name != "ank-agent@.service":
            assert not values(parse_unit(UNITS_DIR / unit_name), "Service", "KillMode"), unit_name


def test_shipped_zenoh_configurations_are_read_by_zenoh_and_the_bus() -> None:
    zenoh.Config.from_file(str(UNITS_DIR / "router.json5"))
    conf = load_config(UNITS_DIR / "zenoh.json5", server="192.0.2.1:7447")
    assert "tcp/192.0.2.1:7447" in conf.get_json("connect/endpoints")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_to_complain_about(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    for script in UNITS.values():
        if not (bin_dir / script).exists():
            pytest.skip(f"{script} is not installed in {bin_dir} (pip install -e .)")
    paths = []
    for unit_name in UNITS:
        # verify checks that the program exists: point it at this venv's copy.
        text = (UNITS_DIR / unit_name).read_text().replace(INSTALLED_BIN, f"{bin_dir}/")
        name = unit_name.replace("@.", f"@{INSTANCE}.")
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line]
    complaints += [line for line in result.stderr.splitlines() if any(u.split("@")[0] in line for u in UNITS)]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# -- the units really start a system ------------------------------------------------------------


class UnitRunner:
    """Runs units' ExecStart lines as systemd would (ank.env, %i), with the
    paths moved to this checkout, the venv and a temporary directory."""

    def __init__(self, tmp_path: Path) -> None:
        port = free_port()
        self.endpoint = f"tcp/127.0.0.1:{port}"
        self.port = port
        self.env = {k: v[-1] for k, v in parse_env_file(UNITS_DIR / "ank.env").items()}
        self.env.update(
            ANK_SERVER=self.endpoint,
            ANK_ROUTER_LISTEN=self.endpoint,
            ANK_ROUTER_CONFIG=str(UNITS_DIR / "router.json5"),
            ANK_ZENOH_CONFIG=str(UNITS_DIR / "zenoh.json5"),
            ANK_PLANNER_STATE_DIR=str(tmp_path / "planner"),
            ANK_AGENT_RUN_DIR=str(tmp_path / "agents"),
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, unit_name: str, instance: str = INSTANCE) -> subprocess.Popen[bytes]:
        argv = expand(exec_start(unit_name), self.env, instance)
        script = Path(argv[0]).name
        module = ENTRY_POINTS[script].partition(":")[0]
        # The same entry point as the installed script, without needing the install.
        code = f"import sys; sys.argv[0] = {script!r}; from {module} import main; sys.exit(main())"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv[1:]], cwd=ROOT, env=child_env(self.endpoint, **self.env)
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


@pytest.fixture
def units(tmp_path: Path) -> Iterator[UnitRunner]:
    runner = UnitRunner(tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()


def stops_cleanly_on_sigterm(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


@pytest.mark.slow
def test_units_started_from_their_exec_start_lines_run_a_workload_end_to_end(units: UnitRunner) -> None:
    router = units.start("ank-router.service")
    wait_port(units.port, timeout=15)
    bus = Bus("test-units", server=units.endpoint)
    try:
        # Scheduler and health-watcher, each alone: at start each asks for the
        # desired state (ank/cmd/state); a stand-in answers nothing. Each must
        # then stop with exit 0 on SIGTERM (not a failure to systemd).
        asked = Collector()
        spy = bus.session.declare_queryable("ank/cmd/state", lambda q: asked("ank/cmd/state", q.selector))
        for unit_name in ("ank-scheduler.service", "ank-health-watcher.service"):
            before = len(asked.items)
            proc = units.start(unit_name)
            asked.wait(lambda items: len(items) > before, timeout=20, what=f"{unit_name} to query ank/cmd/state")  # noqa: B023
            assert proc.poll() is None, f"{unit_name} exited"
            assert stops_cleanly_on_sigterm(proc) == 0, unit_name
        spy.undeclare()

        planner = units.start("ank-planner.service")
        agent = units.start("ank-agent@.service", instance="ex-unit-node")
        wait_for(lambda: bus.get("ank/cmd/state", timeout=0.5), timeout=20, what="the planner to answer")
        wait_for(lambda: bus.alive("ank/agents/ex-unit-node", timeout=0.5), timeout=20, what="the agent's token")

        states = Collector()
        bus.subscribe("ank/state/ex-unit-node/**", WorkloadState, states)
        workload = Workload(runtime="process", runtime_config='command: "true"\n', agent="ex-unit-node")
        manifest = Manifest(api_version="v1", workloads={"ex-unit-hello": workload})
        bus.put("ank/desired", msgspec.json.encode(manifest))
        states.wait(
            lambda items: any(
                isinstance(s, WorkloadState) and str(s.execution_state) == "Succeeded(Ok)" for _k, s in items
            ),
            timeout=20,
            what="ex-unit-hello to run and succeed",
        )
        assert (Path(units.env["ANK_PLANNER_STATE_DIR"])).is_dir()
        assert (Path(units.env["ANK_AGENT_RUN_DIR"]) / "ex-unit-node").is_dir()
        for proc in (agent, planner):
            assert stops_cleanly_on_sigterm(proc) == 0
    finally:
        bus.close()
    assert stops_cleanly_on_sigterm(router) == 0
