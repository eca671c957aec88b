"""The bus contract of ank-zenoh: msgspec Structs for the manifest and every
bus message. This package is the single source of truth; the JSON Schema
files beside it are generated from it (`python -m schemas.export`)."""

from schemas.manifest import (
    AccessRule,
    ConfigItem,
    ControlInterfaceAccess,
    DependencyCondition,
    FileItem,
    HealthCheck,
    Manifest,
    RestartPolicy,
    Scheduling,
    Workload,
)
from schemas.messages import (
    CONTRACT_VERSION,
    AgentPlan,
    AgentStatus,
    ApplyRequest,
    ApplyResult,
    Binding,
    CompleteState,
    DeleteRequest,
    EnergyReport,
    Event,
    HealthReport,
    LogsReply,
    Message,
    PlannedWorkload,
    ValidationIssue,
    WorkloadState,
    WorkloadUsage,
)
from schemas.runtime_configs import PodmanConfig, PodmanKubeConfig, ProcessConfig
from schemas.state import ExecutionState, State, Substate

__all__ = [
    "CONTRACT_VERSION",
    "AccessRule",
    "AgentPlan",
    "AgentStatus",
    "ApplyRequest",
    "ApplyResult",
    "Binding",
    "CompleteState",
    "ConfigItem",
    "ControlInterfaceAccess",
    "DeleteRequest",
    "DependencyCondition",
    "EnergyReport",
    "Event",
    "ExecutionState",
    "FileItem",
    "HealthCheck",
    "HealthReport",
    "LogsReply",
    "Manifest",
    "Message",
    "PlannedWorkload",
    "PodmanConfig",
    "PodmanKubeConfig",
    "ProcessConfig",
    "RestartPolicy",
    "Scheduling",
    "State",
    "Substate",
    "ValidationIssue",
    "Workload",
    "WorkloadState",
    "WorkloadUsage",
]


def prepare(*types: object) -> None:
    """Builds msgspec's type information for `types` now.

    msgspec builds a Struct's type information on its first use, running
    Python code meanwhile (type hints); two threads making that first use at
    once crashed processes here (SIGSEGV in msgspec's
    json_decode_struct_map_inner, on a field table still NULL). Zenoh calls
    back on several threads, so every Struct that is decoded off the main
    thread is prepared at import, before any thread exists."""
    import msgspec

    for t in types:
        msgspec.json.Decoder(t)


prepare(
    AccessRule, ConfigItem, ControlInterfaceAccess, FileItem, HealthCheck, Manifest, Scheduling, Workload,
    AgentPlan, AgentStatus, ApplyRequest, ApplyResult, Binding, CompleteState, DeleteRequest, EnergyReport, Event,
    HealthReport, Message, PlannedWorkload, ValidationIssue, WorkloadState, WorkloadUsage,
    PodmanConfig, PodmanKubeConfig, ProcessConfig, ExecutionState,
)  # fmt: skip
