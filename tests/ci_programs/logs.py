"""Follows another workload's output through the Control Interface."""

import os
import sys
from queue import Empty

from ankaios_sdk import Ankaios, AnkaiosResponseError, LogEntry, WorkloadInstanceName


def main() -> int:
    target = sys.argv[1]
    with Ankaios() as ankaios:
        name = WorkloadInstanceName(os.environ["ANK_AGENT"], target, "")
        try:
            campaign = ankaios.request_logs([name], follow=True)
        except AnkaiosResponseError as exc:
            print(f"logs refused: {exc}", flush=True)
            return 0
        seen = 0
        while seen < 3:
            try:
                entry = campaign.queue.get(timeout=20)
            except Empty:
                print("no log entry within 20 s", flush=True)
                return 1
            if isinstance(entry, LogEntry):
                print(f"log of {entry.workload_instance_name.workload_name}: {entry.message}", flush=True)
                seen += 1
        ankaios.stop_receiving_logs(campaign)
        print("logs cancelled", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
