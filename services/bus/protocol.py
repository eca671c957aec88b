"""What a service shell needs of a bus: `BusLike`, the seam between a shell
and Zenoh. `services.bus.Bus` (a Zenoh session) satisfies it, and so does
`services.bus.memory.MemoryBus` (no router, for testing a shell's wiring).

The methods and their contract are those of `services.bus.Bus`: messages put
are stamped (sender, seq); what is received is decoded, checked and, when it
is malformed, stale or oversized, dropped and counted instead of reaching the
callback; callbacks run on the bus's threads and must not block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)


class Declared(Protocol):
    """A declared entity (subscriber, liveliness token) that can be withdrawn early."""

    def undeclare(self) -> None: ...


class BusLike(Protocol):
    @property
    def name(self) -> str:
        """The sender name stamped on every message put."""
        ...

    def close(self) -> None: ...

    # -- publishing
    def stamp(self, msg: T) -> T: ...
    def encode(self, msg: msgspec.Struct) -> bytes: ...
    def put(self, key: str, msg: msgspec.Struct | bytes, *, reliable: bool = True) -> None: ...
    def event(self, kind: str, message: str, *, subject: str = "", severity: str = "info") -> None: ...

    # -- receiving
    def decode(self, key: str, payload: bytes, schema: type[T]) -> T | None: ...
    def drop(self, key: str, reason: str) -> None: ...
    def subscribe(self, key_expr: str, schema: type[T], callback: Callable[[str, T], None]) -> Declared: ...
    def subscribe_raw(self, key_expr: str, callback: Callable[[str, bytes], None]) -> Declared: ...

    # -- queries
    def queryable(
        self,
        key_expr: str,
        handler: Callable[[str, bytes | None, str], list[tuple[str, bytes]]],
        *,
        exact: bool = False,
        defer: Callable[[Callable[[], None]], bool] | None = None,
    ) -> None: ...
    def get(self, selector: str, payload: bytes | None = None, timeout: float = 2.0) -> list[tuple[str, bytes]]: ...
    def get_decoded(
        self, selector: str, schema: type[T], payload: bytes | None = None, timeout: float = 2.0
    ) -> list[T]: ...

    # -- liveliness
    def liveliness_token(self, key: str) -> Declared: ...
    def watch_liveliness(
        self, key_expr: str, callback: Callable[[str, bool], None], *, history: bool = True
    ) -> None: ...
    def alive(self, key_expr: str, timeout: float = 1.0) -> list[str]: ...
