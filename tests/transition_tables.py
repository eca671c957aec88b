"""The transition tables the cores write in their docstrings, read as data.

A core documents its transitions as pipe tables (`| a | b |` lines under a
`|---|` rule) in its module or function docstrings. `doc_tables` reads them;
tests/test_transition_tables.py drives each cell through the core and
compares, so a table cannot drift from the code: a cell whose text no driver
knows (the doc changed) or a driver no cell names (the code gained a
transition the doc lacks) fails, as does a driver whose drive disagrees.

A row whose first cell is empty continues the row above it: each of its
non-empty cells is appended, with a space, to the same column's text.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import NamedTuple, TypeVar

K = TypeVar("K", bound=tuple[str, ...])


class DocTable(NamedTuple):
    where: str  # module or module.function, for messages
    headers: tuple[str, ...]
    rows: list[dict[str, str]]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_tables(doc: str, where: str) -> list[DocTable]:
    tables: list[DocTable] = []
    block: list[str] = []
    for line in [*doc.splitlines(), ""]:
        text = line.strip()
        if text.startswith("|") and text.endswith("|") and len(text) > 1:
            block.append(text)
            continue
        if len(block) >= 2 and set(block[1]) <= set("|-: "):
            headers = tuple(_cells(block[0]))
            rows: list[dict[str, str]] = []
            for raw in block[2:]:
                cells = _cells(raw)
                if len(cells) != len(headers):
                    raise AssertionError(f"{where}: a row with {len(cells)} cells under {len(headers)} headers: {raw}")
                if not cells[0] and rows:
                    for header, cell in zip(headers, cells, strict=True):
                        if cell:
                            rows[-1][header] = f"{rows[-1][header]} {cell}".strip()
                    continue
                rows.append(dict(zip(headers, cells, strict=True)))
            tables.append(DocTable(where, headers, rows))
        block = []
    return tables


def doc_tables(module: ModuleType) -> list[DocTable]:
    """Every pipe table in the module's docstring and its functions' and classes'."""
    found = parse_tables(module.__doc__ or "", module.__name__)
    for name, member in vars(module).items():
        if (inspect.isfunction(member) or inspect.isclass(member)) and member.__module__ == module.__name__:
            found += parse_tables(inspect.getdoc(member) or "", f"{module.__name__}.{name}")
    return found


def doc_table(module: ModuleType, *headers: str) -> DocTable:
    """The one table of the module whose headers are these."""
    matching = [t for t in doc_tables(module) if t.headers == headers]
    assert len(matching) == 1, f"{module.__name__}: {len(matching)} tables with headers {headers}"
    return matching[0]


def hold_to_code(table: DocTable, cells: Mapping[K, str], drivers: Mapping[str, Callable[..., None]]) -> None:
    """`cells`: each transition the table states (its key → the cell's text);
    `drivers`: for each cell text, a function that drives the core through
    that transition (called with the key) and asserts the outcome. Fails on
    a cell no driver knows, a driver no cell uses, and a failing drive."""
    unknown = sorted({text for text in cells.values()} - set(drivers))
    assert not unknown, f"{table.where}: cells no test drives (the doc changed?): {unknown}"
    unused = sorted(set(drivers) - set(cells.values()))
    assert not unused, f"{table.where}: transitions the code has and the table does not state: {unused}"
    for key, text in cells.items():
        try:
            drivers[text](*key)
        except AssertionError as exc:
            raise AssertionError(f"{table.where}: row {key}: the code does not do {text!r}: {exc}") from exc
