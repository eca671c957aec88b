"""The Control Interface's decisions, without I/O.

Wire format: the protobuf messages that the `ankaios-sdk` package ships
(control_api.ToAnkaios / FromAnkaios, ank_base.*), each preceded by its
length as a varint. A connection starts with a Hello carrying the protocol
version; anything else first, or an unsupported version, closes it
(ConnectionClosed with the reason), as Ankaios's agent does.

Access (Ankaios's authorizer): a request passes only if every one of its
masks (no mask = the whole state, path "") is matched by an allow rule of the
right operation and by no deny rule. An allow rule matches a path it is a
prefix of (`*` matches any one segment, a rule that is only `*` matches
everything); a deny rule matches a path that is a prefix of it or that it is
a prefix of (reading a parent would reveal the denied part). Log requests
need a LogRule naming every workload asked for (`*` as a glob). Deny wins;
no rules, no access.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from ankaios_sdk._protos import ank_base_pb2 as ank_base
from ankaios_sdk._protos import control_api_pb2 as control_api
from google.protobuf import json_format

from schemas.manifest import AccessRule, ControlInterfaceAccess, Workload
from schemas.messages import CompleteState, WorkloadState

__all__ = ["ank_base", "control_api"]

# The protocol version this agent speaks (Ankaios v1 API).
PROTOCOL_VERSION = "1.0.0"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a larger length prefix closes the connection
ACCESS_DENIED = "Access denied"
HELLO_MISSING = "Initial Hello missing!"
DECODE_ERROR = "Could not decode protobuf data"

_OPERATIONS = {"Read": ("Read",), "Write": ("Write",), "ReadWrite": ("Read", "Write")}


def has_access(access: ControlInterfaceAccess | None) -> bool:
    """Whether a workload gets a Control Interface at all (Ankaios: only
    those with controlInterfaceAccess rules)."""
    return access is not None and bool(access.allow_rules or access.deny_rules)


# -- framing --------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def frame(message: control_api.FromAnkaios | control_api.ToAnkaios) -> bytes:
    body: bytes = message.SerializeToString()
    return varint(len(body)) + body


class FrameError(Exception):
    pass


class Decoder:
    """Splits a byte stream into length-delimited messages."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        while self.buffer:
            end = next((i for i, b in enumerate(self.buffer[:10]) if not b & 0x80), None)
            if end is None:
                if len(self.buffer) >= 10:
                    raise FrameError("length prefix longer than 10 bytes")
                break
            length = sum((b & 0x7F) << (7 * i) for i, b in enumerate(self.buffer[: end + 1]))
            start = end + 1
            if length > self.limit:
                raise FrameError(f"message of {length} bytes exceeds the limit of {self.limit}")
            if len(self.buffer) < start + length:
                break
            out.append(bytes(self.buffer[start : start + length]))
            del self.buffer[: start + length]
        return out


def decode_to_ankaios(body: bytes) -> control_api.ToAnkaios | None:
    message = control_api.ToAnkaios()
    try:
        message.ParseFromString(body)
    except Exception:
        return None
    return message


def version_problem(version: str) -> str | None:
    """None when `version` is compatible with ours (same major; for 0.x the
    same minor), else the reason the connection is closed."""

    def parts(text: str) -> tuple[int, int] | None:
        chunks = text.strip().split(".")
        if len(chunks) < 2 or not all(c.isdigit() for c in chunks[:2]):
            return None
        return int(chunks[0]), int(chunks[1])

    theirs, ours = parts(version), parts(PROTOCOL_VERSION)
    assert ours is not None
    if theirs is not None and theirs[0] == ours[0] and (ours[0] != 0 or theirs[1] == ours[1]):
        return None
    return f"Unsupported protocol version '{version}'. Currently supported '{PROTOCOL_VERSION}'"


def accepted() -> control_api.FromAnkaios:
    return control_api.FromAnkaios(controlInterfaceAccepted=control_api.ControlInterfaceAccepted())


def closed(reason: str) -> control_api.FromAnkaios:
    return control_api.FromAnkaios(connectionClosed=control_api.ConnectionClosed(reason=reason))


def response(request_id: str, **content: Any) -> control_api.FromAnkaios:
    return control_api.FromAnkaios(response=ank_base.Response(requestId=request_id, **content))


def error(request_id: str, message: str) -> control_api.FromAnkaios:
    return response(request_id, error=ank_base.Error(message=message))


# -- access rules ---------------------------------------------------------------------


def _segments(path: str) -> list[str]:
    return path.split(".") if path else []


def _allow_matches(rule: str, path: str) -> bool:
    pattern, target = _segments(rule), _segments(path)
    if not pattern:
        return False  # empty filter masks never match
    if len(pattern) > len(target) and pattern[0] != "*":
        return False
    return all(p in ("*", t) for p, t in zip(pattern, target, strict=False))


def _deny_matches(rule: str, path: str) -> bool:
    pattern, target = _segments(rule), _segments(path)
    if not pattern:
        return False
    return all(p in ("*", t) for p, t in zip(pattern, target, strict=False))


def _state_rules(rules: Iterable[AccessRule], operation: str) -> list[str]:
    return [
        mask
        for rule in rules
        if rule.type == "StateRule" and operation in _OPERATIONS.get(rule.operation or "", ())
        for mask in rule.filter_masks
    ]


def state_allowed(access: ControlInterfaceAccess | None, operation: str, masks: list[str]) -> bool:
    """`operation` "Read" (complete state, events) or "Write" (update state)."""
    if access is None:
        return False
    allow = _state_rules(access.allow_rules, operation)
    deny = _state_rules(access.deny_rules, operation)
    for path in masks or [""]:
        if not any(_allow_matches(rule, path) for rule in allow):
            return False
        if any(_deny_matches(rule, path) for rule in deny):
            return False
    return True


def _log_names(rules: Iterable[AccessRule]) -> list[str]:
    return [name for rule in rules if rule.type == "LogRule" for name in rule.workload_names]


def logs_allowed(access: ControlInterfaceAccess | None, workloads: list[str]) -> bool:
    if access is None or not workloads:
        return False
    allow, deny = _log_names(access.allow_rules), _log_names(access.deny_rules)
    for name in workloads:
        if not any(pattern and fnmatch.fnmatchcase(name, pattern) for pattern in allow):
            return False
        if any(pattern and fnmatch.fnmatchcase(name, pattern) for pattern in deny):
            return False
    return True


def request_allowed(access: ControlInterfaceAccess | None, request: ank_base.Request) -> bool:
    kind = request.WhichOneof("RequestContent")
    if kind == "completeStateRequest":
        return state_allowed(access, "Read", list(request.completeStateRequest.fieldMask))
    if kind == "updateStateRequest":
        return state_allowed(access, "Write", list(request.updateStateRequest.updateMask))
    if kind == "logsRequest":
        return logs_allowed(access, [n.workloadName for n in request.logsRequest.workloadNames])
    return kind in ("logsCancelRequest", "eventsCancelRequest")


# -- the state as Ankaios's object tree (what masks name) -----------------------------


def state_tree(state: CompleteState) -> dict[str, Any]:
    """The complete state in the shape Ankaios's masks address:
    desiredState.{apiVersion,workloads.<name>.<field>,configs.<name>},
    workloadStates.<agent>.<workload>.<id>, agents.<name>."""
    workloads = {name: msgspec.to_builtins(w) for name, w in state.desired.workloads.items()}
    states: dict[str, Any] = {}
    for ws in latest(state.workload_states):
        if not ws.agent:
            continue
        states.setdefault(ws.agent, {}).setdefault(ws.workload, {})[ws.instance or "-"] = _execution(ws)
    desired: dict[str, Any] = {"apiVersion": "v1", "workloads": workloads}
    if state.desired.configs:
        desired["configs"] = dict(state.desired.configs)
    return {
        "desiredState": desired,
        "workloadStates": states,
        "agents": {name: {} for name in state.agents},
    }


def latest(states: list[WorkloadState]) -> list[WorkloadState]:
    """The newest state of each (agent, workload), Removed ones left out."""
    newest: dict[tuple[str, str], WorkloadState] = {}
    for ws in states:
        key = (ws.agent, ws.workload)
        if key not in newest or ws.seq >= newest[key].seq:
            newest[key] = ws
    return [ws for ws in newest.values() if ws.execution_state.state != "Removed"]


_STATE_ENUMS = {
    "Pending": ("pending", {"Initial": 0, "WaitingToStart": 1, "Starting": 2, "StartingFailed": 8}),
    "Running": ("running", {"Ok": 0}),
    "Stopping": ("stopping", {"Stopping": 0, "WaitingToStop": 1, "DeleteFailed": 8}),
    "Succeeded": ("succeeded", {"Ok": 0}),
    "Failed": ("failed", {"ExecFailed": 0, "Unknown": 1, "Lost": 2}),
    "NotScheduled": ("notScheduled", {"": 0}),
    "AgentDisconnected": ("agentDisconnected", {"": 0}),
    "Removed": ("removed", {"": 0}),
}


def _execution(ws: WorkloadState) -> dict[str, Any]:
    es = ws.execution_state
    return {"state": es.state, "subState": es.substate, "additionalInfo": es.additional_info}


def _execution_to_proto(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("state") not in _STATE_ENUMS:
        return {}
    field, substates = _STATE_ENUMS[value["state"]]
    return {"additionalInfo": str(value.get("additionalInfo", "")), field: substates.get(value.get("subState", ""), 0)}


def filter_tree(tree: dict[str, Any], masks: list[str]) -> dict[str, Any]:
    """The parts of `tree` the masks select (`*` matches any key); no masks:
    all of it."""
    if not masks:
        return tree
    out: dict[str, Any] = {}
    for mask in masks:
        _copy_masked(tree, out, _segments(mask))
    return out


def _copy_masked(source: Any, target: dict[str, Any], parts: list[str]) -> None:
    if not parts or not isinstance(source, dict):
        return
    head, rest = parts[0], parts[1:]
    keys = list(source) if head == "*" else [head] if head in source else []
    for key in keys:
        if not rest:
            target[key] = source[key]
        elif isinstance(source[key], dict):
            child = target.setdefault(key, {})
            _copy_masked(source[key], child, rest)
            if not child:
                target.pop(key, None)


def altered_fields(
    old: dict[str, Any], new: dict[str, Any], masks: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """(added, updated, removed) paths between two state trees, as Ankaios
    reports them: an added or removed subtree is one path, a changed value is
    its own path; each is reported at least as deep as the mask it falls
    under (a subtree added above a mask is expanded to the mask's paths)."""
    added: list[list[str]] = []
    updated: list[list[str]] = []
    removed: list[list[str]] = []

    def walk(a: dict[str, Any], b: dict[str, Any], path: list[str]) -> None:
        for key in sorted(set(a) | set(b)):
            here = [*path, key]
            if key not in a:
                added.append(here)
            elif key not in b:
                removed.append(here)
            elif isinstance(a[key], dict) and isinstance(b[key], dict):
                walk(a[key], b[key], here)
            elif a[key] != b[key]:
                updated.append(here)

    walk(old, new, [])
    patterns = [_segments(m) for m in masks] or [[]]
    return _under(added, new, patterns), _under(updated, new, patterns), _under(removed, old, patterns)


def _under(paths: list[list[str]], tree: dict[str, Any], patterns: list[list[str]]) -> list[str]:
    out: set[str] = set()
    for path in paths:
        for pattern in patterns:
            if len(pattern) <= len(path):
                if all(p in ("*", s) for p, s in zip(pattern, path, strict=False)):
                    out.add(".".join(path))
            elif all(p in ("*", s) for p, s in zip(pattern, path, strict=False)):
                _, subtree = _at(tree, path)
                out.update(".".join(p) for p in _expand(subtree, pattern[len(path) :], path))
    return sorted(out)


def _at(tree: Any, path: list[str]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _expand(tree: Any, rest: list[str], path: list[str]) -> list[list[str]]:
    if not rest:
        return [path]
    if not isinstance(tree, dict):
        return []
    keys = sorted(tree) if rest[0] == "*" else [rest[0]] if rest[0] in tree else []
    return [found for key in keys for found in _expand(tree[key], rest[1:], [*path, key])]


# -- Ankaios object tree <-> protobuf -------------------------------------------------

_OPERATION_ENUM = {"Read": "RW_READ", "Write": "RW_WRITE", "ReadWrite": "RW_READ_WRITE"}
_OPERATION_NAME = {v: k for k, v in _OPERATION_ENUM.items()}


def _rule_to_proto(rule: dict[str, Any]) -> dict[str, Any]:
    if rule.get("type") == "LogRule":
        return {"logRule": {"workloadNames": rule.get("workloadNames", [])}}
    return {
        "stateRule": {
            "operation": _OPERATION_ENUM.get(rule.get("operation") or "", "RW_NOTHING"),
            "filterMasks": rule.get("filterMasks", []),
        }
    }


def _config_to_proto(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return {"object": {"fields": {k: _config_to_proto(v) for k, v in item.items()}}}
    if isinstance(item, list):
        return {"array": {"values": [_config_to_proto(v) for v in item]}}
    return {"String": str(item)}


# A workload's fields in Ankaios's protobuf (as JSON), both ways: as they are,
# or wrapped in a message whose one field has the same name (`tags: {tags: …}`;
# the factory: its value when the wrapper is empty); the access rules by side.
_PLAIN_FIELDS = ("agent", "runtime", "runtimeConfig", "restartPolicy")
_WRAPPED_FIELDS: dict[str, Callable[[], Any]] = {"tags": dict, "dependencies": dict, "configs": dict, "files": list}
_RULE_SIDES = ("allowRules", "denyRules")


def _workload_to_proto(w: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {key: value for key, value in w.items() if key in _PLAIN_FIELDS}
    out.update({key: {key: value} for key, value in w.items() if key in _WRAPPED_FIELDS})
    access = w.get("controlInterfaceAccess")
    if access is not None:
        out["controlInterfaceAccess"] = {
            side: [_rule_to_proto(r) for r in access.get(side, [])] for side in _RULE_SIDES
        }
    # ank-zenoh's extensions (healthCheck, scheduling) have no field in Ankaios's API
    return out


def tree_to_proto(tree: dict[str, Any]) -> ank_base.CompleteState:
    """A (possibly filtered) state tree as ank_base.CompleteState."""
    proto: dict[str, Any] = {}
    desired = tree.get("desiredState")
    if isinstance(desired, dict):
        d: dict[str, Any] = {}
        if "apiVersion" in desired:
            d["apiVersion"] = desired["apiVersion"]
        if isinstance(desired.get("workloads"), dict):
            d["workloads"] = {
                "workloads": {
                    name: _workload_to_proto(w) if isinstance(w, dict) else {}
                    for name, w in desired["workloads"].items()
                }
            }
        if isinstance(desired.get("configs"), dict):
            d["configs"] = {"configs": {k: _config_to_proto(v) for k, v in desired["configs"].items()}}
        proto["desiredState"] = d
    states = tree.get("workloadStates")
    if isinstance(states, dict):
        proto["workloadStates"] = {
            "agentStateMap": {
                agent: {
                    "wlNameStateMap": {
                        wl: {"idStateMap": {i: _execution_to_proto(e) for i, e in ids.items()}}
                        for wl, ids in wls.items()
                        if isinstance(ids, dict)
                    }
                }
                for agent, wls in states.items()
                if isinstance(wls, dict)
            }
        }
    agents = tree.get("agents")
    if isinstance(agents, dict):
        proto["agents"] = {"agents": {name: {} for name in agents}}
    message = ank_base.CompleteState()
    json_format.ParseDict(proto, message, ignore_unknown_fields=True)
    return message


def _config_from_proto(item: dict[str, Any]) -> Any:
    if "object" in item:
        return {k: _config_from_proto(v) for k, v in item["object"].get("fields", {}).items()}
    if "array" in item:
        return [_config_from_proto(v) for v in item["array"].get("values", [])]
    return item.get("String", "")


def _rule_from_proto(rule: dict[str, Any]) -> dict[str, Any]:
    if "logRule" in rule:
        return {"type": "LogRule", "workloadNames": rule["logRule"].get("workloadNames", [])}
    state = rule.get("stateRule", {})
    out: dict[str, Any] = {"type": "StateRule", "filterMasks": state.get("filterMasks", [])}
    operation = _OPERATION_NAME.get(state.get("operation", ""))
    if operation:
        out["operation"] = operation
    return out


def _workload_from_proto(w: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {key: value for key, value in w.items() if key in _PLAIN_FIELDS}
    out.update({key: value.get(key, _WRAPPED_FIELDS[key]()) for key, value in w.items() if key in _WRAPPED_FIELDS})
    access = w.get("controlInterfaceAccess")
    if access is not None:
        out["controlInterfaceAccess"] = {
            side: [_rule_from_proto(r) for r in access[side]] for side in _RULE_SIDES if access.get(side)
        }
    return out


def desired_document(state: ank_base.CompleteState) -> dict[str, Any]:
    """An UpdateStateRequest's newState as the `desiredState:` document that
    `ank set state` (the planner's ank/cmd/apply with masks) reads."""
    raw = json_format.MessageToDict(state, preserving_proto_field_name=True)
    desired = raw.get("desiredState", {})
    document: dict[str, Any] = {"apiVersion": desired.get("apiVersion") or "v1"}
    workloads = desired.get("workloads", {}).get("workloads")
    if workloads:
        document["workloads"] = {name: _workload_from_proto(w) for name, w in workloads.items()}
    configs = desired.get("configs", {}).get("configs")
    if configs:
        document["configs"] = {k: _config_from_proto(v) for k, v in configs.items()}
    return {"desiredState": document}


def instance_names(names: list[str], desired: dict[str, Workload], instances: dict[str, str]) -> list[str]:
    """Ankaios's `name.id.agent` for UpdateStateSuccess."""
    out = []
    for name in names:
        workload = desired.get(name)
        agent = workload.agent if workload is not None and workload.agent else ""
        out.append(f"{name}.{instances.get(name, '-')}.{agent}")
    return out


def log_entry_names(workloads: Iterable[ank_base.WorkloadInstanceName]) -> list[str]:
    return [w.workloadName for w in workloads]
