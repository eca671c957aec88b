"""Subscribes to events on the desired workloads and prints what changes."""

import sys
from queue import Empty

from ankaios_sdk import Ankaios


def main() -> int:
    with Ankaios() as ankaios:
        queue = ankaios.register_event(["desiredState.workloads"])
        initial = queue.get(timeout=10)
        print("subscribed:", ",".join(sorted(w.name for w in initial.complete_state.get_workloads())), flush=True)
        while True:
            try:
                event = queue.get(timeout=60)
            except Empty:
                print("no event within 60 s", flush=True)
                return 1
            print(
                f"event: added={event.added_fields} updated={event.updated_fields} removed={event.removed_fields}",
                flush=True,
            )
            if any(field.endswith(".announced") for field in event.added_fields):
                break
        ankaios.unregister_event(queue)
        print("unsubscribed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
