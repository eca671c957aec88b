"""Allowed only Read on desiredState.workloads.x: reads x, is refused the rest."""

import os
import sys

from ankaios_sdk import Ankaios, AnkaiosResponseError, WorkloadBuilder


def attempt(label: str, action) -> None:  # type: ignore[no-untyped-def]
    try:
        value = action()
    except AnkaiosResponseError as exc:
        print(f"{label}: refused: {exc}", flush=True)
        return
    print(f"{label}: ok: {value}", flush=True)


def main() -> int:
    with Ankaios() as ankaios:
        attempt("read x", lambda: [w.name for w in ankaios.get_state(["desiredState.workloads.x"]).get_workloads()])
        attempt("read y", lambda: [w.name for w in ankaios.get_state(["desiredState.workloads.y"]).get_workloads()])
        attempt("read all", lambda: [w.name for w in ankaios.get_state().get_workloads()])
        workload = (
            WorkloadBuilder()
            .workload_name("x")
            .agent_name(os.environ["ANK_AGENT"])
            .runtime("process")
            .runtime_config('command: sleep\nargs: ["1"]\n')
            .build()
        )
        attempt("write x", lambda: ankaios.apply_workload(workload))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
