"""The listener registry shared by podman's event stream and exit-file
watcher (services/agent/runtimes/podman/cli.py `Listeners`)."""

from __future__ import annotations

import pytest

from services.agent.runtimes.podman.cli import Listeners


def test_a_failing_listener_is_logged_and_the_others_are_still_called(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str, int]] = []
    listeners: Listeners[[str, int]] = Listeners("exit file")

    def failing(name: str, code: int) -> None:
        raise RuntimeError("boom")

    listeners.add(failing)
    listeners.add(lambda name, code: calls.append(("second", name, code)))
    listeners.call("abc", 3)
    assert calls == [("second", "abc", 3)]
    assert "exit file listener failed" in caplog.text


def test_removing_tells_how_many_are_left_and_a_stranger_changes_nothing() -> None:
    listeners: Listeners[[str, int]] = Listeners("exit file")

    def first(name: str, code: int) -> None: ...
    def second(name: str, code: int) -> None: ...

    listeners.add(first)
    listeners.add(second)
    assert listeners.remove(first) == 1
    assert listeners.remove(first) == 1  # not subscribed (any more)
    assert listeners.remove(second) == 0
