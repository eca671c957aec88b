"""The `podman run` command line as a request to podman's REST API (the
libpod "SpecGenerator" body of `POST /containers/create`). Pure: no I/O.

The connector builds one command line for every workload (core.run_command,
with what other parts add to it) and hands it here: whatever this module
can translate runs through the API service; a command line with an option it
cannot translate (or generalOptions) runs through the CLI, and the reason is
logged. So the API path never drops an option silently.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

# Options that take a value (separate or after `=`), by every spelling.
_VALUE_OPTIONS = {
    "--name": "name",
    "-e": "env",
    "--env": "env",
    "-l": "label",
    "--label": "label",
    "-p": "publish",
    "--publish": "publish",
    "-v": "volume",
    "--volume": "volume",
    "--mount": "mount",
    "-w": "workdir",
    "--workdir": "workdir",
    "-u": "user",
    "--user": "user",
    "-h": "hostname",
    "--hostname": "hostname",
    "--entrypoint": "entrypoint",
    "--net": "network",
    "--network": "network",
    "--cap-add": "cap_add",
    "--cap-drop": "cap_drop",
    "--pid": "pid",
    "--ipc": "ipc",
    "--uts": "uts",
}
# Flags (no value, or `=true`/`=false`), → the spec field they set (None: nothing to set).
_FLAGS: dict[str, str | None] = {
    "-d": None,
    "--detach": None,
    "--replace": "replace",
    "--rm": "remove",
    "--privileged": "privileged",
    "--init": "init",
    "--read-only": "read_only_filesystem",
    "-t": "terminal",
    "--tty": "terminal",
    "-i": "stdin",
    "--interactive": "stdin",
}


class ApiRun(msgspec.Struct, frozen=True):
    """A translated command line: the create body, and whether a container
    of the same name gives way (`--replace`)."""

    spec: dict[str, Any]
    replace: bool = False


class Untranslatable(ValueError):
    """The command line has something the API path does not translate."""


def api_run(argv: list[str]) -> ApiRun:
    """`[generalOptions] run -d … image [args]` → ApiRun; raises
    Untranslatable naming the first option it cannot translate."""
    if not argv or argv[0] != "run":
        raise Untranslatable(f"generalOptions {' '.join(argv[: argv.index('run') if 'run' in argv else 1])}")
    spec: dict[str, Any] = {}
    replace = False
    i = 1
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-") or token == "-":
            break
        if token == "--":
            i += 1
            break
        option, has_value, inline = token.partition("=")
        if option in _FLAGS:
            if has_value and inline.lower() not in ("true", "false"):
                raise Untranslatable(token)
            on = not has_value or inline.lower() == "true"
            field = _FLAGS[option]
            if field == "replace":
                replace = on
            elif field is not None:
                spec[field] = on
            i += 1
            continue
        kind = _VALUE_OPTIONS.get(option)
        if kind is None:
            raise Untranslatable(option)
        if has_value:
            value = inline
            i += 1
        elif i + 1 < len(argv):
            value = argv[i + 1]
            i += 2
        else:
            raise Untranslatable(f"{option} without a value")
        _apply(spec, kind, option, value)
    if i >= len(argv):
        raise Untranslatable("no image")
    spec["image"] = argv[i]
    if argv[i + 1 :]:
        spec["command"] = list(argv[i + 1 :])
    return ApiRun(spec=spec, replace=replace)


def _apply(spec: dict[str, Any], kind: str, option: str, value: str) -> None:
    if kind == "name":
        spec["name"] = value
    elif kind == "env":
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise Untranslatable(f"{option} {value} (a value from the agent's environment)")
        spec.setdefault("env", {})[key] = val
    elif kind == "label":
        key, _sep, val = value.partition("=")
        if not key:
            raise Untranslatable(f"{option} {value}")
        spec.setdefault("labels", {})[key] = val
    elif kind == "publish":
        spec.setdefault("portmappings", []).append(_port(option, value))
    elif kind == "volume":
        _volume(spec, option, value)
    elif kind == "mount":
        spec.setdefault("mounts", []).append(_mount(option, value))
    elif kind == "workdir":
        spec["work_dir"] = value
    elif kind == "user":
        spec["user"] = value
    elif kind == "hostname":
        spec["hostname"] = value
    elif kind == "entrypoint":
        if not value:
            raise Untranslatable(f"{option} ''")
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                raise Untranslatable(f"{option} {value}") from None
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                raise Untranslatable(f"{option} {value}")
            spec["entrypoint"] = parsed
        else:
            spec["entrypoint"] = [value]
    elif kind == "network":
        _network(spec, option, value)
    elif kind in ("cap_add", "cap_drop"):
        spec.setdefault(kind, []).extend(c for c in value.split(",") if c)
    elif kind in ("pid", "ipc", "uts"):
        if value not in ("host", "private"):
            raise Untranslatable(f"{option} {value}")
        spec[f"{kind}ns"] = {"nsmode": value}


def _port(option: str, value: str) -> dict[str, Any]:
    """`[[ip:][hostPort]:]containerPort[/proto]`, single ports only."""
    text, _sep, proto = value.partition("/")
    parts = text.split(":")
    if len(parts) > 3 or "[" in text or any("-" in p for p in parts):
        raise Untranslatable(f"{option} {value}")
    host_ip = parts[0] if len(parts) == 3 else ""
    host_port = parts[-2] if len(parts) >= 2 else ""
    try:
        mapping: dict[str, Any] = {"container_port": int(parts[-1]), "host_port": int(host_port) if host_port else 0}
    except ValueError:
        raise Untranslatable(f"{option} {value}") from None
    if host_ip:
        mapping["host_ip"] = host_ip
    if proto:
        if proto not in ("tcp", "udp", "sctp"):
            raise Untranslatable(f"{option} {value}")
        mapping["protocol"] = proto
    return mapping


def _volume(spec: dict[str, Any], option: str, value: str) -> None:
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise Untranslatable(f"{option} {value}")
    options = [o for o in parts[2].split(",") if o] if len(parts) == 3 else []
    if parts[0].startswith("/"):
        spec.setdefault("mounts", []).append(
            {"type": "bind", "source": parts[0], "destination": parts[1], "options": ["rbind", *options]}
        )
    else:
        spec.setdefault("volumes", []).append({"Name": parts[0], "Dest": parts[1], "Options": options})


def _mount(option: str, value: str) -> dict[str, Any]:
    fields: dict[str, str] = {}
    flags: list[str] = []
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if sep:
            fields[key.strip()] = val.strip()
        elif key.strip():
            flags.append(key.strip())
    kind = fields.pop("type", "")
    target = fields.pop("destination", None) or fields.pop("dst", None) or fields.pop("target", None)
    source = fields.pop("source", None) or fields.pop("src", None)
    readonly = fields.pop("ro", None) or fields.pop("readonly", None)
    if "ro" in flags or "readonly" in flags:
        flags = [f for f in flags if f not in ("ro", "readonly")]
        readonly = "true"
    if fields or flags or not target or not target.startswith("/"):
        raise Untranslatable(f"{option} {value}")
    options = ["ro"] if (readonly or "false").lower() == "true" else []
    if kind == "bind" and source and source.startswith("/"):
        return {"type": "bind", "source": source, "destination": target, "options": ["rbind", *options]}
    if kind == "tmpfs" and source is None:
        return {"type": "tmpfs", "source": "tmpfs", "destination": target, "options": options}
    raise Untranslatable(f"{option} {value}")


def _network(spec: dict[str, Any], option: str, value: str) -> None:
    if value in ("host", "none", "bridge", "private"):
        spec["netns"] = {"nsmode": value}
    elif value and ":" not in value and "," not in value:
        spec["netns"] = {"nsmode": "bridge"}
        spec.setdefault("Networks", {})[value] = {}
    else:
        raise Untranslatable(f"{option} {value}")
