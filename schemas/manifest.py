"""The manifest: Eclipse Ankaios's v1 format (v0.1 is read and normalised to
it) plus ank-zenoh's documented optional extensions `healthCheck` and
`scheduling`, which never change how an Ankaios manifest is read.

These Structs describe the *normalised* manifest (after v0.1 conversion and
Handlebars rendering). Reading and validating raw input, with Ankaios's
verdicts and path-named errors, is ank_common.manifest's job.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

RestartPolicy = Literal["NEVER", "ON_FAILURE", "ALWAYS"]
DependencyCondition = Literal["ADD_COND_RUNNING", "ADD_COND_SUCCEEDED", "ADD_COND_FAILED"]

# A config item is a string, a list of config items or a map of them.
ConfigItem = Any


class AccessRule(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """A control-interface rule (`StateRule` or `LogRule`)."""

    type: Literal["StateRule", "LogRule"]
    operation: Literal["Read", "Write", "ReadWrite"] | None = None
    filter_masks: list[str] = []
    workload_names: list[str] = []


class ControlInterfaceAccess(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    allow_rules: list[AccessRule] = []
    deny_rules: list[AccessRule] = []


class FileItem(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """A file mounted into the workload: text `data` or base64 `binaryData`."""

    mount_point: str
    data: str | None = None
    binary_data: str | None = None


class HealthCheck(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """ank-zenoh extension: a liveness probe. Exactly one of exec, tcp, http,
    zenoh. Defaults are Docker's HEALTHCHECK defaults."""

    exec: list[str] | None = None
    tcp: str | None = None  # "host:port"
    http: str | None = None  # URL
    http_status: int = 200
    zenoh: str | None = None  # a key expression that must be updated
    max_age_ms: int = 5000  # for `zenoh`: the key's largest tolerated age
    interval_ms: int = 30000
    timeout_ms: int = 10000
    retries: int = 3
    start_period_ms: int = 40000


class Scheduling(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """ank-zenoh extension: placement hints for the energy-aware scheduler."""

    selector: dict[str, str] = {}  # agent tags; the key `arch` matches the agent's arch
    policy: str = "MALE"
    min_energy_wh: float = 0.0  # the reserve a candidate node must keep
    energy_cost_wh: float | None = None  # estimate counted against the node while in flight


class Workload(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    """One workload of a normalised manifest (Ankaios v1 fields + extensions).

    `agent` None means the field was absent; "" means NotScheduled (the
    scheduler places it)."""

    runtime: str
    runtime_config: str = ""
    agent: str | None = None
    restart_policy: RestartPolicy = "NEVER"
    dependencies: dict[str, DependencyCondition] = {}
    tags: dict[str, str] = {}
    configs: dict[str, str] = {}
    files: list[FileItem] = []
    control_interface_access: ControlInterfaceAccess | None = None
    health_check: HealthCheck | None = None
    scheduling: Scheduling | None = None


class Manifest(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    """A whole manifest, normalised to apiVersion v1."""

    api_version: Literal["v1", "v0.1"]
    workloads: dict[str, Workload] = {}
    configs: dict[str, ConfigItem] = {}
