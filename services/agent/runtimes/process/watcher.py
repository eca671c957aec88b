"""Exit notices for processes, without polling: one thread waits in a
selector on a pidfd per process (a pidfd becomes readable when its process
exits, whether or not it is our child) and also carries the SIGKILL deadlines
of processes being stopped (the selector's timeout is the next deadline).
"""

from __future__ import annotations

import heapq
import logging
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("ank.agent.process")

OnExit = Callable[[], None]


def kill_group(pgid: int, sig: signal.Signals) -> bool:
    """Signals a whole process group; False if it is already gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        log.warning("cannot signal process group %d: %s", pgid, exc)
        return False


class PidfdWatcher:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        # (deadline, seq, pgid): SIGKILL the group at deadline (monotonic)
        self._kills: list[tuple[float, int, int]] = []
        self._seq = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pidfd-watcher", daemon=True)
        self._thread.start()

    def watch(self, pidfd: int, on_exit: OnExit) -> None:
        """on_exit() runs on the watcher thread once the process has exited."""
        with self._lock:
            self._selector.register(pidfd, selectors.EVENT_READ, on_exit)
        self._wake()

    def forget(self, pidfd: int) -> None:
        with self._lock:
            try:
                self._selector.unregister(pidfd)
            except (KeyError, ValueError):
                pass

    def kill_after(self, pgid: int, delay_s: float, monotonic_now: float) -> None:
        with self._lock:
            self._seq += 1
            heapq.heappush(self._kills, (monotonic_now + delay_s, self._seq, pgid))
        self._wake()

    def cancel_kill(self, pgid: int) -> None:
        with self._lock:
            self._kills = [k for k in self._kills if k[2] != pgid]
            heapq.heapify(self._kills)

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(timeout=2)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the watcher wakes anyway

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                now = time.monotonic()
                due = []
                while self._kills and self._kills[0][0] <= now:
                    due.append(heapq.heappop(self._kills)[2])
                timeout = self._kills[0][0] - now if self._kills else None
            for pgid in due:
                if kill_group(pgid, signal.SIGKILL):
                    log.info("process group %d did not stop within its grace: SIGKILL", pgid)
            if due:
                continue
            try:
                ready = self._selector.select(timeout)
            except (OSError, ValueError):
                if self._closed:
                    return
                raise
            for key, _ in ready:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self.forget(key.fd)
                try:
                    key.data()
                except Exception:
                    log.exception("error handling a process exit")
