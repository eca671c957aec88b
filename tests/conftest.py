from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from services.bus import Bus
from tests.helpers import running_router


@pytest.fixture(scope="session")
def router() -> Iterator[str]:
    """The endpoint of a real Zenoh router on a free loopback port, shared by a session."""
    with running_router() as (endpoint, _proc):
        yield endpoint


@pytest.fixture
def make_bus(router: str) -> Iterator[Callable[[str], Bus]]:
    """Opens client Bus sessions to the session router; all closed at the end."""
    opened: list[Bus] = []

    def factory(name: str) -> Bus:
        bus = Bus(name, server=router)
        opened.append(bus)
        return bus

    yield factory
    for bus in opened:
        bus.close()
