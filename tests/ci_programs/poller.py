"""Reads its own entry every 0.3 s and counts the answers, across agent restarts."""

import sys
import time

from ankaios_sdk import Ankaios, AnkaiosException

with Ankaios() as ankaios:
    answers = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            state = ankaios.get_state(["desiredState.workloads.poller"], timeout=2)
            answers += 1
            print(f"answer {answers}: {[w.name for w in state.get_workloads()]}", flush=True)
        except (AnkaiosException, TimeoutError) as exc:
            print(f"no answer: {type(exc).__name__}", flush=True)
        time.sleep(0.3)
sys.exit(0)
