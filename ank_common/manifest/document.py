"""Reading a manifest document (YAML or JSON) safely, before any validation.

Manifests arrive from users and from the bus, so reading must never explode:
the text is bounded (1 MiB), YAML aliases may not expand a document beyond a
node budget (the "billion laughs" bomb), nesting is bounded (64), and
recursive aliases are refused. Scalars are resolved as YAML 1.2 (core schema)
like Ankaios's serde_yaml does: `yes`, `no`, `on`, `off` stay strings and no
timestamps appear. Duplicate keys are an error (serde_yaml refuses them too).

Everything here is pure: bytes or text in, plain Python values out, or a
`ManifestError` naming the problem.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Nodes of the document once every alias is expanded: a large manifest has a
# few thousand, a billion-laughs bomb has billions.
MAX_EXPANDED_NODES = 200_000


class ManifestError(ValueError):
    """A document that cannot be read at all (not: a manifest that is invalid)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalar resolution."""


_Yaml12Loader.yaml_implicit_resolvers = {}
_YAML12_RESOLVERS: list[tuple[str, str, str]] = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", "~nN"),
]
for _tag, _pattern, _first in _YAML12_RESOLVERS:
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))
# The empty scalar resolves to null too.
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])


def _construct_yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_yaml12_int)


def _decode_text(data: bytes | str) -> str:
    if isinstance(data, str):
        if len(data.encode("utf-8", errors="surrogatepass")) > MAX_DOCUMENT_BYTES:
            raise ManifestError(f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
        return data
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ManifestError(f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(f"document is not UTF-8 text (byte {err.start})") from None


def _check_node_graph(root: yaml.Node) -> None:
    """Refuses documents too deep or too large once aliases are expanded,
    recursive aliases, duplicate keys and non-scalar keys."""
    # id(node) -> (expanded size, height); memoised so shared (aliased)
    # subtrees are measured once, which keeps this linear in the text.
    measured: dict[int, tuple[int, int]] = {}

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise ManifestError(f"document is nested deeper than {MAX_DEPTH} levels (or has a recursive alias)")
        known = measured.get(id(node))
        if known is not None:
            if depth + known[1] > MAX_DEPTH:
                raise ManifestError(f"document is nested deeper than {MAX_DEPTH} levels")
            return known
        size, height = 1, 0
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            seen_keys: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ManifestError(f"line {key_node.start_mark.line + 1}: mapping keys must be scalars")
                if key_node.value in seen_keys:
                    raise ManifestError(f"line {key_node.start_mark.line + 1}: duplicate key '{key_node.value}'")
                seen_keys.add(key_node.value)
                children.append(value_node)
        for child in children:
            child_size, child_height = measure(child, depth + 1)
            size += child_size
            height = max(height, child_height + 1)
            if size > MAX_EXPANDED_NODES:
                raise ManifestError(f"document expands to more than {MAX_EXPANDED_NODES} nodes (YAML alias bomb?)")
        measured[id(node)] = (size, height)
        return size, height

    measure(root, 0)


def _check_plain_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ManifestError(f"document is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            _check_plain_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_plain_depth(item, depth + 1)


def _load_any(text: str) -> Any:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        # JSON is read as JSON (faster, exact); the depth check runs on the
        # result, since the json module recurses on its own.
        try:
            value = json.loads(text)
        except RecursionError:
            raise ManifestError(f"document is nested deeper than {MAX_DEPTH} levels") from None
        except ValueError:
            pass  # flow-style YAML, not JSON
        else:
            _check_plain_depth(value)
            return value
    try:
        node = yaml.compose(text, Loader=_Yaml12Loader)
    except yaml.composer.ComposerError as err:
        raise ManifestError(f"invalid YAML: {_one_line(err)}") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"invalid YAML: {_one_line(err)}") from None
    except RecursionError:
        raise ManifestError(f"document is nested deeper than {MAX_DEPTH} levels") from None
    if node is None:
        return None
    _check_node_graph(node)
    loader = _Yaml12Loader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ManifestError(f"invalid YAML: {_one_line(err)}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as err:
        raise ManifestError(f"invalid YAML value: {err}") from None
    finally:
        loader.dispose()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _stringify_keys(value: Any) -> Any:
    """Integer keys become strings (as when serde_yaml's value becomes JSON);
    any other non-string key is refused, and so is text that is not valid
    Unicode (a YAML escape such as "\\uDFFF" makes a lone surrogate, which
    no UTF-8 message can carry)."""
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise ManifestError(f"mapping key {key!r} is not a string")
            result[_valid_text(str(key))] = _stringify_keys(item)
        return result
    if isinstance(value, list):
        return [_stringify_keys(item) for item in value]
    if isinstance(value, str):
        return _valid_text(value)
    return value


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        raise ManifestError(f"text is not valid Unicode: a lone surrogate U+{ord(bad):04X}") from None
    return text


def load_optional_document(data: bytes | str) -> dict[str, Any] | None:
    """Like `load_document`, but an empty document (nothing or only
    comments) gives None instead of an error."""
    value = _stringify_keys(_load_any(_decode_text(data)))
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"the top level must be a mapping, not {_kind(value)}")
    return value


def load_document(data: bytes | str) -> Any:
    """Reads YAML or JSON text into plain values; the top level must be a
    mapping. Raises ManifestError with the reason on anything unsafe or
    unreadable."""
    value = load_optional_document(data)
    if value is None:
        raise ManifestError("the document is empty")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"
