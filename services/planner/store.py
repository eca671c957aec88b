"""The planner's persistence: its `Durable` state in one JSON file, written
atomically (temp file, fsync, rename, fsync of the directory) so that a crash
at any instant leaves either the old or the new state, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from services.planner.core import Durable

STATE_FILE = "desired.json"


class StoreError(Exception):
    """The state directory or file cannot be used; the message names it."""


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load(state_dir: str | Path) -> Durable | None:
    """The persisted state, or None if there is none yet."""
    path = state_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the planner state {path}: {exc}") from exc
    try:
        durable = msgspec.json.decode(data, type=Durable)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise StoreError(f"the planner state {path} is corrupt ({exc}); move it away to start empty") from exc
    if durable.format != 1:
        raise StoreError(f"the planner state {path} has unknown format {durable.format}")
    return durable


def save(state_dir: str | Path, durable: Durable) -> None:
    """Replaces the persisted state atomically and durably."""
    directory = Path(state_dir)
    path = state_path(directory)
    temp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as out:
            out.write(msgspec.json.encode(durable))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StoreError(f"cannot write the planner state {path}: {exc}") from exc


def check_writable(state_dir: str | Path) -> None:
    """Fails early (at start) if the state directory cannot hold the state."""
    directory = Path(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the state directory {directory}: {exc}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"the state directory {directory} is not writable")
