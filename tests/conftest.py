from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from services.bus import Bus
from tests.helpers import running_router


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The empty per-workload cgroups of agents the tests killed (their
    processes stopped by the tests' own clean-up)."""
    from services.agent.runtimes.process.containment import Containment, sweep_all

    sweep_all(Containment.detect().base)


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
