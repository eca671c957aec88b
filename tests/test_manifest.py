"""ank_common.manifest: reading, Ankaios-compatible validation, v0.1
normalisation, Handlebars rendering, update masks and `ank apply --dry-run`.

Expected messages are Eclipse Ankaios's own wording where it has one
(ankaios_api/src/helpers.rs, workload.rs, control_interface_access.rs,
complete_state.rs; ank/src/cli_commands/apply_manifests.rs; server
config_renderer.rs)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

from ank_common.manifest import (
    ManifestError,
    Parsed,
    apply_update_masks,
    dry_run,
    instance_id,
    load_document,
    parse_manifest,
    parse_state_file,
    render_manifest,
)
from ank_common.manifest.document import MAX_DOCUMENT_BYTES
from ank_common.manifest.templating import TemplateError, render_template
from schemas.manifest import Manifest, Workload
from tests.helpers import CORPUS

REPO = Path(__file__).resolve().parent.parent
CONSTRAINT = "Only a-z, A-Z, 0-9 chars, underscore (_), and hyphen (-) allowed. Maximum length is 63 characters."


def manifest_text(workloads: str = "", configs: str = "", api_version: str = "v1") -> str:
    text = f"apiVersion: {api_version}\n"
    if workloads:
        text += "workloads:\n" + textwrap.indent(textwrap.dedent(workloads), "  ")
    if configs:
        text += "configs:\n" + textwrap.indent(textwrap.dedent(configs), "  ")
    return text


SIMPLE = """\
simple:
  runtime: podman
  agent: agent_A
  runtimeConfig: |
    image: alpine:latest
"""


def only_error(parsed: Parsed) -> tuple[str, str]:
    assert parsed.manifest is None and parsed.rendered is None
    assert len(parsed.errors) == 1, parsed.errors
    return parsed.errors[0].path, parsed.errors[0].message


def workload(parsed: Parsed, name: str) -> Workload:
    assert parsed.errors == [], parsed.errors
    assert parsed.rendered is not None
    return parsed.rendered.workloads[name]


# --- reading -----------------------------------------------------------------------------


def test_load_document_reads_yaml_and_json_alike() -> None:
    assert load_document("apiVersion: v1\nworkloads: {}") == load_document('{"apiVersion": "v1", "workloads": {}}')


def test_load_document_resolves_scalars_as_yaml_1_2_like_ankaios() -> None:
    document = load_document("a: yes\nb: off\nc: 2024-01-01\nd: 0x10\ne: true\nf: ~")
    assert document == {"a": "yes", "b": "off", "c": "2024-01-01", "d": 16, "e": True, "f": None}


def test_load_document_rejects_a_billion_laughs_bomb() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    with pytest.raises(ManifestError, match="YAML alias bomb"):
        load_document("\n".join(lines))


def test_load_document_rejects_a_recursive_alias() -> None:
    with pytest.raises(ManifestError, match="recursive alias"):
        load_document("a: &x [*x]")


def test_load_document_allows_a_few_harmless_aliases() -> None:
    assert load_document("base: &b {x: '1'}\nother: *b") == {"base": {"x": "1"}, "other": {"x": "1"}}


def test_load_document_rejects_oversize_input() -> None:
    with pytest.raises(ManifestError, match=f"larger than {MAX_DOCUMENT_BYTES} bytes"):
        load_document(b"a: " + b"x" * MAX_DOCUMENT_BYTES)


@pytest.mark.parametrize("text", ["a: " + "[" * 100 + "]" * 100, '{"a": ' * 100 + "1" + "}" * 100])
def test_load_document_rejects_deep_nesting(text: str) -> None:
    with pytest.raises(ManifestError, match="nested deeper than 64"):
        load_document(text)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        ("- a\n- b", "top level must be a mapping, not a list"),
        ("just text", "top level must be a mapping, not a string"),
        ("", "the document is empty"),
        ("a: 1\na: 2", "duplicate key 'a'"),
        ("a: [", "invalid YAML"),
        ("a: !!python/object/apply:os.system [id]", "invalid YAML"),
    ],
)
def test_load_document_names_the_reason_for_unreadable_input(data: bytes | str, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        load_document(data)


def test_parse_manifest_turns_unreadable_input_into_an_error_not_an_exception() -> None:
    assert only_error(parse_manifest(b"a: &x [*x]"))[1].startswith("document is nested deeper")
    assert only_error(parse_manifest(b"apiVersion: v1\n#" + b"x" * MAX_DOCUMENT_BYTES))[1] == (
        f"document is larger than {MAX_DOCUMENT_BYTES} bytes"
    )
    assert (
        "YAML alias bomb"
        in only_error(
            parse_state_file(
                b"a: &a [1,1,1,1,1,1,1,1,1,1]\n"
                + b"".join(
                    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
                    for i in range(8)
                )
            )
        )[1]
    )


# --- apiVersion -------------------------------------------------------------------------


def test_api_version_v1_is_accepted_without_warnings() -> None:
    parsed = parse_manifest(manifest_text(SIMPLE))
    assert parsed.errors == [] and parsed.warnings == []
    assert parsed.manifest is not None and parsed.manifest.api_version == "v1"


def test_missing_api_version_is_rejected() -> None:
    assert only_error(parse_manifest("workloads: {}")) == ("", "missing field 'apiVersion' (expected 'v1')")


@pytest.mark.parametrize("version", ["v2", "0.1v", "v0.2", "1"])
def test_other_api_versions_are_rejected_with_ankaios_message(version: str) -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE, api_version=version)))
    assert path == "apiVersion"
    assert message == f"Invalid manifest API version provided. Expected 'v1', got: '{version}'."


def test_v0_1_is_accepted_with_a_deprecation_warning_and_normalised_to_v1() -> None:
    parsed = parse_manifest(
        manifest_text(
            """\
            sleepy:
              runtime: podman
              agent: agent_A
              tags:
                - key: owner
                  value: Ankaios team
              controlInterfaceAccess:
                allowRules:
                  - type: StateRule
                    operation: Read
                    filterMask: ["*"]
              runtimeConfig: "image: sleepy"
            """,
            api_version="v0.1",
        )
    )
    sleepy = workload(parsed, "sleepy")
    assert parsed.rendered is not None and parsed.rendered.api_version == "v1"
    assert sleepy.tags == {"owner": "Ankaios team"}
    assert sleepy.control_interface_access is not None
    assert sleepy.control_interface_access.allow_rules[0].filter_masks == ["*"]
    assert [w.path for w in parsed.warnings] == ["apiVersion"]
    assert "'v0.1' is deprecated" in parsed.warnings[0].message


def test_v1_tags_as_a_list_are_rejected_with_ankaios_message() -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + "  tags:\n    - key: a\n      value: b\n")))
    assert path == "workloads.simple.tags"
    assert message == (
        "For API version 'v1', tags must be specified as a mapping (key-value pairs). "
        "Found tags as a list for workload 'simple'."
    )


def test_v0_1_tags_as_a_mapping_are_rejected() -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + "  tags: {a: b}\n", api_version="v0.1")))
    assert path == "workloads.simple.tags"
    assert message.startswith("For API version 'v0.1', tags must be specified as a sequence")


def test_v1_rejects_the_v0_1_spelling_filter_mask() -> None:
    access = (
        "  controlInterfaceAccess:\n    allowRules:\n      - {type: StateRule, operation: Read, filterMask: ['*']}\n"
    )
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + access)))
    assert path == "workloads.simple.controlInterfaceAccess.allowRules.0.filterMask"
    assert "apiVersion v1 uses 'filterMasks'" in message


# --- names -------------------------------------------------------------------------------


def test_workload_name_with_a_dot_is_rejected() -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE.replace("simple:", "sleepy.test:"))))
    assert path == "workloads.sleepy.test"
    assert message == "Unsupported workload name 'sleepy.test'. Expected to have characters in [a-zA-Z0-9_-]."


def test_workload_name_of_63_characters_is_accepted_and_64_rejected() -> None:
    assert parse_manifest(manifest_text(SIMPLE.replace("simple:", "a" * 63 + ":"))).errors == []
    _, message = only_error(parse_manifest(manifest_text(SIMPLE.replace("simple:", "a" * 64 + ":"))))
    assert message == f"Unsupported workload name '{'a' * 64}'. Length 64 exceeds the maximum limit of 63 characters."


def test_empty_workload_name_is_rejected() -> None:
    _, message = only_error(parse_manifest(manifest_text(SIMPLE.replace("simple:", "'':"))))
    assert message == "Unsupported workload name ''. Is empty."


def test_agent_name_with_a_dot_is_rejected_with_ankaios_message() -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE.replace("agent_A", "agent_A.test"))))
    assert path == "workloads.simple.agent"
    assert message == f"Unsupported agent name 'agent_A.test'. {CONSTRAINT}"


def test_long_agent_names_are_accepted_as_ankaios_checks_only_their_characters() -> None:
    assert parse_manifest(manifest_text(SIMPLE.replace("agent_A", "a" * 80))).errors == []


def test_config_keys_are_checked_at_every_level() -> None:
    configs = "ok:\n  nested_ok: '1'\n  bad/key: '2'\n  list:\n    - {'x y': '3'}\n'b$d': '4'\n"
    parsed = parse_manifest(manifest_text(SIMPLE, configs))
    assert [(e.path, e.message) for e in parsed.errors] == [
        ("configs.ok.bad/key", f"Unsupported config item key 'bad/key'. {CONSTRAINT}"),
        ("configs.ok.list.0.x y", f"Unsupported config item key 'x y'. {CONSTRAINT}"),
        ("configs.b$d", f"Unsupported config item key 'b$d'. {CONSTRAINT}"),
    ]


def test_config_values_other_than_strings_lists_and_maps_are_rejected() -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE, "port: 8080\n")))
    assert path == "configs.port"
    assert "a string, a list or a mapping, not a number" in message


# --- workload fields -------------------------------------------------------------------


def test_workload_without_agent_is_rejected_unless_the_cli_gives_one() -> None:
    no_agent = manifest_text(SIMPLE.replace("  agent: agent_A\n", ""))
    path, message = only_error(parse_manifest(no_agent))
    assert path == "workloads.simple.agent"
    assert message == "No agent name specified -> use '--agent' option to specify!"
    assert workload(parse_manifest(no_agent, agent="agent_B"), "simple").agent == "agent_B"


def test_cli_agent_sets_every_workload_agent_like_ankaios_apply() -> None:
    assert workload(parse_manifest(manifest_text(SIMPLE), agent="agent_B"), "simple").agent == "agent_B"


def test_empty_agent_is_valid_and_means_not_scheduled() -> None:
    assert workload(parse_manifest(manifest_text(SIMPLE.replace("agent_A", "''"))), "simple").agent == ""
    no_agent = manifest_text(SIMPLE.replace("  agent: agent_A\n", ""))
    assert workload(parse_manifest(no_agent, agent=""), "simple").agent == ""


@pytest.mark.parametrize("field", ["runtime", "runtimeConfig"])
def test_runtime_and_runtime_config_are_required(field: str) -> None:
    text = manifest_text(
        "simple:\n  agent: a\n" + ("  runtimeConfig: x\n" if field == "runtime" else "  runtime: podman\n")
    )
    assert only_error(parse_manifest(text)) == ("workloads.simple", f"missing field '{field}'")


def test_unknown_runtime_is_accepted_with_a_warning_as_ankaios_accepts_it() -> None:
    parsed = parse_manifest(manifest_text(SIMPLE.replace("podman", "invalid_runtime")))
    assert workload(parsed, "simple").runtime == "invalid_runtime"
    assert [w.path for w in parsed.warnings] == ["workloads.simple.runtime"]


def test_runtime_config_content_is_not_validated_and_is_trimmed_like_ankaios() -> None:
    parsed = parse_manifest(manifest_text("x:\n  runtime: podman\n  agent: a\n  runtimeConfig: '  {{{ not: [yaml  '\n"))
    assert workload(parsed, "x").runtime_config == "{{{ not: [yaml"


def test_unknown_restart_policy_is_rejected() -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + "  restartPolicy: SOMETIMES\n")))
    assert path == "workloads.simple.restartPolicy"
    assert message == "unknown restart policy 'SOMETIMES', expected one of NEVER, ON_FAILURE, ALWAYS"


def test_restart_policy_defaults_to_never() -> None:
    assert workload(parse_manifest(manifest_text(SIMPLE)), "simple").restart_policy == "NEVER"


def test_unknown_dependency_condition_is_rejected() -> None:
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + "  dependencies: {db: ADD_COND_DONE}\n")))
    assert path == "workloads.simple.dependencies.db"
    assert message.startswith("unknown dependency condition 'ADD_COND_DONE'")


def test_dependency_on_a_workload_that_does_not_exist_is_allowed() -> None:
    parsed = parse_manifest(manifest_text(SIMPLE + "  dependencies: {ghost: ADD_COND_RUNNING}\n"))
    assert workload(parsed, "simple").dependencies == {"ghost": "ADD_COND_RUNNING"}


def test_dependency_cycle_is_rejected_naming_the_cycle() -> None:
    workloads = "".join(
        f"{name}:\n  runtime: podman\n  agent: a\n  runtimeConfig: x\n  dependencies: {{{dep}: ADD_COND_RUNNING}}\n"
        for name, dep in (("a", "b"), ("b", "c"), ("c", "a"))
    )
    path, message = only_error(parse_manifest(manifest_text(workloads)))
    assert path == "workloads.a.dependencies"
    assert message == "workload dependency 'a' is part of a cycle: a -> b -> c -> a"


def test_self_dependency_is_a_cycle() -> None:
    _, message = only_error(parse_manifest(manifest_text(SIMPLE + "  dependencies: {simple: ADD_COND_RUNNING}\n")))
    assert message.endswith("simple -> simple")


def test_unknown_fields_are_ignored_with_a_warning_as_ankaios_ignores_them() -> None:
    parsed = parse_manifest(manifest_text(SIMPLE + "  restartPolicies: ALWAYS\n") + "agents: {a: {}}\n")
    assert parsed.errors == []
    assert {w.path for w in parsed.warnings} == {"workloads.simple.restartPolicies", "agents"}


def test_files_need_exactly_one_of_data_and_binary_data() -> None:
    files = "  files:\n    - mountPoint: /a\n      data: x\n      binaryData: eA==\n"
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + files)))
    assert path == "workloads.simple.files.0"
    assert "exactly one of 'data'" in message


def test_empty_control_interface_filter_mask_is_rejected() -> None:
    access = (
        "  controlInterfaceAccess:\n    allowRules:\n      - {type: StateRule, operation: Read, filterMasks: ['']}\n"
    )
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + access)))
    assert path == "workloads.simple.controlInterfaceAccess.allowRules.0.filterMasks.0"
    assert message == "Empty filter masks are not allowed in Control Interface access rules"


def test_malformed_filter_mask_is_rejected() -> None:
    access = (
        "  controlInterfaceAccess:\n    denyRules:\n      - {type: StateRule, operation: Read, filterMasks: ['a.b*']}\n"
    )
    _, message = only_error(parse_manifest(manifest_text(SIMPLE + access)))
    assert message.startswith("Unsupported filter mask 'a.b*'.")


@pytest.mark.parametrize(
    ("name", "valid"),
    [("workload_1", True), ("*wl", True), ("w*l", True), ("a" * 63 + "*", True), ("a*b*", False), ("a.b", False)],
)
def test_log_rule_workload_names_follow_ankaios_wildcard_rules(name: str, valid: bool) -> None:
    access = f"  controlInterfaceAccess:\n    allowRules:\n      - {{type: LogRule, workloadNames: ['{name}']}}\n"
    assert (parse_manifest(manifest_text(SIMPLE + access)).errors == []) is valid


def test_health_check_and_scheduling_extensions_are_read() -> None:
    extras = (
        "  healthCheck: {http: 'http://localhost:80/', intervalMs: 1000}\n  scheduling: {selector: {arch: arm64}}\n"
    )
    simple = workload(parse_manifest(manifest_text(SIMPLE + extras)), "simple")
    assert simple.health_check is not None and simple.health_check.interval_ms == 1000
    assert simple.scheduling is not None and simple.scheduling.selector == {"arch": "arm64"}


def test_health_check_with_two_probes_or_a_wrong_field_is_rejected() -> None:
    two = "  healthCheck: {http: 'http://x/', tcp: 'x:1'}\n"
    assert only_error(parse_manifest(manifest_text(SIMPLE + two)))[0] == "workloads.simple.healthCheck"
    wrong = "  healthCheck: {http: 'http://x/', retries: many}\n"
    path, message = only_error(parse_manifest(manifest_text(SIMPLE + wrong)))
    assert path == "workloads.simple.healthCheck.retries"
    assert "Expected `int`" in message


def test_every_error_of_a_manifest_is_reported_not_only_the_first() -> None:
    text = manifest_text(
        SIMPLE.replace("simple:", "bad.name:") + SIMPLE.replace("simple:", "other:") + "  restartPolicy: X\n"
    )
    assert len(parse_manifest(text).errors) == 2


def test_desired_state_document_is_refused_by_apply_with_a_hint() -> None:
    path, message = only_error(parse_manifest((CORPUS / "update_state_create_one_workload.yaml").read_bytes()))
    assert path == "desiredState"
    assert "ank set state" in message


# --- config references and templating -------------------------------------------------


def test_config_alias_with_invalid_characters_is_rejected() -> None:
    parsed = parse_state_file((CORPUS / "update_state_invalid_workload_config_alias.yaml").read_bytes())
    assert [e.message for e in parsed.errors] == [f"Unsupported config alias 'web.$_config'. {CONSTRAINT}"]


def test_config_reference_to_a_missing_key_is_rejected() -> None:
    text = manifest_text(SIMPLE + "  configs: {port: no_such_config}\n", "other: '1'\n")
    path, message = only_error(parse_manifest(text))
    assert path == "workloads.simple.configs.port"
    assert message == "Workload references config key 'no_such_config' that does not exist"


def test_manifest_with_configs_renders_like_ankaios() -> None:
    parsed = parse_manifest((CORPUS / "manifest_with_configs.yaml").read_bytes())
    assert parsed.rendered is not None and parsed.manifest is not None
    nginx, greeting = parsed.rendered.workloads["nginx"], parsed.rendered.workloads["greeting_person"]
    assert nginx.agent == "agent_A"
    assert nginx.runtime_config.endswith('commandOptions: [ "-p", "8081:80"]')
    # `#each` over a list, `eq` in a subexpression, `\n` kept as written (no escaping).
    assert greeting.runtime_config.endswith("""commandArgs: [ "echo", 'Hello Chris Smith(age: 40)\\n' ]""")
    # The unrendered manifest keeps the templates and the config mapping; the rendered one consumed it.
    assert parsed.manifest.workloads["nginx"].agent == "{{agent.agent_name}}"
    assert nginx.configs == {} and parsed.manifest.workloads["nginx"].configs == {
        "port": "web_server_config",
        "agent": "agents",
    }


def test_indent_partial_repeats_the_line_indentation_like_ankaios() -> None:
    # Ankaios's server test utest_render_workloads_with_keeping_indentation_level_with_partial.
    before = "\n        some:\n          keys:\n            before:\n              config_with_indent: |\n"
    template = before + "                {{> indent content=ref1}}"
    expected = before + "                value_1\n                value_2\n                value_3"
    assert render_template(template, {"ref1": "value_1\nvalue_2\nvalue_3"}) == expected


def test_multi_line_config_is_put_into_the_kube_manifest_with_its_indentation() -> None:
    parsed = parse_manifest((CORPUS / "manifest_with_multi_line_config.yaml").read_bytes())
    config = workload(parsed, "nginx_with_custom_config").runtime_config
    inner = yaml.safe_load(config)["manifest"]
    config_map = next(yaml.safe_load_all(inner))
    assert (
        config_map["data"]["nginx.conf"]
        == yaml.safe_load((CORPUS / "manifest_with_multi_line_config.yaml").read_text())["configs"]["file_data"][
            "web_server_config"
        ]
    )


def test_files_are_rendered_for_text_and_binary_data() -> None:
    parsed = parse_manifest((CORPUS / "manifest_with_workload_files.yaml").read_bytes())
    binary = workload(parsed, "podman_workload_with_mounted_binary_file").files[0]
    text = workload(parsed, "podman_workload_with_mounted_text_file").files[0]
    assert binary.binary_data == "SGVsbG8sIFdvcmxkIQ=="
    assert text.data is not None and text.data.startswith("worker_processes  1;")


def test_values_are_not_html_escaped() -> None:
    # Ankaios's utest_render_workloads_prevent_escaping_special_characters.
    value = "value\"with\"escape'characters'<&>"
    assert render_template("x: {{special}}", {"special": value}) == f"x: {value}"


def test_values_render_like_handlebars_rust() -> None:
    data = {"l": ["a", "b"], "m": {"k": "v"}}
    assert render_template("{{l}} {{m}} {{l.1}} {{l.length}} {{m.k}}", data) == "[a, b] [object] b 2 v"


def test_missing_value_is_an_error_in_strict_mode_but_falsy_in_helpers() -> None:
    with pytest.raises(TemplateError, match=r'strict mode Some\("port.missing"\)'):
        render_template("{{port.missing}}", {"port": {"p": "1"}})
    assert render_template("{{#if port.missing}}yes{{else}}no{{/if}}", {"port": {"p": "1"}}) == "no"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('{{#if (eq a "1")}}y{{/if}}', "y"),
        ('{{#if (ne a "1")}}y{{else}}n{{/if}}', "n"),
        ("{{#if (and a b)}}y{{/if}}", "y"),
        ("{{#if (or a missing)}}y{{/if}}", "y"),
        ("{{#if (not missing)}}y{{/if}}", "y"),
        ('{{#if (gt b "1")}}y{{/if}}', "y"),
        ("{{len list}}", "3"),
        ("{{#each list}}{{@index}}{{this}}{{/each}}", "0x1y2z"),
        ("{{#each map}}{{@key}}={{this}};{{/each}}", "k=v;"),
        ("{{#with map}}{{k}}{{/with}}", "v"),
        ("{{lookup map 'k'}}", "v"),
    ],
)
def test_handlebars_rust_helpers(template: str, expected: str) -> None:
    data = {"a": "1", "b": "2", "list": ["x", "y", "z"], "map": {"k": "v"}}
    assert render_template(template, data) == expected


def test_invalid_template_rejects_the_manifest_naming_the_field() -> None:
    path, message = only_error(parse_manifest((CORPUS / "invalid_templated_manifest.yaml").read_bytes()))
    assert path == "workloads.sleepy.runtimeConfig"
    assert message.startswith("Failed to render field 'runtimeConfig':")


def test_templated_agent_that_renders_to_an_invalid_name_is_rejected() -> None:
    text = manifest_text(
        "x:\n  runtime: podman\n  agent: '{{a}}'\n  configs: {a: agent}\n  runtimeConfig: ''\n", "agent: 'bad.agent'\n"
    )
    path, message = only_error(parse_manifest(text))
    assert (path, message) == ("workloads.x.agent", f"Unsupported agent name 'bad.agent'. {CONSTRAINT}")


def test_workloads_without_configs_are_not_rendered_like_ankaios() -> None:
    text = manifest_text("x:\n  runtime: podman\n  agent: a\n  runtimeConfig: 'echo {{literally}}'\n")
    assert workload(parse_manifest(text), "x").runtime_config == "echo {{literally}}"


@pytest.mark.parametrize(
    "template",
    [
        "{{[x')+__import__('os').system('touch /tmp/pwned')+(']}}",
        "{{ ([\"+__import__('os').getcwd()+\"] a) }}",
        "{{a\\}}",
    ],
)
def test_templates_that_could_inject_code_into_pybars_are_refused(template: str) -> None:
    with pytest.raises(TemplateError, match="not allowed in tags"):
        render_template(template, {"a": "1"})


def test_unknown_partial_and_unclosed_tags_are_template_errors() -> None:
    with pytest.raises(TemplateError, match="partial other could not be found"):
        render_template("{{> other}}", {})
    with pytest.raises(TemplateError, match="unclosed template tag"):
        render_template("a {{b", {})


def test_render_manifest_renders_an_unrendered_manifest() -> None:
    parsed = parse_manifest((CORPUS / "manifest_with_configs.yaml").read_bytes())
    assert parsed.manifest is not None
    rendered, errors = render_manifest(parsed.manifest)
    assert errors == [] and rendered == parsed.rendered


def test_render_manifest_reports_a_config_that_disappeared() -> None:
    parsed = parse_manifest((CORPUS / "manifest_with_configs.yaml").read_bytes())
    assert parsed.manifest is not None
    without_configs = msgspec.structs.replace(parsed.manifest, configs={})
    rendered, errors = render_manifest(without_configs)
    assert rendered is None
    assert errors[0].path == "workloads.nginx.configs.port"


# --- instance ids -------------------------------------------------------------------------


def test_instance_id_is_stable_and_changes_with_any_field() -> None:
    base = workload(parse_manifest(manifest_text(SIMPLE)), "simple")
    explicit = workload(parse_manifest(manifest_text(SIMPLE + "  restartPolicy: NEVER\n  tags: {}\n")), "simple")
    assert (
        instance_id(base)
        == instance_id(explicit)
        == instance_id(msgspec.json.decode(msgspec.json.encode(base), type=Workload))
    )
    changes = [
        msgspec.structs.replace(base, runtime_config="image: other"),
        msgspec.structs.replace(base, agent="agent_B"),
        msgspec.structs.replace(base, restart_policy="ALWAYS"),
        msgspec.structs.replace(base, tags={"a": "b"}),
        msgspec.structs.replace(base, dependencies={"x": "ADD_COND_RUNNING"}),
    ]
    assert len({instance_id(base), *(instance_id(w) for w in changes)}) == 1 + len(changes)


def test_instance_id_changes_when_a_rendered_config_value_changes() -> None:
    old = parse_manifest((CORPUS / "manifest_with_configs.yaml").read_bytes())
    new = parse_state_file((CORPUS / "manifest_with_configs_updated_config_item.yaml").read_bytes())
    assert old.rendered is not None and new.rendered is not None
    assert instance_id(old.rendered.workloads["nginx"]) != instance_id(new.rendered.workloads["nginx"])


# --- set state files and update masks -------------------------------------------------------


def current_state() -> Manifest:
    parsed = parse_manifest((CORPUS / "default_config_with_dependencies.yaml").read_bytes())
    assert parsed.manifest is not None
    return parsed.manifest


def test_state_file_is_read_like_a_manifest_under_desired_state() -> None:
    parsed = parse_state_file((CORPUS / "update_state_create_one_workload.yaml").read_bytes())
    assert parsed.errors == [] and parsed.manifest is not None
    assert list(parsed.manifest.workloads) == ["sleepy"]


def test_state_file_errors_carry_the_desired_state_prefix() -> None:
    parsed = parse_state_file((CORPUS / "update_state_invalid_names.yaml").read_bytes())
    assert [(e.path, e.message.split(".")[0]) for e in parsed.errors] == [
        ("desiredState.workloads.sleepy.test", "Unsupported workload name 'sleepy"),
        ("desiredState.workloads.sleepy.agent", "Unsupported agent name 'agent_A"),
    ]


def test_empty_state_file_is_an_empty_state() -> None:
    parsed = parse_state_file(b"# nothing\n")
    assert parsed.errors == [] and parsed.manifest == Manifest(api_version="v1")


def test_mask_on_one_workload_adds_it_and_keeps_the_others() -> None:
    new = parse_state_file((CORPUS / "update_state_create_one_workload.yaml").read_bytes()).manifest
    assert new is not None
    merged = apply_update_masks(current_state(), new, ["desiredState.workloads.sleepy"])
    assert merged.manifest is not None
    assert set(merged.manifest.workloads) == set(current_state().workloads) | {"sleepy"}


def test_mask_on_a_workload_absent_from_the_new_state_removes_it() -> None:
    merged = apply_update_masks(current_state(), Manifest(api_version="v1"), ["desiredState.workloads.workload_D"])
    assert merged.manifest is not None and "workload_D" not in merged.manifest.workloads
    assert set(merged.manifest.workloads) == set(current_state().workloads) - {"workload_D"}


def test_mask_on_all_workloads_replaces_them_and_keeps_configs() -> None:
    current = parse_manifest((CORPUS / "manifest_with_workload_files.yaml").read_bytes()).manifest
    new = parse_state_file((CORPUS / "update_state_create_one_workload.yaml").read_bytes()).manifest
    assert current is not None and new is not None
    merged = apply_update_masks(current, new, ["desiredState.workloads"])
    assert merged.manifest is not None
    assert list(merged.manifest.workloads) == ["sleepy"] and merged.manifest.configs == current.configs


def test_mask_creating_a_cycle_with_the_current_state_is_rejected() -> None:
    # Ankaios's stest "update state with cycle in interworkload dependencies is rejected".
    new = parse_state_file((CORPUS / "update_state_config_with_dependency_cycle.yaml").read_bytes()).manifest
    assert new is not None
    merged = apply_update_masks(current_state(), new, ["desiredState.workloads.workload_C"])
    assert merged.manifest is None
    assert "is part of a cycle" in merged.errors[0].message


def test_partial_state_file_may_reference_configs_of_the_current_state() -> None:
    current = parse_manifest((CORPUS / "manifest_with_workload_files.yaml").read_bytes()).manifest
    update = parse_state_file((CORPUS / "update_state_workload_files.yaml").read_bytes())
    assert current is not None and update.errors == [] and update.manifest is not None
    assert any("checked again" in w.message for w in update.warnings)
    masks = ["desiredState.workloads.podman_workload_with_mounted_binary_file.files"]
    merged = apply_update_masks(current, update.manifest, masks)
    assert merged.errors == [] and merged.rendered is not None
    assert len(merged.rendered.workloads["podman_workload_with_mounted_binary_file"].files) == 2


def test_mask_on_configs_with_an_invalid_key_is_rejected() -> None:
    update = parse_state_file((CORPUS / "update_state_invalid_config_item_key.yaml").read_bytes())
    assert update.errors and update.manifest is None


def test_mask_replacing_configs_that_a_workload_still_uses_is_rejected() -> None:
    current = parse_manifest((CORPUS / "manifest_with_configs.yaml").read_bytes()).manifest
    assert current is not None
    merged = apply_update_masks(current, Manifest(api_version="v1"), ["desiredState.configs"])
    assert merged.manifest is None
    assert "does not exist" in merged.errors[0].message


def test_no_masks_replace_the_whole_state() -> None:
    new = parse_state_file((CORPUS / "update_state_create_one_workload.yaml").read_bytes()).manifest
    assert new is not None
    merged = apply_update_masks(current_state(), new, [])
    assert merged.manifest is not None and list(merged.manifest.workloads) == ["sleepy"]


@pytest.mark.parametrize("mask", ["workloads.x", "desiredState.workloads.*", "desiredState..x", "agents.agent_A"])
def test_unsupported_masks_are_rejected(mask: str) -> None:
    merged = apply_update_masks(current_state(), current_state(), [mask])
    assert merged.manifest is None and merged.errors[0].path == mask


def test_mask_below_a_string_field_is_rejected_like_ankaios_field_not_found() -> None:
    merged = apply_update_masks(current_state(), Manifest(api_version="v1"), ["desiredState.apiVersion.x"])
    assert merged.errors[0].message == "Could not find field desiredState.apiVersion.x"


# --- dry run ------------------------------------------------------------------------------


def run_dry(source: str, agent: str | None = None, output: str = "yaml") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = dry_run(source, agent, output, out, err)
    return code, out.getvalue(), err.getvalue()


def test_dry_run_prints_the_rendered_manifest_as_yaml() -> None:
    code, out, err = run_dry(str(CORPUS / "manifest_with_configs.yaml"))
    assert code == 0 and err == ""
    printed = parse_manifest(out)
    expected = parse_manifest((CORPUS / "manifest_with_configs.yaml").read_bytes())
    assert printed.rendered == expected.rendered


def test_dry_run_prints_json_on_request() -> None:
    code, out, _ = run_dry(str(CORPUS / "simple.yaml"), output="json")
    assert code == 0
    assert json.loads(out)["workloads"]["simple"]["agent"] == "agent_A"


def test_dry_run_prints_every_error_one_per_line_and_exits_1() -> None:
    code, out, err = run_dry(str(CORPUS / "state_with_dependency_cycle.yaml"))
    assert (code, out) == (1, "")
    cycle = "workload_A -> workload_B -> workload_A"
    assert err == f"workloads.workload_A.dependencies: workload dependency 'workload_A' is part of a cycle: {cycle}\n"


def test_dry_run_applies_the_agent_option() -> None:
    assert run_dry(str(CORPUS / "manifest_no_agent_name.yaml"))[0] == 1
    code, out, _ = run_dry(str(CORPUS / "manifest_no_agent_name.yaml"), agent="agent_B")
    assert code == 0 and "agent: agent_B" in out


def test_dry_run_prints_warnings_to_stderr_and_still_succeeds() -> None:
    code, _, err = run_dry(str(CORPUS / "default_deprecated_api.yaml"))
    assert code == 0 and err.startswith("warning: apiVersion: The manifest API version 'v0.1' is deprecated")


def test_dry_run_reports_a_missing_file_and_a_bad_output_format() -> None:
    code, _, err = run_dry("/nonexistent/manifest.yaml")
    assert code == 1 and "cannot read" in err
    code, _, err = run_dry(str(CORPUS / "simple.yaml"), output="toml")
    assert code == 1 and "unknown output format 'toml'" in err


def test_dry_run_reads_stdin_when_the_source_is_a_dash() -> None:
    script = (
        "import io, sys; from ank_common.manifest import dry_run; "
        "sys.exit(dry_run('-', None, 'json', sys.stdout, sys.stderr))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=(CORPUS / "simple.yaml").read_bytes(),
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["workloads"]["simple"]["runtime"] == "podman"


# --- robustness: nothing raises -----------------------------------------------------------

CORPUS_DOCUMENTS = [
    document for path in sorted(CORPUS.iterdir()) if isinstance(document := yaml.safe_load(path.read_text()), dict)
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
FIELD_NAMES = [
    "apiVersion",
    "workloads",
    "configs",
    "agent",
    "runtime",
    "runtimeConfig",
    "restartPolicy",
    "dependencies",
    "tags",
    "files",
    "controlInterfaceAccess",
    "allowRules",
    "filterMasks",
    "healthCheck",
    "scheduling",
    "data",
    "mountPoint",
    "type",
    "operation",
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_corpus_documents(draw: st.DrawFn) -> Any:
    document = msgspec.json.decode(msgspec.json.encode(draw(st.sampled_from(CORPUS_DOCUMENTS))))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["drop", "rename", "retype", "template"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = parent.pop(path[-1])
        elif action == "template":
            parent[path[-1]] = draw(st.sampled_from(["{{", "{{#each x}}", "{{> indent}}", "{{a.b}}", "}}{{/if}}"]))
        else:
            parent[path[-1]] = draw(json_values)
    return document


def assert_parsed(parsed: Parsed) -> None:
    assert isinstance(parsed, Parsed)
    assert (parsed.manifest is None) == (parsed.rendered is None) == bool(parsed.errors)


@settings(max_examples=150, deadline=None, suppress_health_check=[HypothesisHealthCheck.too_slow])
@given(mutated_corpus_documents(), st.sampled_from([None, "", "agent_X"]))
def test_mutated_corpus_manifests_never_raise(document: Any, agent: str | None) -> None:
    assert_parsed(parse_manifest(json.dumps(document), agent=agent))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), json_values, max_size=5))
def test_random_documents_never_raise(document: dict[str, Any]) -> None:
    assert_parsed(parse_manifest(json.dumps(document)))
    parse_state_file(json.dumps({"desiredState": document}))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_never_raise(data: bytes | str) -> None:
    assert_parsed(parse_manifest(data))
    parse_state_file(data)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="{}#/>^&~.@ abif eachwth=\"'\n-", max_size=40))
def test_random_templates_never_raise_anything_but_template_errors(template: str) -> None:
    try:
        render_template(template, {"a": "1", "b": {"c": ["x"]}})
    except TemplateError:
        pass


TEMPLATE_PIECES = [
    "{{a}}",
    "{{b.c.0}}",
    "{{#each b.c}}{{this}}{{/each}}",
    "{{#if a}}",
    "{{else}}",
    "{{/if}}",
    "{{~a~}}",
    "{{> indent content=text}}",
    "\n",
    "  ",
    "\t",
    "x",
    "long literal line with words\n" * 4,
    "  \n  \n",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=25))
def test_setting_long_literal_runs_aside_does_not_change_the_output(pieces: list[str]) -> None:
    from ank_common.manifest import templating

    template = "".join(pieces)
    data = {"a": "1", "b": {"c": ["x", "y"]}, "text": "t1\nt2\n"}

    def outcome() -> str:
        try:
            return render_template(template, data)
        except TemplateError:
            return "<error>"

    fast = outcome()
    original = templating._set_literals_aside
    templating._set_literals_aside = lambda source: (source, {})
    templating._compiled.cache_clear()
    try:
        slow = outcome()
    finally:
        templating._set_literals_aside = original
        templating._compiled.cache_clear()
    assert fast == slow


def test_a_one_mebibyte_template_renders_quickly() -> None:
    template = "x: {{a}}\n" + "a line of literal text\n" * 45_000 + "{{#each l}}- {{this}}\n{{/each}}"
    rendered = render_template(template, {"a": "1", "l": ["p", "q"]})
    assert rendered.startswith("x: 1\na line") and rendered.endswith("- p\n- q\n")


def test_each_block_on_its_own_lines_builds_a_yaml_list_like_handlebars() -> None:
    template = "args:\n{{#each l}}\n  - {{this}}\n{{/each}}"
    assert render_template(template, {"l": ["a", "b"]}) == "args:\n  - a\n  - b\n"
    assert render_template(template + "\n", {"l": ["a", "b"]}) == "args:\n  - a\n  - b\n"
    assert render_template(template + "\nnext: 1", {"l": ["a"]}) == "args:\n  - a\nnext: 1"
    assert render_template("a\n{{#if x}}\ny\n{{/if}}\nz", {"x": "1"}) == "a\ny\nz"


def test_a_lone_surrogate_is_rejected_with_a_clear_error() -> None:
    parsed = parse_manifest('apiVersion: "\\uDFFF"\nworkloads: {}\n')
    assert [e.message for e in parsed.errors] == ["text is not valid Unicode: a lone surrogate U+DFFF"]
    msgspec.json.encode(parsed.errors)  # the reply can carry the error
