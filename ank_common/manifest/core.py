"""Manifests: reading, Ankaios-compatible validation, normalisation, rendering.

Theory of operation. A manifest goes through four pure steps, each adding
path-named issues (`workloads.nginx.agent: ...`) instead of raising:

1. read: text -> plain mapping (ank_common.manifest.document: size, alias
   bombs, depth, YAML 1.2 scalars);
2. shape: the mapping -> `schemas.manifest.Manifest`, checking every field
   the way Eclipse Ankaios (v1.0/v1.1: the CLI's `ank apply`, its JSON
   Schema and the server's checks) does, and normalising `apiVersion: v0.1`
   (tags as a list of {key, value}, `filterMask`) to v1. Unknown fields are
   ignored like Ankaios ignores them, with a warning naming them;
3. cross-checks on the whole manifest: workload config references exist,
   no dependency cycle (dependencies on absent workloads are allowed);
4. render: the Handlebars templates of `runtimeConfig`, `agent` and `files`
   of every workload that has `configs`, then the rendered agent names.

A manifest with any error yields no Manifest at all (`Parsed.manifest is
None`): nothing of it can be applied. Where Ankaios and this module differ,
docs/manifest.md says so.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any, cast

import msgspec

from ank_common import digest
from ank_common.manifest.document import ManifestError, load_optional_document
from ank_common.manifest.templating import TemplateError, render_template
from ank_common.names import has_name_chars
from schemas.manifest import (
    AccessRule,
    ControlInterfaceAccess,
    FileItem,
    HealthCheck,
    Manifest,
    Scheduling,
    Workload,
)
from schemas.messages import ValidationIssue

CURRENT_API_VERSION = "v1"
PREVIOUS_API_VERSION = "v0.1"
MAX_FIELD_LENGTH = 63
ALLOWED_CHAR_SET = "[a-zA-Z0-9_-]"
CONSTRAINT_FIELD_DESCRIPTION = (
    "Only a-z, A-Z, 0-9 chars, underscore (_), and hyphen (-) allowed. Maximum length is 63 characters."
)
RESTART_POLICIES = ("NEVER", "ON_FAILURE", "ALWAYS")
ADD_CONDITIONS = ("ADD_COND_RUNNING", "ADD_COND_SUCCEEDED", "ADD_COND_FAILED")
RULE_OPERATIONS = ("Read", "Write", "ReadWrite")
KNOWN_RUNTIMES = ("podman", "podman-kube", "process")

_FILTER_MASK = re.compile(r"^(?:\*|[a-zA-Z0-9_-]+)(?:\.(?:\*|[a-zA-Z0-9_-]+))*$")
# Rust's str::trim (Unicode White_Space), which Ankaios applies to runtimeConfig.
_RUST_WHITESPACE = (
    " \t\n\x0b\x0c\r\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)

# Both rule kinds' fields: a normalised rule carries the other kind's empty ones.
_RULE_FIELDS = ("type", "operation", "filterMasks", "filterMask", "workloadNames")
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


class Parsed(msgspec.Struct):
    """The verdict on a manifest. Never raised: returned."""

    manifest: Manifest | None  # normalised, validated, templates kept; None on errors
    rendered: Manifest | None  # the same with templates rendered; None on errors
    errors: list[ValidationIssue] = []
    warnings: list[ValidationIssue] = []

    @property
    def ok(self) -> bool:
        return not self.errors


class _Issues:
    """Collects errors and warnings while a manifest is read."""

    def __init__(self) -> None:
        self.errors: list[ValidationIssue] = []
        self.warnings: list[ValidationIssue] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(ValidationIssue(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ValidationIssue(path, message))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# --- name rules (Ankaios's ankaios_api helpers and workload.rs) --------------


def _field_problem(value: str) -> str | None:
    """Ankaios's checks in order: not empty, allowed chars, length (bytes)."""
    if not value:
        return "Is empty."
    if not has_name_chars(value):
        return f"Expected to have characters in {ALLOWED_CHAR_SET}."
    length = len(value.encode("utf-8", errors="surrogatepass"))
    if length > MAX_FIELD_LENGTH:
        return f"Length {length} exceeds the maximum limit of {MAX_FIELD_LENGTH} characters."
    return None


def workload_name_problem(name: str) -> str | None:
    problem = _field_problem(name)
    return f"Unsupported workload name '{name}'. {problem}" if problem else None


def agent_name_problem(agent: str) -> str | None:
    # Ankaios checks only the characters of agent names (empty = not
    # scheduled); the length limit is not enforced for them.
    if has_name_chars(agent):
        return None
    return f"Unsupported agent name '{agent}'. {CONSTRAINT_FIELD_DESCRIPTION}"


def config_key_problem(key: str) -> str | None:
    if key and has_name_chars(key) and len(key.encode("utf-8", errors="surrogatepass")) <= MAX_FIELD_LENGTH:
        return None
    return f"Unsupported config item key '{key}'. {CONSTRAINT_FIELD_DESCRIPTION}"


def _log_rule_name_problem(name: str) -> str | None:
    wildcards = name.count("*")
    if wildcards > 1:
        return "Log rule validation failed: Expected at most one '*' symbol."
    if wildcards == 0:
        problem = workload_name_problem(name)
        return f"Log rule validation failed: {problem}" if problem else None
    prefix, suffix = name.split("*")
    length = len(name.encode("utf-8", errors="surrogatepass"))
    if length > MAX_FIELD_LENGTH + 1:
        reason = f"Filter length {length} exceeds the maximum limit of {MAX_FIELD_LENGTH + 1} characters."
    elif not has_name_chars(prefix) or not has_name_chars(suffix):
        reason = f"Expected to have characters in {ALLOWED_CHAR_SET}."
    else:
        return None
    return f"Log rule validation failed: Unsupported workload name filter with wildcard '{name}'. {reason}"


# --- shape: plain mapping -> normalised Structs ------------------------------


def _expect_str(value: Any, path: str, issues: _Issues) -> str | None:
    if isinstance(value, str):
        return value
    issues.error(path, f"expected a string, found {_type_name(value)}")
    return None


def _expect_mapping(value: Any, path: str, issues: _Issues) -> dict[str, Any] | None:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    issues.error(path, f"expected a mapping, found {_type_name(value)}")
    return None


def _expect_list(value: Any, path: str, issues: _Issues) -> list[Any] | None:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    issues.error(path, f"expected a list, found {_type_name(value)}")
    return None


def _warn_unknown(mapping: dict[str, Any], known: tuple[str, ...], path: str, issues: _Issues) -> None:
    for key in mapping:
        if key not in known:
            issues.warn(_join(path, key), f"unknown field '{key}' is ignored (as Ankaios ignores it)")


def _string_map(value: Any, path: str, issues: _Issues) -> dict[str, str]:
    mapping = _expect_mapping(value, path, issues)
    result: dict[str, str] = {}
    for key, item in (mapping or {}).items():
        text = _expect_str(item, _join(path, key), issues)
        if text is not None:
            result[key] = text
    return result


def _read_tags(value: Any, api_version: str, workload: str, path: str, issues: _Issues) -> dict[str, str]:
    if value is None:
        return {}
    if api_version == CURRENT_API_VERSION and not isinstance(value, dict):
        issues.error(
            path,
            f"For API version '{CURRENT_API_VERSION}', tags must be specified as a mapping (key-value pairs). "
            f"Found tags as {_type_name(value)} for workload '{workload}'.",
        )
        return {}
    if api_version == PREVIOUS_API_VERSION:
        if not isinstance(value, list):
            issues.error(
                path,
                f"For API version '{PREVIOUS_API_VERSION}', tags must be specified as a sequence (list of "
                f"key-value entries). Found tags as {_type_name(value)} for workload '{workload}'.",
            )
            return {}
        tags: dict[str, str] = {}
        for index, entry in enumerate(value):
            entry_path = f"{path}.{index}"
            entry_map = _expect_mapping(entry, entry_path, issues)
            if entry_map is None:
                continue
            key, text = entry_map.get("key"), entry_map.get("value")
            if not isinstance(key, str) or not isinstance(text, str):
                issues.error(entry_path, "a v0.1 tag is a mapping with the string fields 'key' and 'value'")
                continue
            tags[key] = text
        return tags
    return _string_map(value, path, issues)


def _read_dependencies(value: Any, path: str, issues: _Issues) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, condition in (_expect_mapping(value, path, issues) or {}).items():
        if condition not in ADD_CONDITIONS:
            issues.error(
                _join(path, name),
                f"unknown dependency condition {condition!r}, expected one of {', '.join(ADD_CONDITIONS)}",
            )
            continue
        result[name] = condition
    return result


def _read_workload_configs(value: Any, path: str, issues: _Issues) -> dict[str, str]:
    result: dict[str, str] = {}
    for alias, reference in _string_map(value, path, issues).items():
        if _field_problem(alias):
            issues.error(_join(path, alias), f"Unsupported config alias '{alias}'. {CONSTRAINT_FIELD_DESCRIPTION}")
        elif _field_problem(reference):
            issues.error(
                _join(path, alias), f"Unsupported config reference key '{reference}'. {CONSTRAINT_FIELD_DESCRIPTION}"
            )
        else:
            result[alias] = reference
    return result


def _read_files(value: Any, path: str, issues: _Issues) -> list[FileItem]:
    files: list[FileItem] = []
    for index, entry in enumerate(_expect_list(value, path, issues) or []):
        entry_path = f"{path}.{index}"
        entry_map = _expect_mapping(entry, entry_path, issues)
        if entry_map is None:
            continue
        _warn_unknown(entry_map, ("mountPoint", "data", "binaryData"), entry_path, issues)
        if "mountPoint" not in entry_map:
            issues.error(entry_path, "missing field 'mountPoint'")
            continue
        mount_point = _expect_str(entry_map["mountPoint"], f"{entry_path}.mountPoint", issues)
        # A normalised file carries the other kind as null.
        has_data, has_binary = entry_map.get("data") is not None, entry_map.get("binaryData") is not None
        if has_data == has_binary:
            issues.error(entry_path, "a file has exactly one of 'data' (text) or 'binaryData' (base64)")
            continue
        key = "data" if has_data else "binaryData"
        content = _expect_str(entry_map[key], f"{entry_path}.{key}", issues)
        if mount_point is None or content is None:
            continue
        if has_data:
            files.append(FileItem(mount_point=mount_point, data=content))
        else:
            files.append(FileItem(mount_point=mount_point, binary_data=content))
    return files


def _read_rule(entry: Any, api_version: str, path: str, issues: _Issues) -> AccessRule | None:
    rule = _expect_mapping(entry, path, issues)
    if rule is None:
        return None
    rule_type = rule.get("type")
    if rule_type == "StateRule":
        _warn_unknown(rule, _RULE_FIELDS, path, issues)
        operation = rule.get("operation")
        if operation not in RULE_OPERATIONS:
            issues.error(
                f"{path}.operation", f"unknown operation {operation!r}, expected one of {', '.join(RULE_OPERATIONS)}"
            )
            return None
        if "filterMask" in rule and api_version == CURRENT_API_VERSION:
            issues.error(f"{path}.filterMask", "'filterMask' is the v0.1 spelling: apiVersion v1 uses 'filterMasks'")
            return None
        masks_key = "filterMasks" if "filterMasks" in rule else "filterMask"
        if masks_key not in rule:
            issues.error(path, "missing field 'filterMasks'")
            return None
        masks: list[str] = []
        for index, mask in enumerate(_expect_list(rule[masks_key], f"{path}.{masks_key}", issues) or []):
            mask_path = f"{path}.{masks_key}.{index}"
            text = _expect_str(mask, mask_path, issues)
            if text is None:
                continue
            if not text:
                issues.error(mask_path, "Empty filter masks are not allowed in Control Interface access rules")
            elif not _FILTER_MASK.match(text):
                issues.error(
                    mask_path,
                    f"Unsupported filter mask '{text}'. Only \".\" separated sequences allowed where each part is "
                    f'either a wildcard "*" or chars in {ALLOWED_CHAR_SET}',
                )
            else:
                masks.append(text)
        return AccessRule(type="StateRule", operation=operation, filter_masks=masks)
    if rule_type == "LogRule":
        _warn_unknown(rule, _RULE_FIELDS, path, issues)
        names: list[str] = []
        for index, name in enumerate(_expect_list(rule.get("workloadNames"), f"{path}.workloadNames", issues) or []):
            name_path = f"{path}.workloadNames.{index}"
            text = _expect_str(name, name_path, issues)
            if text is None:
                continue
            problem = _log_rule_name_problem(text)
            if problem:
                issues.error(name_path, problem)
            else:
                names.append(text)
        return AccessRule(type="LogRule", workload_names=names)
    issues.error(f"{path}.type", f"unknown rule type {rule_type!r}, expected 'StateRule' or 'LogRule'")
    return None


def _read_access(value: Any, api_version: str, path: str, issues: _Issues) -> ControlInterfaceAccess | None:
    access = _expect_mapping(value, path, issues)
    if access is None:
        return None
    _warn_unknown(access, ("allowRules", "denyRules"), path, issues)
    lists: dict[str, list[AccessRule]] = {}
    for key in ("allowRules", "denyRules"):
        rules: list[AccessRule] = []
        for index, entry in enumerate(_expect_list(access.get(key), f"{path}.{key}", issues) or []):
            rule = _read_rule(entry, api_version, f"{path}.{key}.{index}", issues)
            if rule is not None:
                rules.append(rule)
        lists[key] = rules
    if not lists["allowRules"] and not lists["denyRules"]:
        return None  # Ankaios treats an access without rules as none at all
    return ControlInterfaceAccess(allow_rules=lists["allowRules"], deny_rules=lists["denyRules"])


def _read_extension(value: Any, kind: type[HealthCheck] | type[Scheduling], path: str, issues: _Issues) -> Any:
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


def _read_workload(
    name: str, value: Any, api_version: str, cli_agent: str | None, path: str, issues: _Issues
) -> Workload | None:
    problem = workload_name_problem(name)
    if problem:
        issues.error(path, problem)
    fields = _expect_mapping(value, path, issues)
    if fields is None:
        return None
    errors_before = len(issues.errors)
    _warn_unknown(fields, WORKLOAD_FIELDS, path, issues)

    runtime = runtime_config = None
    for key in ("runtime", "runtimeConfig"):
        if key not in fields:
            issues.error(path, f"missing field '{key}'")
    if "runtime" in fields:
        runtime = _expect_str(fields["runtime"], f"{path}.runtime", issues)
        if runtime is not None and runtime not in KNOWN_RUNTIMES:
            issues.warn(
                f"{path}.runtime",
                f"runtime '{runtime}' is not one of {', '.join(KNOWN_RUNTIMES)}: the agent will report the workload "
                "as Pending(StartingFailed)",
            )
    if "runtimeConfig" in fields:
        runtime_config = _expect_str(fields["runtimeConfig"], f"{path}.runtimeConfig", issues)

    # `ank apply --agent NAME` sets the agent of every workload of the
    # manifest, as Ankaios's CLI does; without it each workload needs one.
    agent: str | None
    if cli_agent is not None:
        agent = cli_agent
    elif "agent" in fields and fields["agent"] is not None:
        agent = _expect_str(fields["agent"], f"{path}.agent", issues)
        # A templated agent is checked once rendered; a plain one now, so
        # its error is reported along with the others.
        problem = agent_name_problem(agent) if agent is not None and "{{" not in agent else None
        if problem:
            issues.error(f"{path}.agent", problem)
    else:
        issues.error(f"{path}.agent", "No agent name specified -> use '--agent' option to specify!")
        agent = None

    restart_policy = fields.get("restartPolicy")
    if restart_policy is None:
        restart_policy = "NEVER"
    elif restart_policy not in RESTART_POLICIES:
        issues.error(
            f"{path}.restartPolicy",
            f"unknown restart policy {restart_policy!r}, expected one of {', '.join(RESTART_POLICIES)}",
        )

    dependencies = _read_dependencies(fields.get("dependencies"), f"{path}.dependencies", issues)
    tags = _read_tags(fields.get("tags"), api_version, name, f"{path}.tags", issues)
    configs = _read_workload_configs(fields.get("configs"), f"{path}.configs", issues)
    files = _read_files(fields.get("files"), f"{path}.files", issues)
    access = _read_access(fields.get("controlInterfaceAccess"), api_version, f"{path}.controlInterfaceAccess", issues)
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


def _check_config_item(value: Any, path: str, issues: _Issues) -> None:
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
                issues.error(_join(path, key), problem)
            else:
                _check_config_item(item, _join(path, key), issues)
        return
    issues.error(path, f"a config value is a string, a list or a mapping, not {_type_name(value)} (quote it)")


def _read_api_version(document: dict[str, Any], path: str, issues: _Issues) -> str | None:
    if "apiVersion" not in document:
        issues.error(path, f"missing field 'apiVersion' (expected '{CURRENT_API_VERSION}')")
        return None
    version = document["apiVersion"]
    if version == CURRENT_API_VERSION:
        return CURRENT_API_VERSION
    if version == PREVIOUS_API_VERSION:
        issues.warn(
            _join(path, "apiVersion"),
            f"The manifest API version '{PREVIOUS_API_VERSION}' is deprecated and support will be removed in future "
            f"releases. Please update to the latest API version '{CURRENT_API_VERSION}'.",
        )
        return PREVIOUS_API_VERSION
    issues.error(
        _join(path, "apiVersion"),
        f"Invalid manifest API version provided. Expected '{CURRENT_API_VERSION}', got: '{version}'.",
    )
    return None


def _shape(
    document: dict[str, Any], cli_agent: str | None, issues: _Issues, path: str = "", partial: bool = False
) -> Manifest | None:
    """Steps 2 and 3: the whole mapping to a normalised v1 Manifest."""
    _warn_unknown(document, ("apiVersion", "workloads", "configs"), path, issues)
    api_version = _read_api_version(document, path, issues)
    workloads_map = _expect_mapping(document.get("workloads"), _join(path, "workloads"), issues)
    configs = _expect_mapping(document.get("configs"), _join(path, "configs"), issues)
    for key, item in (configs or {}).items():
        problem = config_key_problem(key)
        if problem:
            issues.error(_join(_join(path, "configs"), key), problem)
        else:
            _check_config_item(item, _join(_join(path, "configs"), key), issues)

    workloads: dict[str, Workload] = {}
    for name, value in (workloads_map or {}).items():
        workload = _read_workload(
            name, value, api_version or CURRENT_API_VERSION, cli_agent, _join(_join(path, "workloads"), name), issues
        )
        if workload is not None:
            workloads[name] = workload

    # A partial state (the input of `ank set state` with masks) may refer to
    # what the current state has: these checks then only warn, and run
    # again, as errors, on the state the masks produce.
    report = issues.warn if partial else issues.error
    suffix = " (checked again on the state after the update masks)" if partial else ""
    for name, workload in workloads.items():
        for alias, key in workload.configs.items():
            if configs is not None and key not in configs:
                report(
                    _join(path, f"workloads.{name}.configs.{alias}"),
                    f"Workload references config key '{key}' that does not exist{suffix}",
                )
    cycle = find_dependency_cycle(workloads)
    if cycle:
        report(
            _join(path, f"workloads.{cycle[0]}.dependencies"),
            f"workload dependency '{cycle[0]}' is part of a cycle: {' -> '.join(cycle)}{suffix}",
        )
    if issues.errors or api_version is None or configs is None:
        return None
    return Manifest(api_version="v1", workloads=workloads, configs=configs)


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


# --- step 4: rendering ----------------------------------------------------------


def _render_workload(
    name: str, workload: Workload, configs: dict[str, Any], issues: _Issues, path: str
) -> Workload | None:
    """Renders one workload like Ankaios's ConfigRenderer: only workloads with
    configs, runtimeConfig then agent then files; the result has no
    `configs` (they are consumed)."""
    if workload.configs:
        data: dict[str, Any] = {}
        for alias, key in workload.configs.items():
            if key not in configs:
                issues.error(f"{path}.configs.{alias}", f"Workload references config key '{key}' that does not exist")
                return None
            data[alias] = configs[key]

        def render(source: str, field: str, field_path: str) -> str | None:
            try:
                return render_template(source, data)
            except TemplateError as err:
                issues.error(field_path, f"Failed to render field '{field}': '{err}'")
                return None

        runtime_config = render(workload.runtime_config, "runtimeConfig", f"{path}.runtimeConfig")
        agent = render(workload.agent, "agent", f"{path}.agent") if workload.agent is not None else None
        files: list[FileItem] = []
        for index, item in enumerate(workload.files):
            field = f"files with mount point {item.mount_point}"
            if item.data is not None:
                text = render(item.data, field, f"{path}.files.{index}.data")
                files.append(msgspec.structs.replace(item, data=text))
            elif item.binary_data is not None:
                text = render(item.binary_data, field, f"{path}.files.{index}.binaryData")
                files.append(msgspec.structs.replace(item, binary_data=text))
        if runtime_config is None or (workload.agent is not None and agent is None):
            return None
        if any(f.data is None and f.binary_data is None for f in files):
            return None
        workload = msgspec.structs.replace(
            workload, runtime_config=runtime_config, agent=agent, files=files, configs={}
        )
    if workload.agent is not None:
        problem = agent_name_problem(workload.agent)
        if problem:
            issues.error(f"{path}.agent", problem)
            return None
    return workload


def _render(manifest: Manifest, issues: _Issues, path: str = "") -> Manifest | None:
    rendered: dict[str, Workload] = {}
    for name, workload in manifest.workloads.items():
        result = _render_workload(name, workload, manifest.configs, issues, _join(path, f"workloads.{name}"))
        if result is not None:
            rendered[name] = result
    if issues.errors:
        return None
    return msgspec.structs.replace(manifest, workloads=rendered)


def render_manifest(m: Manifest) -> tuple[Manifest | None, list[ValidationIssue]]:
    """Renders the templates of `m` with its configs; (rendered, errors)."""
    issues = _Issues()
    return _render(m, issues), issues.errors


# --- entry points ------------------------------------------------------------------


def _verdict(
    document: dict[str, Any] | None, cli_agent: str | None, issues: _Issues, path: str = "", partial: bool = False
) -> Parsed:
    if document is None:
        return Parsed(None, None, issues.errors, issues.warnings)
    manifest = _shape(document, cli_agent, issues, path, partial)
    if partial and manifest is not None:
        render_issues = _Issues()
        rendered = _render(manifest, render_issues, path)
        for issue in render_issues.errors:
            issues.warn(issue.path, f"{issue.message} (checked again on the state after the update masks)")
        return Parsed(manifest, rendered, issues.errors, issues.warnings)
    rendered = _render(manifest, issues, path) if manifest is not None else None
    if rendered is None:
        return Parsed(None, None, issues.errors, issues.warnings)
    return Parsed(manifest, rendered, issues.errors, issues.warnings)


def _read(data: bytes | str, issues: _Issues) -> tuple[bool, dict[str, Any] | None]:
    """(readable, mapping or None when empty)."""
    try:
        return True, load_optional_document(data)
    except ManifestError as err:
        issues.error(err.path, err.message)
        return False, None


def parse_manifest(data: bytes | str, *, agent: str | None = None) -> Parsed:
    """Reads, validates, normalises and renders a manifest (`ank apply`).

    `agent`: the CLI's `--agent` (None: not given; "": NotScheduled)."""
    issues = _Issues()
    try:
        readable, document = _read(data, issues)
        if readable and document is None:
            issues.error("", "the document is empty")
        if document is not None and "desiredState" in document and "apiVersion" not in document:
            issues.error(
                "desiredState",
                "a 'desiredState:' document is the input of `ank set state`, not a manifest: "
                "put 'apiVersion' and 'workloads' at the top level",
            )
            document = None
        return _verdict(document, agent, issues)
    except Exception as err:  # never raise on input, whatever it is; keep the cause visible
        issues.error("", f"internal error while reading the manifest: {type(err).__name__}: {err}")
        return Parsed(None, None, issues.errors, issues.warnings)


def parse_state_file(data: bytes | str, agent: str | None = None) -> Parsed:
    """Reads a file whose top level is `desiredState:` (the input of Ankaios's
    `ank set state`). An empty file is an empty state (masks then remove
    what they name). Such a file may be partial: references to configs it
    lacks, cycles and templates that do not render are warnings here and
    errors in `apply_update_masks`, which checks the state the masks
    produce; `rendered` is None when the file alone does not render."""
    issues = _Issues()
    try:
        readable, document = _read(data, issues)
        if not readable:
            return Parsed(None, None, issues.errors, issues.warnings)
        if document is None:
            empty = Manifest(api_version="v1")
            return Parsed(empty, empty, issues.errors, issues.warnings)
        _warn_unknown(document, ("desiredState",), "", issues)
        state = document.get("desiredState")
        if state is None:
            issues.error("desiredState", "missing field 'desiredState'")
            return Parsed(None, None, issues.errors, issues.warnings)
        if not isinstance(state, dict):
            issues.error("desiredState", f"expected a mapping, found {_type_name(state)}")
            return Parsed(None, None, issues.errors, issues.warnings)
        return _verdict(state, agent, issues, "desiredState", partial=True)
    except Exception as err:  # never raise on input
        issues.error("", f"internal error while reading the state: {type(err).__name__}: {err}")
        return Parsed(None, None, issues.errors, issues.warnings)


# Looked up once: msgspec.structs.fields() reads the class annotations on
# every call (most of an apply's cost at 10,000 workloads).
_WORKLOAD_FIELDS = msgspec.structs.fields(Workload)


def instance_id(w: Workload) -> str:
    """A short stable hash of the (rendered) workload: equal workloads have
    equal ids, any change to any field changes it."""
    canonical = {
        field.encode_name: getattr(w, field.name)
        for field in _WORKLOAD_FIELDS
        if not _is_default(field, getattr(w, field.name))
    }
    encoded = msgspec.json.encode(canonical, order="sorted")
    return digest.sha256(encoded).hexdigest()[:16]


def _is_default(field: msgspec.structs.FieldInfo, value: Any) -> bool:
    """Whether a field holds its default, compared by value (msgspec's own
    omit_defaults compares some values by identity)."""
    if field.default is not msgspec.NODEFAULT:
        return bool(value == field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return bool(value == field.default_factory())
    return False


# --- update masks (`ank set state`) -------------------------------------------------

_MaskOp = Callable[[dict[str, Any], list[str]], None]


def _mask_get(tree: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return False, None
    return True, tree


def _mask_set(tree: dict[str, Any], parts: list[str], value: Any) -> bool:
    """Ankaios's Object::set: missing intermediate mappings are created."""
    for part in parts[:-1]:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            return False
        tree = child
    tree[parts[-1]] = value
    return True


def _mask_remove(tree: dict[str, Any], parts: list[str]) -> bool:
    """Ankaios's Object::remove: the parent must be a mapping; a missing key
    is not an error."""
    found, parent = _mask_get(tree, parts[:-1])
    if not found or not isinstance(parent, dict):
        return False
    parent.pop(parts[-1], None)
    return True


def apply_update_masks(current: Manifest, new: Manifest, masks: list[str]) -> Parsed:
    """Ankaios's `ank set state` semantics: for each mask (`desiredState`,
    `desiredState.workloads`, `desiredState.workloads.NAME`,
    `desiredState.configs`, `desiredState.configs.NAME`, or any deeper
    path), the value at that path in `new` replaces the one in `current`, or
    is removed when `new` has none. No masks: `new` replaces everything. The
    result is validated as a whole."""
    issues = _Issues()
    if not masks:
        document: dict[str, Any] = msgspec.to_builtins(new)
        return _verdict(document, None, issues)
    tree: dict[str, Any] = {"desiredState": msgspec.to_builtins(current)}
    source: dict[str, Any] = {"desiredState": msgspec.to_builtins(new)}
    for mask in masks:
        parts = mask.split(".")
        if parts[0] != "desiredState" or any(not part for part in parts) or "*" in parts:
            issues.error(mask, "unsupported update mask: expected 'desiredState' or a path below it, without '*'")
            continue
        found, value = _mask_get(source, parts)
        if len(parts) == 1:
            tree["desiredState"] = value if found else {}
            continue
        if not (_mask_set(tree, parts, value) if found else _mask_remove(tree, parts)):
            issues.error(mask, f"Could not find field {mask}")
    if issues.errors:
        return Parsed(None, None, issues.errors, issues.warnings)
    state = tree.get("desiredState")
    if not isinstance(state, dict):
        issues.error("desiredState", f"expected a mapping, found {_type_name(state)}")
        return Parsed(None, None, issues.errors, issues.warnings)
    # Agents are already resolved in both inputs; "desiredState" is not part
    # of the reported paths (they name manifest fields).
    return _verdict(state, None, issues)
