"""The planner's persistence: its `Durable` state as a snapshot file plus an
append-only journal of changes, so that a small change to a large desired
state writes a small record, not the whole state.

- `desired.json`: a snapshot, written atomically (temp file, fsync, rename,
  fsync of the directory): a crash at any instant leaves the old or the new
  one, never a torn one. It records how many journal records it holds
  (`journal`).
- `journal.jsonl`: one JSON line per change after the snapshot, numbered
  (`n`): the entries of the workload, config, instance, binding and release
  maps that were set or deleted, and the other fields that changed. A line
  is appended and fsync'd before the change is acknowledged; a torn last
  line (a crash while appending, never acknowledged) is ignored at load.
- Compaction: once the journal outgrows the snapshot (or `COMPACT_BYTES`),
  the next change writes a new snapshot and removes the journal. Records
  the snapshot already holds (a crash between the two) are skipped at load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from services.planner.core import Durable

STATE_FILE = "desired.json"
JOURNAL_FILE = "journal.jsonl"
COMPACT_BYTES = 8 * 1024 * 1024  # the journal may grow to max(this, the snapshot's size)
log = logging.getLogger("ank.planner.store")

# The maps of `Durable` journalled entry by entry: (field, subfield) in the
# JSON (camel) names; subfield "" is the field itself.
_MAPS = (
    ("desired", "workloads"),
    ("desired", "configs"),
    ("rendered", "workloads"),
    ("rendered", "configs"),
    ("instances", ""),
    ("bindings", ""),
    ("released", ""),
)
_WHOLE = ("retiring", "agentsSeen", "generation", "epoch", "format")


class StoreError(Exception):
    """The state directory or file cannot be used; the message names it."""


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STATE_FILE


def journal_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / JOURNAL_FILE


def load(state_dir: str | Path) -> Durable | None:
    """The persisted state (the snapshot with its journal replayed), or None
    if there is none yet."""
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
    records = _read_journal(journal_path(state_dir), durable.journal)
    if not records:
        return durable
    tree = msgspec.to_builtins(durable)
    for record in records:
        _replay(tree, record)
    try:
        return msgspec.convert(tree, type=Durable)
    except (msgspec.ValidationError, ValueError) as exc:
        raise StoreError(f"the planner journal {journal_path(state_dir)} does not fit its snapshot ({exc})") from exc


def _read_journal(path: Path, after: int) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read the planner journal {path}: {exc}") from exc
    records: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            record = msgspec.json.decode(line)
            if not isinstance(record, dict) or not isinstance(record.get("n"), int):
                raise ValueError("not a journal record")
        except (msgspec.DecodeError, ValueError) as exc:
            if i >= len(lines) - 2:  # the last line: torn by a crash while appending, never acknowledged
                log.warning("ignoring the torn last record of %s", path)
                break
            raise StoreError(f"the planner journal {path} is corrupt at line {i + 1} ({exc})") from exc
        if record["n"] > after:
            if records and record["n"] != records[-1]["n"] + 1:
                raise StoreError(f"the planner journal {path} skips from record {records[-1]['n']} to {record['n']}")
            records.append(record)
    return records


def _replay(tree: dict[str, Any], record: dict[str, Any]) -> None:
    for (field, sub), entries in zip(_MAPS, record.get("set", []), strict=False):
        target = _map(tree, field, sub)
        target.update(entries)
    for (field, sub), names in zip(_MAPS, record.get("del", []), strict=False):
        target = _map(tree, field, sub)
        for name in names:
            target.pop(name, None)
    tree.update(record.get("put", {}))
    tree["journal"] = record["n"]


def _map(tree: dict[str, Any], field: str, sub: str) -> dict[str, Any]:
    node = tree.setdefault(field, {})
    if sub:
        node = node.setdefault(sub, {})
    assert isinstance(node, dict)
    return node


def _maps_of(durable: Durable) -> list[dict[str, Any]]:
    return [
        durable.desired.workloads,
        durable.desired.configs,
        durable.rendered.workloads,
        durable.rendered.configs,
        durable.instances,
        durable.bindings,
        durable.released,
    ]


def _whole_of(durable: Durable) -> list[Any]:
    return [durable.retiring, durable.agents_seen, durable.generation, durable.epoch, durable.format]


def diff(old: Durable, new: Durable) -> dict[str, Any] | None:
    """The journal record (without its number) that turns `old` into `new`;
    None if they differ in a way a record does not carry (the manifests'
    apiVersion): then a snapshot is written."""
    if old.desired.api_version != new.desired.api_version or old.rendered.api_version != new.rendered.api_version:
        return None
    sets: list[dict[str, Any]] = []
    dels: list[list[str]] = []
    for before, after in zip(_maps_of(old), _maps_of(new), strict=True):
        if before is after:
            sets.append({})
            dels.append([])
            continue
        sets.append({k: v for k, v in after.items() if k not in before or (before[k] is not v and before[k] != v)})
        dels.append([k for k in before if k not in after])
    put = {
        name: after
        for name, before, after in zip(_WHOLE, _whole_of(old), _whole_of(new), strict=True)
        if before != after
    }
    return {"set": sets, "del": dels, "put": put}


class Store:
    """Persists the planner's `Durable` state: a journal record per change,
    a snapshot now and then. `save` returns once the change is on disk."""

    def __init__(self, state_dir: str | Path, loaded: Durable | None = None, compact_bytes: int = COMPACT_BYTES):
        self.dir = Path(state_dir)
        self.compact_bytes = compact_bytes
        self.last = loaded  # the state on disk (None: no snapshot yet)
        self.snapshot_bytes = _size(state_path(self.dir)) if loaded is not None else 0
        self.journal_bytes = _size(journal_path(self.dir)) if loaded is not None else 0
        self.count = loaded.journal if loaded is not None else 0
        if self.journal_bytes:
            self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        """Cuts a torn last record (a crash while appending; never
        acknowledged) so that later records follow a whole line."""
        path = journal_path(self.dir)
        try:
            data = path.read_bytes()
            if data.endswith(b"\n"):
                return
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                os.fsync(handle.fileno())
            self.journal_bytes = data.rfind(b"\n") + 1
        except OSError as exc:
            raise StoreError(f"cannot repair the planner journal {path}: {exc}") from exc

    def save(self, durable: Durable) -> None:
        durable = msgspec.structs.replace(durable, journal=self.count)
        if durable == self.last:
            return
        record = None
        if self.last is not None and self.journal_bytes <= max(self.compact_bytes, self.snapshot_bytes):
            record = diff(self.last, durable)
        if record is None:
            self.snapshot_bytes = save(self.dir, durable)
            try:
                journal_path(self.dir).unlink(missing_ok=True)
            except OSError as exc:  # the snapshot stands; its records are skipped at load
                log.warning("cannot remove the compacted journal: %s", exc)
            self.journal_bytes = 0
        else:
            self.count += 1
            line = msgspec.json.encode({"n": self.count, **record}) + b"\n"
            self._append(line)
            self.journal_bytes += len(line)
        self.last = msgspec.structs.replace(durable, journal=self.count)

    def _append(self, line: bytes) -> None:
        path = journal_path(self.dir)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if self.journal_bytes == 0:
                _fsync_dir(self.dir)  # a new journal file: its directory entry too
        except OSError as exc:
            self.count -= 1
            raise StoreError(f"cannot append to the planner journal {path}: {exc}") from exc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(state_dir: str | Path, durable: Durable) -> int:
    """Replaces the snapshot atomically and durably; returns its size."""
    directory = Path(state_dir)
    path = state_path(directory)
    temp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        data = msgspec.json.encode(durable)
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        _fsync_dir(directory)
    except OSError as exc:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StoreError(f"cannot write the planner state {path}: {exc}") from exc
    return len(data)


def check_writable(state_dir: str | Path) -> None:
    """Fails early (at start) if the state directory cannot hold the state."""
    directory = Path(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the state directory {directory}: {exc}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"the state directory {directory} is not writable")
