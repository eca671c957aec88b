"""Eclipse Ankaios's own manifests (shared/ankaios-compat, 73 files) get
Ankaios's verdicts.

Each file is read the way Ankaios's system tests use it: "apply" files with
`ank apply` semantics (parse_manifest), "state" files (top level
`desiredState:`, and empty.yaml) as inputs of `ank set state`
(parse_state_file). Rejections cite where Ankaios's verdict comes from:
its system tests (tests/stests/**.robot) and code (ankaios_api, ank/src,
server/src) at commit 084dcc0a. A state file is judged alone here; merged
with a current state by update masks it is judged in test_manifest.py.
"""

from __future__ import annotations

import pytest

from ank_common.manifest import Parsed, parse_manifest, parse_state_file
from tests.helpers import CORPUS

ACCEPT = ""  # the verdict of a file Ankaios accepts

# file -> (how Ankaios reads it, "" to accept or a substring of the rejection reason)
VERDICTS: dict[str, tuple[str, str]] = {
    "ank_schema__examples__example_manifest.ank.yml": ("apply", ACCEPT),
    "containerd_invalid_image.yaml": ("apply", ACCEPT),  # the agent fails it at start, not apply
    "containerd_nginx.yaml": ("apply", ACCEPT),
    "create_workload_custom_name.yaml": ("apply", ACCEPT),
    "create_workload_custom_name_containerd.yaml": ("apply", ACCEPT),
    "create_workloads_with_dependencies_config.yaml": ("apply", ACCEPT),
    "default.yaml": ("apply", ACCEPT),
    "default_config_with_dependencies.yaml": ("apply", ACCEPT),
    "default_containerd.yaml": ("apply", ACCEPT),
    "default_deprecated_api.yaml": ("apply", ACCEPT),  # v0.1: accepted with a deprecation warning
    "default_with_config.yaml": ("apply", ACCEPT),
    "delete_workloads_with_dependencies.yaml": ("apply", ACCEPT),
    "device_restart_with_dependencies.yaml": ("apply", ACCEPT),
    "device_restart_with_dependencies_modified_web_service_init.yaml": ("apply", ACCEPT),
    # Used only as `ank set state` input with masks (stests/control_interface/test_events.robot):
    # an empty state; the masks then remove what they name.
    "empty.yaml": ("state", ACCEPT),
    "examples__cpp_control_interface__manifest.yaml": ("apply", ACCEPT),
    "examples__mutating_hooks__manifest.yaml": ("apply", ACCEPT),
    "examples__nodejs_control_interface__manifest.yaml": ("apply", ACCEPT),
    "examples__python_control_interface__manifest.yaml": ("apply", ACCEPT),
    "examples__python_sdk_hello__manifest.yaml": ("apply", ACCEPT),
    "examples__python_sdk_interactive__manifest.yaml": ("apply", ACCEPT),
    "examples__python_sdk_logging__manifest.yaml": ("apply", ACCEPT),
    "examples__rust_control_interface__manifest.yaml": ("apply", ACCEPT),
    "examples__rust_sdk_hello__manifest.yaml": ("apply", ACCEPT),
    "examples__rust_sdk_logging__manifest.yaml": ("apply", ACCEPT),
    # stests/control_interface/control_interface.robot "Test workload with empty Control Interface
    # access field mask rejected" (`ank apply` exits 1); ankaios_api control_interface_access.rs.
    "faulty_with_control_as_empty.yaml": ("apply", "Empty filter masks are not allowed"),
    # stests/workloads/workload_configs_podman.robot "start up fails with invalid templated
    # Ankaios manifest"; server config_renderer.rs ConfigRenderError::Field.
    "invalid_templated_manifest.yaml": ("apply", "Failed to render field 'runtimeConfig'"),
    "kube.yaml": ("apply", ACCEPT),
    "manifest1.yaml": ("apply", ACCEPT),
    "manifest12.yaml": ("apply", ACCEPT),
    "manifest2.yaml": ("apply", ACCEPT),
    # stests/manifests/apply_manifests.robot "apply workload specification with empty agent name": exit 0.
    "manifest_empty_agent_name.yaml": ("apply", ACCEPT),
    # stests/manifests/apply_manifests.robot "apply workload specification without agent name"
    # (error; with --agent it runs); ank apply_manifests.rs handle_agent_overwrite.
    "manifest_no_agent_name.yaml": ("apply", "No agent name specified -> use '--agent' option to specify!"),
    "manifest_with_configs.yaml": ("apply", ACCEPT),
    "manifest_with_configs_updated_config_item.yaml": ("state", ACCEPT),
    "manifest_with_multi_line_config.yaml": ("apply", ACCEPT),
    "manifest_with_workload_files.yaml": ("apply", ACCEPT),
    # stests/manifests/apply_manifests.robot "apply workload specification with wrong api version";
    # ank apply_manifests.rs detect_api_version.
    "manifest_wrong_api_version.yaml": ("apply", "Expected 'v1', got: 'v0.2'"),
    # ... "with wrong api version format".
    "manifest_wrong_api_version_format.yaml": ("apply", "Expected 'v1', got: '0.1v'"),
    # stests/workloads/state_operations_with_field_mask.robot: set with mask ...simple.agent.
    "minimal_set_state.yaml": ("state", ACCEPT),
    "multi_container_podman_kube.yaml": ("apply", ACCEPT),
    "multi_container_podman_kube_deployment.yaml": ("apply", ACCEPT),
    "nginx.yaml": ("apply", ACCEPT),
    "podman_wrong_image_name.yaml": ("apply", ACCEPT),  # fails at the agent, not at apply
    "simple.yaml": ("apply", ACCEPT),
    "simple_containerd.yaml": ("apply", ACCEPT),
    "simple_kube.yaml": ("apply", ACCEPT),
    "simple_kube_with_control.yaml": ("apply", ACCEPT),
    "simple_state.yaml": ("state", ACCEPT),
    "simple_state_different_agent_add_dependencies_and_toplevel_configs.yaml": ("state", ACCEPT),
    "simple_state_update_toplevel_configs.yaml": ("state", ACCEPT),
    "simple_with_control.yaml": ("apply", ACCEPT),
    "simple_with_control_containerd.yaml": ("apply", ACCEPT),
    # stests/workloads/add_update_invalid_runtime.robot: accepted; the agent reports
    # Pending(StartingFailed) (swdd~agent-skips-unknown-runtime).
    "simple_with_invalid_runtime.yaml": ("apply", ACCEPT),
    # stests/workloads/reject_state_with_cyclic_dependencies.robot "reject startup config with cyclic
    # interworkload dependencies"; server cycle_check.rs, server_state.rs CycleInDependencies.
    "state_with_dependency_cycle.yaml": ("apply", "workload dependency 'workload_A' is part of a cycle"),
    "state_with_restart_policies.yaml": ("apply", ACCEPT),
    "state_with_restart_policies_containerd.yaml": ("apply", ACCEPT),
    # Top-level `agents:` is not part of a manifest: `ank apply` ignores it (unknown fields are
    # ignored; the CompleteState's agents are not taken from ank apply) -> accepted, nothing applied.
    "update_agent_tags.yaml": ("apply", ACCEPT),
    # Alone it is valid (its dependencies name absent workloads: swdd~cycle-detection-ignores-non-
    # existing-workloads); merged into default_config_with_dependencies.yaml it makes a cycle.
    "update_state_config_with_dependency_cycle.yaml": ("state", ACCEPT),
    "update_state_create_one_workload.yaml": ("state", ACCEPT),
    # stests/workloads/update_workload_podman.robot "support empty agent name": exit 0.
    "update_state_empty_agent_name.yaml": ("state", ACCEPT),
    # stests/workloads/workload_configs_podman.robot "update configs with invalid config item key";
    # ankaios_api complete_state.rs validate_config_map.
    "update_state_invalid_config_item_key.yaml": ("state", "Unsupported config item key 'another$%invalid/config'"),
    # stests/workloads/update_workload_podman.robot "invalid workload name" / "invalid agent name";
    # ankaios_api workload.rs validate_workload_name_format, validate_agent_name_format.
    "update_state_invalid_names.yaml": ("state", "Unsupported workload name 'sleepy.test'"),
    # stests/workloads/update_workload_podman.robot "Update workload with invalid api version";
    # ankaios_api complete_state.rs validate_api_version.
    "update_state_invalid_version.yaml": ("state", "got: 'invalidVersion'"),
    # stests/workloads/workload_configs_podman.robot "update workload with invalid config alias";
    # ankaios_api workload.rs validate_config_reference_format.
    "update_state_invalid_workload_config_alias.yaml": ("state", "Unsupported config alias 'web.$_config'"),
    # ... "update workload with invalid config reference key".
    "update_state_invalid_workload_config_reference_key.yaml": (
        "state",
        "Unsupported config reference key 'web_server$%_config'",
    ),
    # stests/workloads/update_workload_podman.robot "Update workload with lengthy workload name";
    # ankaios_api helpers.rs validate_max_field_length.
    "update_state_long_names.yaml": ("state", "Length 68 exceeds the maximum limit of 63 characters"),
    # stests/workloads/update_workload_podman.robot "Update workload with missing api version".
    "update_state_missing_version.yaml": ("state", "missing field 'apiVersion'"),
    "update_state_pending_create.yaml": ("state", ACCEPT),
    # A partial state: its config reference is to the current state's `bin_data` (used with masks
    # in stests/workloads/workload_files.robot); a warning alone, an error if still dangling after masks.
    "update_state_workload_files.yaml": ("state", ACCEPT),
    "update_workloads_pending_create.yaml": ("apply", ACCEPT),
    "update_workloads_pending_delete.yaml": ("apply", ACCEPT),
    "workload_logs.yaml": ("apply", ACCEPT),
}


def judge(name: str) -> Parsed:
    kind, _ = VERDICTS[name]
    data = (CORPUS / name).read_bytes()
    return parse_state_file(data) if kind == "state" else parse_manifest(data)


def test_the_table_covers_every_corpus_file() -> None:
    assert sorted(VERDICTS) == sorted(p.name for p in CORPUS.iterdir())


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_corpus_file_gets_ankaios_verdict(name: str) -> None:
    _, expected = VERDICTS[name]
    parsed = judge(name)
    if expected == ACCEPT:
        assert parsed.errors == [], [str(e) for e in parsed.errors]
        assert parsed.manifest is not None
    else:
        assert parsed.manifest is None and parsed.rendered is None
        assert any(expected in str(error) for error in parsed.errors), [str(e) for e in parsed.errors]


def test_corpus_summary() -> None:
    verdicts = {name: judge(name).errors == [] for name in VERDICTS}
    accepted = sum(verdicts.values())
    rejected = len(verdicts) - accepted
    summary = f"corpus: {len(verdicts)} files, {accepted} accepted, {rejected} rejected"
    print(summary)
    expected_rejected = sum(1 for _, reason in VERDICTS.values() if reason != ACCEPT)
    assert (accepted, rejected) == (len(VERDICTS) - expected_rejected, expected_rejected), summary
