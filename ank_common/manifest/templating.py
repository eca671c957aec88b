"""Handlebars rendering of workload fields, as Eclipse Ankaios renders them.

Ankaios's server renders `runtimeConfig`, `agent` and the `files` contents of
each workload that has `configs`, with handlebars-rust configured so:

- strict mode: rendering a value that does not exist (`{{port.missing}}`) is
  an error, not an empty string. Inside helper parameters (`{{#if x}}`,
  `{{#each x}}`, `(eq x "1")`) a missing value is only falsy/empty;
- no HTML escaping: `{{x}}` writes the value as is;
- one partial, `indent`, whose body is `{{content}}`: used standalone on its
  own line (`    {{> indent content=cfg.text}}`) it repeats the line's
  indentation before every line of the value, so multi-line configs can be
  put into YAML block scalars;
- handlebars-rust's built-in helpers: if, unless, each, with, lookup, and
  the comparison/logic helpers eq, ne, gt, gte, lt, lte, and, or, not, len.

Values render like handlebars-rust: strings as is, numbers, true/false, a
list as `[a, b]`, a map as `[object]`.

The engine is pybars3; this module only adapts it (escaping off, strict
lookups through the data wrappers below, the indent partial, the helpers).
pybars3 compiles a template into Python source, and two of its syntaxes put
template text into that source unquoted: segment literals (`{{[a b]}}`) and
backslashes inside tags. Templates come from the bus, so tags containing
`[`, `]` or `\\` are refused before pybars sees them.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

INDENT_PARTIAL = "indent"
_INDENT_ARG = "ank_indent"


class TemplateError(ValueError):
    """A template that does not parse or does not render with its configs."""


class _StrictMissing(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class _Missing:
    """A value that is not there: falsy and empty for helpers, an error when
    rendered (strict mode)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Any:
        return iter(())

    def __getitem__(self, key: object) -> _Missing:
        return _Missing(f"{self.path}.{key}")

    def get(self, key: object, default: object = None) -> _Missing:
        return self[key]

    def __str__(self) -> str:
        raise _StrictMissing(self.path)


class _StrictMap(dict[str, Any]):
    """A config map: unknown keys give a _Missing; renders as `[object]`."""

    path = ""

    def __missing__(self, key: str) -> _Missing:
        return _Missing(f"{self.path}.{key}" if self.path else str(key))

    def __str__(self) -> str:
        return "[object]"


class _StrictList(list[Any]):
    """A config list, indexable by the path segments `0`, `1`, … and
    `length`; renders as `[a, b]`."""

    path = ""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key == "length":
                return len(self)
            if key.isdigit() and int(key) < len(self):
                return list.__getitem__(self, int(key))
            return _Missing(f"{self.path}.{key}" if self.path else key)
        return list.__getitem__(self, key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key]

    def __str__(self) -> str:
        return "[" + ", ".join(render_value(item) for item in self) + "]"


def render_value(value: Any) -> str:
    """A value as handlebars-rust writes it."""
    if isinstance(value, _Missing):
        raise _StrictMissing(value.path)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(render_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "[object]"
    return str(value)


def strict_data(value: Any, path: str = "") -> Any:
    """Wraps plain config values so lookups are strict (and errors name the
    path that is missing)."""
    wrapped: _StrictMap | _StrictList
    if isinstance(value, dict):
        wrapped = _StrictMap({str(k): strict_data(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()})
    elif isinstance(value, list):
        wrapped = _StrictList(strict_data(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value))
    else:
        return value
    wrapped.path = path
    return wrapped


# --- helpers (handlebars-rust's built-ins beyond pybars3's own) -------------


def _plain(value: Any) -> Any:
    return None if isinstance(value, _Missing) else value


def _number(value: Any) -> float | None:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _compare(left: Any, right: Any) -> int | None:
    """-1/0/1 for two numbers or two strings, None when not comparable."""
    left_number, right_number = _number(left), _number(right)
    if left_number is not None and right_number is not None:
        return (left_number > right_number) - (left_number < right_number)
    left, right = _plain(left), _plain(right)
    if isinstance(left, str) and isinstance(right, str):
        return (left > right) - (left < right)
    return None


def _equal(left: Any, right: Any) -> bool:
    left, right = _plain(left), _plain(right)
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    return bool(type(left) is type(right) and left == right) or (
        _number(left) is not None and _number(left) == _number(right)
    )


def _truthy(value: Any) -> bool:
    return bool(_plain(value))


def _helper_eq(this: Any, left: Any = None, right: Any = None, *_: Any, **__: Any) -> bool:
    return _equal(left, right)


def _helper_ne(this: Any, left: Any = None, right: Any = None, *_: Any, **__: Any) -> bool:
    return not _equal(left, right)


def _ordering_helper(accept: Callable[[int], bool]) -> Callable[..., bool]:
    def helper(this: Any, left: Any = None, right: Any = None, *_: Any, **__: Any) -> bool:
        order = _compare(left, right)
        return order is not None and accept(order)

    return helper


def _helper_and(this: Any, *values: Any, **__: Any) -> bool:
    return all(_truthy(v) for v in values)


def _helper_or(this: Any, *values: Any, **__: Any) -> bool:
    return any(_truthy(v) for v in values)


def _helper_not(this: Any, value: Any = None, *_: Any, **__: Any) -> bool:
    return not _truthy(value)


def _helper_len(this: Any, value: Any = None, *_: Any, **__: Any) -> int:
    value = _plain(value)
    return len(value) if isinstance(value, str | list | dict) else 0


HELPERS: dict[str, Callable[..., Any]] = {
    "eq": _helper_eq,
    "ne": _helper_ne,
    "gt": _ordering_helper(lambda order: order > 0),
    "gte": _ordering_helper(lambda order: order >= 0),
    "lt": _ordering_helper(lambda order: order < 0),
    "lte": _ordering_helper(lambda order: order <= 0),
    "and": _helper_and,
    "or": _helper_or,
    "not": _helper_not,
    "len": _helper_len,
}


# --- the indent partial -------------------------------------------------------


def _with_indent(text: str, indent: str) -> str:
    """handlebars-rust's partial indentation: the indent before the first
    line (unless the text starts with a line break) and after every line
    break that is not the last character; empty lines get it too."""
    if not indent or not text:
        return text
    lines = text.split("\n")
    last = len(lines) - 1

    def indented(index: int, line: str) -> bool:
        if index == 0:
            return bool(line) or last == 0
        return index < last or bool(line)

    return "\n".join(indent + line if indented(i, line) else line for i, line in enumerate(lines))


def _indent_partial(scope: Any, helpers: Any = None, partials: Any = None, root: Any = None) -> str:
    content = scope.get("content")
    if content is None:
        raise _StrictMissing("content")
    indent = scope.get(_INDENT_ARG) or ""
    return _with_indent(render_value(content), str(indent))


# A standalone `{{> indent ...}}`: alone on its line but for whitespace. Like
# handlebars, the line's own break is dropped (the content brings its own)
# and its leading whitespace becomes the indent.
_STANDALONE_INDENT = re.compile(
    r"^(?P<indent>[ \t]*)\{\{>\s*" + INDENT_PARTIAL + r"(?P<args>(?:\s[^{}]*)?)\}\}[ \t]*(?:\r?\n|\Z)",
    re.MULTILINE,
)


# A closing (or comment) tag alone on the template's last line.
_STANDALONE_LAST_LINE = re.compile(r"\n[ \t]*\{\{[/!][^{}]*\}\}[ \t]*\n?\Z")
# Ends a template whose last line is such a tag; removed from the output.
_END_MARK = "\ue002"


def _prepare_source(source: str) -> tuple[str, bool]:
    """Adapts Handlebars' standalone-line rules to pybars3: marks standalone
    indent partials with their indentation; and when the last line is a
    standalone closing tag, adds a line break and an end mark after it:
    pybars3's rule for that line also removes the line break *before* the
    tag, so `{{#each}}` bodies would lose their newlines. Returns the
    source and whether the end mark was added."""

    def replace(match: re.Match[str]) -> str:
        args = match.group("args").rstrip()
        return "{{> " + INDENT_PARTIAL + args + f' {_INDENT_ARG}="{match.group("indent")}"' + "}}"

    source = _STANDALONE_INDENT.sub(replace, source)
    if _END_MARK not in source and _STANDALONE_LAST_LINE.search(source):
        return source + ("" if source.endswith("\n") else "\n") + _END_MARK, True
    return source, False


# --- compile and render -------------------------------------------------------

_TAG = re.compile(r"\{\{(.*?)(\}\}|\Z)", re.DOTALL)
# pybars3's compiler keeps its code builder on the class: one compile at a time.
_COMPILE_LOCK = threading.Lock()


@functools.cache
def _compiler() -> Any:
    """pybars3 compiles its grammar at import (~1.5 s): import it only when a
    manifest actually has templates, so services and the CLI start fast."""
    import pybars

    return pybars.Compiler()


def _refuse_unsafe_tags(source: str) -> None:
    for match in _TAG.finditer(source):
        inner = match.group(1)
        if not match.group(2):
            raise TemplateError(f"unclosed template tag '{{{{{inner[:40]}'")
        if "[" in inner or "]" in inner or "\\" in inner:
            raise TemplateError(
                f"unsupported template tag '{{{{{inner[:40]}}}}}': '[', ']' and '\\' are not allowed in tags"
            )


_LITERAL_MARK = "\ue000"  # a private-use character: the placeholder of a literal run


def _set_literals_aside(source: str) -> tuple[str, dict[str, str]]:
    """pybars3's parser takes about 10 µs per character of literal text, so
    the inside of each literal run (between tags) is replaced by a short
    placeholder and put back after rendering. Each run keeps its first and
    last lines and the whitespace next to them, which is all the standalone
    and `~` whitespace rules of Handlebars look at."""
    if _LITERAL_MARK in source:
        return source, {}
    literals: dict[str, str] = {}
    pieces: list[str] = []
    position = 0
    for match in _TAG.finditer(source):
        pieces.append(_shorten(source[position : match.start()], literals))
        pieces.append(match.group(0))
        position = match.end()
    pieces.append(_shorten(source[position:], literals))
    return "".join(pieces), literals


def _shorten(run: str, literals: dict[str, str]) -> str:
    first_break, last_break = run.find("\n"), run.rfind("\n")
    if first_break < 0 or last_break - first_break < 64:
        return run
    start, end = first_break + 1, last_break
    while start < end and run[start].isspace():
        start += 1
    while end > start and run[end - 1].isspace():
        end -= 1
    if end - start < 64:
        return run
    token = f"{_LITERAL_MARK}{len(literals)}{_LITERAL_MARK}"
    literals[token] = run[start:end]
    return run[:start] + token + run[end:]


_PLACEHOLDER = re.compile(_LITERAL_MARK + r"[0-9]+" + _LITERAL_MARK)


@functools.lru_cache(maxsize=512)
def _compiled(source: str) -> tuple[Callable[..., Any], dict[str, str], bool]:
    _refuse_unsafe_tags(source)
    prepared, end_marked = _prepare_source(source)
    skeleton, literals = _set_literals_aside(prepared)
    try:
        with _COMPILE_LOCK:
            code = _compiler().precompile(skeleton)
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None
    except Exception as err:  # pybars raises PybarsError and anything its parser hits
        raise TemplateError(f"invalid template: {err}") from None
    # No HTML escaping (Ankaios registers handlebars::no_escape).
    code = code.replace("prepare(value, True)", "prepare(value, False)")
    template: Callable[..., Any] = _compiler().template(code)
    return template, literals, end_marked


def render_template(source: str, data: Mapping[str, Any]) -> str:
    """Renders `source` with `data` (plain values) as Ankaios does; raises
    TemplateError with the reason."""
    if "{{" not in source:
        return source  # nothing to render; also spares the parser big texts
    template, literals, end_marked = _compiled(source)
    try:
        result = template(strict_data(dict(data)), helpers=HELPERS, partials={INDENT_PARTIAL: _indent_partial})
    except _StrictMissing as missing:
        raise TemplateError(f'Failed to access variable in strict mode Some("{missing.path}")') from None
    except RecursionError:
        raise TemplateError("template is nested too deeply") from None
    except Exception as err:  # a template may fail in any way; the manifest is then rejected
        raise TemplateError(f"template failed to render: {err}") from None
    text = str(result)
    if end_marked and text.endswith(_END_MARK):
        text = text[: -len(_END_MARK)]
    if literals:
        text = _PLACEHOLDER.sub(lambda match: literals.get(match.group(0), match.group(0)), text)
    return text
