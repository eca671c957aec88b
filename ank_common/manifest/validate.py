"""Steps 2 and 3 of reading a manifest: its shape and its cross-checks.

Shape: the plain mapping -> `schemas.manifest.Manifest`, checking every
field the way Eclipse Ankaios (v1.0/v1.1: the CLI's `ank apply`, its JSON
Schema and the server's checks) does, with its messages, and normalising
`apiVersion: v0.1` (tags as a list of {key, value}, `filterMask`) to v1.
Unknown fields are ignored like Ankaios ignores them, with a warning naming
them. Cross-checks on the whole manifest: workload config references exist,
no dependency cycle (dependencies on absent workloads are allowed).
"""

from __future__ import annotations

import re
import sys
from typing import Any, cast

import msgspec

from ank_common.manifest.access_rules import read_access
from ank_common.manifest.issues import (
    Issues,
    expect_list,
    expect_mapping,
    expect_str,
    join_path,
    type_name,
    warn_unknown,
)
from ank_common.manifest.name_rules import (
    CONSTRAINT_FIELD_DESCRIPTION,
    agent_name_problem,
    config_key_problem,
    field_problem,
    workload_name_problem,
)
from schemas.manifest import FileItem, HealthCheck, Manifest, Scheduling, Workload

CURRENT_API_VERSION = "v1"
PREVIOUS_API_VERSION = "v0.1"
RESTART_POLICIES = ("NEVER", "ON_FAILURE", "ALWAYS")
ADD_CONDITIONS = ("ADD_COND_RUNNING", "ADD_COND_SUCCEEDED", "ADD_COND_FAILED")
KNOWN_RUNTIMES = ("podman", "podman-kube", "process")

# Rust's str::trim (Unicode White_Space), which Ankaios applies to runtimeConfig.
_RUST_WHITESPACE = (
    " \t\n\x0b\x0c\r\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)

WORKLOAD_FIELDS = (
    "runtime",
    "runtimeConfig",
    "agent",
    "restartPolicy",
    "dependencies",
    "tags",
    "configs",
    "files",
    "controlInterfaceAccess",
    "healthCheck",
    "scheduling",
)


# --- the whole manifest ------------------------------------------------------


def shape_manifest(
    document: dict[str, Any], cli_agent: str | None, issues: Issues, path: str = "", partial: bool = False
) -> Manifest | None:
    """Steps 2 and 3: the whole mapping to a normalised v1 Manifest, or None
    after an error. `partial`: the cross-checks only warn (see
    `_cross_check`)."""
    warn_unknown(document, ("apiVersion", "workloads", "configs"), path, issues)
    api_version = _read_api_version(document, path, issues)
    workloads_map = expect_mapping(document.get("workloads"), join_path(path, "workloads"), issues)
    configs = _read_configs(document.get("configs"), join_path(path, "configs"), issues)
    workloads = _read_workloads(
        workloads_map or {}, api_version or CURRENT_API_VERSION, cli_agent, join_path(path, "workloads"), issues
    )
    _cross_check(workloads, configs, path, issues, partial)
    if issues.errors or api_version is None or configs is None:
        return None
    return Manifest(api_version="v1", workloads=workloads, configs=configs)


def _read_api_version(document: dict[str, Any], path: str, issues: Issues) -> str | None:
    if "apiVersion" not in document:
        issues.error(path, f"missing field 'apiVersion' (expected '{CURRENT_API_VERSION}')")
        return None
    version = document["apiVersion"]
    if version == CURRENT_API_VERSION:
        return CURRENT_API_VERSION
    if version == PREVIOUS_API_VERSION:
        issues.warn(
            join_path(path, "apiVersion"),
            f"The manifest API version '{PREVIOUS_API_VERSION}' is deprecated and support will be removed in future "
            f"releases. Please update to the latest API version '{CURRENT_API_VERSION}'.",
        )
        return PREVIOUS_API_VERSION
    issues.error(
        join_path(path, "apiVersion"),
        f"Invalid manifest API version provided. Expected '{CURRENT_API_VERSION}', got: '{version}'.",
    )
    return None


def _read_configs(value: Any, path: str, issues: Issues) -> dict[str, Any] | None:
    configs = expect_mapping(value, path, issues)
    for key, item in (configs or {}).items():
        problem = config_key_problem(key)
        if problem:
            issues.error(join_path(path, key), problem)
        else:
            _check_config_item(item, join_path(path, key), issues)
    return configs


def _check_config_item(value: Any, path: str, issues: Issues) -> None:
    """Config items are strings, lists of items or maps of items with
    Ankaios-conforming keys."""
    if isinstance(value, str):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_config_item(item, f"{path}.{index}", issues)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            problem = config_key_problem(key)
            if problem:
                issues.error(join_path(path, key), problem)
            else:
                _check_config_item(item, join_path(path, key), issues)
        return
    issues.error(path, f"a config value is a string, a list or a mapping, not {type_name(value)} (quote it)")


def _read_workloads(
    workloads_map: dict[str, Any], api_version: str, cli_agent: str | None, path: str, issues: Issues
) -> dict[str, Workload]:
    workloads: dict[str, Workload] = {}
    for name, value in workloads_map.items():
        workload = _read_workload(name, value, api_version, cli_agent, join_path(path, name), issues)
        if workload is not None:
            workloads[name] = workload
    return workloads


def _cross_check(
    workloads: dict[str, Workload], configs: dict[str, Any] | None, path: str, issues: Issues, partial: bool
) -> None:
    """Config references exist; no dependency cycle. A partial state (the
    input of `ank set state` with masks) may refer to what the current state
    has: these checks then only warn, and run again, as errors, on the state
    the masks produce."""
    report = issues.warn if partial else issues.error
    suffix = " (checked again on the state after the update masks)" if partial else ""
    for name, workload in workloads.items():
        for alias, key in workload.configs.items():
            if configs is not None and key not in configs:
                report(
                    join_path(path, f"workloads.{name}.configs.{alias}"),
                    f"Workload references config key '{key}' that does not exist{suffix}",
                )
    cycle = find_dependency_cycle(workloads)
    if cycle:
        report(
            join_path(path, f"workloads.{cycle[0]}.dependencies"),
            f"workload dependency '{cycle[0]}' is part of a cycle: {' -> '.join(cycle)}{suffix}",
        )


def find_dependency_cycle(workloads: dict[str, Workload]) -> list[str] | None:
    """The first dependency cycle found (names, first repeated at the end),
    visiting names in sorted order so the answer is stable; dependencies on
    workloads that do not exist end a path (Ankaios allows them)."""
    done: set[str] = set()
    for start in sorted(workloads):
        if start in done:
            continue
        # Iterative DFS: (node, sorted dependencies still to visit).
        path: list[str] = [start]
        on_path = {start}
        stack: list[list[str]] = [sorted(workloads[start].dependencies, reverse=True)]
        while stack:
            pending = stack[-1]
            if not pending:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
                continue
            dep = pending.pop()
            if dep in on_path:
                return [*path[path.index(dep) :], dep]
            if dep in done or dep not in workloads:
                continue
            path.append(dep)
            on_path.add(dep)
            stack.append(sorted(workloads[dep].dependencies, reverse=True))
    return None


# --- one workload ---------------------------------------------------------------


def _read_workload(
    name: str, value: Any, api_version: str, cli_agent: str | None, path: str, issues: Issues
) -> Workload | None:
    problem = workload_name_problem(name)
    if problem:
        issues.error(path, problem)
    fields = expect_mapping(value, path, issues)
    if fields is None:
        return None
    errors_before = len(issues.errors)
    warn_unknown(fields, WORKLOAD_FIELDS, path, issues)
    runtime, runtime_config = _read_runtime(fields, path, issues)
    agent = _read_agent(fields, cli_agent, path, issues)
    restart_policy = _read_restart_policy(fields.get("restartPolicy"), f"{path}.restartPolicy", issues)
    dependencies = _read_dependencies(fields.get("dependencies"), f"{path}.dependencies", issues)
    tags = _read_tags(fields.get("tags"), api_version, name, f"{path}.tags", issues)
    configs = _read_workload_configs(fields.get("configs"), f"{path}.configs", issues)
    files = _read_files(fields.get("files"), f"{path}.files", issues)
    v0_1 = api_version == PREVIOUS_API_VERSION
    access = read_access(fields.get("controlInterfaceAccess"), v0_1, f"{path}.controlInterfaceAccess", issues)
    health_check = _read_extension(fields.get("healthCheck"), HealthCheck, f"{path}.healthCheck", issues)
    scheduling = _read_extension(fields.get("scheduling"), Scheduling, f"{path}.scheduling", issues)

    if len(issues.errors) > errors_before or runtime is None or runtime_config is None:
        return None
    return Workload(
        runtime=runtime,
        runtime_config=runtime_config.strip(_RUST_WHITESPACE),
        agent=agent,
        # Interned so an explicit default equals the implicit one when encoded.
        restart_policy=cast(Any, sys.intern(restart_policy)),
        dependencies=cast(Any, dependencies),
        tags=tags,
        configs=configs,
        files=files,
        control_interface_access=access,
        health_check=health_check,
        scheduling=scheduling,
    )


def _read_runtime(fields: dict[str, Any], path: str, issues: Issues) -> tuple[str | None, str | None]:
    """(runtime, runtimeConfig): both are required."""
    runtime = runtime_config = None
    for key in ("runtime", "runtimeConfig"):
        if key not in fields:
            issues.error(path, f"missing field '{key}'")
    if "runtime" in fields:
        runtime = expect_str(fields["runtime"], f"{path}.runtime", issues)
        if runtime is not None and runtime not in KNOWN_RUNTIMES:
            issues.warn(
                f"{path}.runtime",
                f"runtime '{runtime}' is not one of {', '.join(KNOWN_RUNTIMES)}: the agent will report the workload "
                "as Pending(StartingFailed)",
            )
    if "runtimeConfig" in fields:
        runtime_config = expect_str(fields["runtimeConfig"], f"{path}.runtimeConfig", issues)
    return runtime, runtime_config


def _read_agent(fields: dict[str, Any], cli_agent: str | None, path: str, issues: Issues) -> str | None:
    # `ank apply --agent NAME` sets the agent of every workload of the
    # manifest, as Ankaios's CLI does; without it each workload needs one.
    if cli_agent is not None:
        return cli_agent
    if "agent" in fields and fields["agent"] is not None:
        agent = expect_str(fields["agent"], f"{path}.agent", issues)
        # A templated agent is checked once rendered; a plain one now, so
        # its error is reported along with the others.
        problem = agent_name_problem(agent) if agent is not None and "{{" not in agent else None
        if problem:
            issues.error(f"{path}.agent", problem)
        return agent
    issues.error(f"{path}.agent", "No agent name specified -> use '--agent' option to specify!")
    return None


def _read_restart_policy(value: Any, path: str, issues: Issues) -> Any:
    """The policy (absent: NEVER); a value after an error is never used."""
    if value is None:
        return "NEVER"
    if value not in RESTART_POLICIES:
        issues.error(path, f"unknown restart policy {value!r}, expected one of {', '.join(RESTART_POLICIES)}")
    return value


def _string_map(value: Any, path: str, issues: Issues) -> dict[str, str]:
    mapping = expect_mapping(value, path, issues)
    result: dict[str, str] = {}
    for key, item in (mapping or {}).items():
        text = expect_str(item, join_path(path, key), issues)
        if text is not None:
            result[key] = text
    return result


def _read_tags(value: Any, api_version: str, workload: str, path: str, issues: Issues) -> dict[str, str]:
    if value is None:
        return {}
    if api_version == CURRENT_API_VERSION and not isinstance(value, dict):
        issues.error(
            path,
            f"For API version '{CURRENT_API_VERSION}', tags must be specified as a mapping (key-value pairs). "
            f"Found tags as {type_name(value)} for workload '{workload}'.",
        )
        return {}
    if api_version == PREVIOUS_API_VERSION:
        return _read_v0_1_tags(value, workload, path, issues)
    return _string_map(value, path, issues)


def _read_v0_1_tags(value: Any, workload: str, path: str, issues: Issues) -> dict[str, str]:
    """v0.1 tags: a list of {key, value}."""
    if not isinstance(value, list):
        issues.error(
            path,
            f"For API version '{PREVIOUS_API_VERSION}', tags must be specified as a sequence (list of "
            f"key-value entries). Found tags as {type_name(value)} for workload '{workload}'.",
        )
        return {}
    tags: dict[str, str] = {}
    for index, entry in enumerate(value):
        entry_path = f"{path}.{index}"
        entry_map = expect_mapping(entry, entry_path, issues)
        if entry_map is None:
            continue
        key, text = entry_map.get("key"), entry_map.get("value")
        if not isinstance(key, str) or not isinstance(text, str):
            issues.error(entry_path, "a v0.1 tag is a mapping with the string fields 'key' and 'value'")
            continue
        tags[key] = text
    return tags


def _read_dependencies(value: Any, path: str, issues: Issues) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, condition in (expect_mapping(value, path, issues) or {}).items():
        if condition not in ADD_CONDITIONS:
            issues.error(
                join_path(path, name),
                f"unknown dependency condition {condition!r}, expected one of {', '.join(ADD_CONDITIONS)}",
            )
            continue
        result[name] = condition
    return result


def _read_workload_configs(value: Any, path: str, issues: Issues) -> dict[str, str]:
    result: dict[str, str] = {}
    for alias, reference in _string_map(value, path, issues).items():
        if field_problem(alias):
            issues.error(join_path(path, alias), f"Unsupported config alias '{alias}'. {CONSTRAINT_FIELD_DESCRIPTION}")
        elif field_problem(reference):
            issues.error(
                join_path(path, alias),
                f"Unsupported config reference key '{reference}'. {CONSTRAINT_FIELD_DESCRIPTION}",
            )
        else:
            result[alias] = reference
    return result


def _read_files(value: Any, path: str, issues: Issues) -> list[FileItem]:
    files: list[FileItem] = []
    for index, entry in enumerate(expect_list(value, path, issues) or []):
        item = _read_file(entry, f"{path}.{index}", issues)
        if item is not None:
            files.append(item)
    return files


def _read_file(entry: Any, path: str, issues: Issues) -> FileItem | None:
    entry_map = expect_mapping(entry, path, issues)
    if entry_map is None:
        return None
    warn_unknown(entry_map, ("mountPoint", "data", "binaryData"), path, issues)
    if "mountPoint" not in entry_map:
        issues.error(path, "missing field 'mountPoint'")
        return None
    mount_point = expect_str(entry_map["mountPoint"], f"{path}.mountPoint", issues)
    # A normalised file carries the other kind as null.
    has_data, has_binary = entry_map.get("data") is not None, entry_map.get("binaryData") is not None
    if has_data == has_binary:
        issues.error(path, "a file has exactly one of 'data' (text) or 'binaryData' (base64)")
        return None
    key = "data" if has_data else "binaryData"
    content = expect_str(entry_map[key], f"{path}.{key}", issues)
    if mount_point is None or content is None:
        return None
    if has_data:
        return FileItem(mount_point=mount_point, data=content)
    return FileItem(mount_point=mount_point, binary_data=content)


def _read_extension(value: Any, kind: type[HealthCheck] | type[Scheduling], path: str, issues: Issues) -> Any:
    """This project's extensions (`healthCheck`, `scheduling`): decoded by
    msgspec, its error paths made ours."""
    if value is None:
        return None
    try:
        extension = msgspec.convert(value, kind)
    except msgspec.ValidationError as err:
        # msgspec's paths look like `$.retries`; make them ours.
        message = str(err)
        match = re.search(r" - at `\$(.*)`$", message)
        if match:
            return issues.error(path + match.group(1).replace("[", ".").replace("]", ""), message[: match.start()])
        return issues.error(path, message)
    if isinstance(extension, HealthCheck):
        probes = [p for p in (extension.exec, extension.tcp, extension.http, extension.zenoh) if p is not None]
        if len(probes) != 1:
            issues.error(path, "a healthCheck has exactly one of 'exec', 'tcp', 'http' or 'zenoh'")
            return None
    return extension
