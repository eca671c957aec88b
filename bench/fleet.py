"""Several agents in one process, for the P10 benchmark (100 agents on a
2-core machine): each agent is a whole `AgentShell` with its own Zenoh
session, event loop and process runtime, exactly as `ank-agent` runs it;
only the Python interpreter is shared. SIGTERM stops every agent with its
workloads.

    python -m bench.fleet --server tcp/127.0.0.1:7447 --run-base DIR NAME...
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ank_common.logsetup import setup_logging
from services.agent.runtimes import load_runtimes
from services.agent.shell import AgentOptions, AgentShell
from services.bus import Bus
from services.bus.loop import EventLoop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--server", required=True)
    parser.add_argument("--run-base", required=True, help="each agent's run dir is RUN_BASE/NAME")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    setup_logging("bench-fleet", 0, quiet=True)
    shells: list[tuple[AgentShell, EventLoop, Bus, threading.Thread]] = []
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        for name in args.names:
            run_dir = str(Path(args.run_base) / name)
            options = AgentOptions(name=name, run_dir=run_dir, stop_workloads_on_exit=True, stop_grace_s=2.0)
            bus = Bus(f"agent/{name}", server=args.server)
            loop = EventLoop()
            shell = AgentShell(options, bus, loop, load_runtimes(run_dir, ("process",)))
            shell.start()
            thread = threading.Thread(target=loop.run, name=f"loop-{name}", daemon=True)
            thread.start()
            shells.append((shell, loop, bus, thread))
        print(f"fleet up: {len(shells)} agents", flush=True)
        done.wait()
    finally:
        for _shell, loop, _bus, thread in shells:
            loop.stop()
            thread.join(10)
        for shell, _loop, bus, _thread in shells:
            try:
                shell.stop_all()
            finally:
                shell.close()
                bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
