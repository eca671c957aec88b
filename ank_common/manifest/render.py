"""Step 4 of reading a manifest: rendering, like Ankaios's ConfigRenderer.

The Handlebars templates of `runtimeConfig`, `agent` and `files` of every
workload that has `configs` are rendered with the configs it names
(templating.py is the template engine; this module decides what is
rendered with what), then the rendered agent names are checked.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ank_common.manifest.issues import Issues, join_path
from ank_common.manifest.name_rules import agent_name_problem
from ank_common.manifest.templating import TemplateError, render_template
from schemas.manifest import FileItem, Manifest, Workload
from schemas.messages import ValidationIssue


def render_manifest(m: Manifest) -> tuple[Manifest | None, list[ValidationIssue]]:
    """Renders the templates of `m` with its configs; (rendered, errors)."""
    issues = Issues()
    return render_into(m, issues), issues.errors


def render_into(manifest: Manifest, issues: Issues, path: str = "") -> Manifest | None:
    """The rendered manifest, or None after errors (added to `issues`)."""
    rendered: dict[str, Workload] = {}
    for name, workload in manifest.workloads.items():
        result = _render_workload(workload, manifest.configs, issues, join_path(path, f"workloads.{name}"))
        if result is not None:
            rendered[name] = result
    if issues.errors:
        return None
    return msgspec.structs.replace(manifest, workloads=rendered)


def _render_workload(workload: Workload, configs: dict[str, Any], issues: Issues, path: str) -> Workload | None:
    """Only workloads with configs are rendered: runtimeConfig then agent
    then files; the result has no `configs` (they are consumed). Every
    agent is checked once rendered."""
    if workload.configs:
        data = _template_data(workload, configs, issues, path)
        rendered = _render_fields(workload, data, issues, path) if data is not None else None
        if rendered is None:
            return None
        workload = rendered
    if workload.agent is not None:
        problem = agent_name_problem(workload.agent)
        if problem:
            issues.error(f"{path}.agent", problem)
            return None
    return workload


def _template_data(workload: Workload, configs: dict[str, Any], issues: Issues, path: str) -> dict[str, Any] | None:
    """alias -> the config it names, or None if one does not exist."""
    data: dict[str, Any] = {}
    for alias, key in workload.configs.items():
        if key not in configs:
            issues.error(f"{path}.configs.{alias}", f"Workload references config key '{key}' that does not exist")
            return None
        data[alias] = configs[key]
    return data


def _render_fields(workload: Workload, data: dict[str, Any], issues: Issues, path: str) -> Workload | None:
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
    return msgspec.structs.replace(workload, runtime_config=runtime_config, agent=agent, files=files, configs={})
