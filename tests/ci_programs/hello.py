"""Reads the state, then applies a workload (as Ankaios's python_sdk_hello does)."""

import os
import sys

from ankaios_sdk import Ankaios, WorkloadBuilder


def main() -> int:
    with Ankaios() as ankaios:
        state = ankaios.get_state(["desiredState.workloads"])
        print("workloads:", ",".join(sorted(w.name for w in state.get_workloads())), flush=True)
        workload = (
            WorkloadBuilder()
            .workload_name("dynamic_sleeper")
            .agent_name(os.environ["ANK_AGENT"])
            .runtime("process")
            .restart_policy("NEVER")
            .runtime_config('command: sleep\nargs: ["300"]\n')
            .build()
        )
        result = ankaios.apply_workload(workload)
        print("added:", ",".join(str(w) for w in result.added_workloads), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
