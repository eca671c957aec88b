"""The Control Interface's pure core: Ankaios's access rules (the scenarios
of stests/control_interface/authorization.robot), framing, the version check,
and the state ↔ protobuf translation."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.manifest import AccessRule, ControlInterfaceAccess, FileItem, Manifest, Workload
from schemas.messages import CompleteState, WorkloadState
from schemas.state import RUNNING, pending
from services.agent.control_interface import core
from services.agent.control_interface.core import ank_base, control_api


def access(*allow: AccessRule, deny: tuple[AccessRule, ...] = ()) -> ControlInterfaceAccess:
    return ControlInterfaceAccess(allow_rules=list(allow), deny_rules=list(deny))


def rule(operation: str, *masks: str) -> AccessRule:
    return AccessRule(type="StateRule", operation=operation, filter_masks=list(masks))  # type: ignore[arg-type]


def logs(*names: str) -> AccessRule:
    return AccessRule(type="LogRule", workload_names=list(names))


SIMPLE = "desiredState.workloads.simple"
TAGS = "desiredState.workloads.simple_existing.tags"
EXISTING = "desiredState.workloads.simple_existing"


def reads(a: ControlInterfaceAccess | None, *masks: str) -> bool:
    return core.state_allowed(a, "Read", list(masks))


def writes(a: ControlInterfaceAccess | None, *masks: str) -> bool:
    return core.state_allowed(a, "Write", list(masks))


def test_no_rules_no_access() -> None:
    for a in (None, access()):
        assert not writes(a, SIMPLE) and not writes(a, TAGS)
        assert not reads(a) and not reads(a, EXISTING) and not reads(a, TAGS)
        assert not core.logs_allowed(a, ["simple_existing"])
    assert not core.has_access(access()) and not core.has_access(None)
    assert core.has_access(access(rule("Read", "*")))


def test_wildcard_rules_by_operation() -> None:
    w, r, rw = access(rule("Write", "*")), access(rule("Read", "*")), access(rule("ReadWrite", "*"))
    assert writes(w, SIMPLE) and writes(w, TAGS) and not reads(w) and not reads(w, EXISTING)
    assert reads(r) and reads(r, EXISTING) and reads(r, TAGS) and not writes(r, SIMPLE)
    assert reads(rw) and writes(rw, SIMPLE) and writes(rw) and reads(rw, TAGS)


def test_rule_for_tags_only() -> None:
    w, r = access(rule("Write", "desiredState.workloads.*.tags")), access(rule("Read", "desiredState.workloads.*.tags"))
    assert writes(w, TAGS) and not writes(w, SIMPLE) and not reads(w) and not reads(w, TAGS)
    assert reads(r, TAGS) and not reads(r) and not reads(r, EXISTING) and not writes(r, TAGS)


def test_deny_wins_and_covers_parents() -> None:
    a = access(rule("ReadWrite", "desiredState.workloads"), deny=(rule("Write", EXISTING),))
    assert writes(a, SIMPLE) and reads(a, EXISTING) and reads(a, TAGS)
    assert not writes(a, TAGS)  # below the denied path
    assert not writes(a, "desiredState.workloads")  # above it: would overwrite it
    assert not reads(a)  # the whole state is not within desiredState.workloads


def test_every_mask_must_pass_and_empty_masks_never_match() -> None:
    a = access(rule("Read", "desiredState.workloads.x"))
    assert reads(a, "desiredState.workloads.x", "desiredState.workloads.x.agent")
    assert not reads(a, "desiredState.workloads.x", "desiredState.workloads.y")
    assert not reads(a, "desiredState.workloads.xy") and not reads(a, "desiredState.workloads")
    assert not reads(access(rule("Read", "")), "anything")


def test_log_rules() -> None:
    assert core.logs_allowed(access(logs("simple_existing")), ["simple_existing"])
    assert core.logs_allowed(access(logs("*")), ["a", "b"])
    assert core.logs_allowed(access(logs("scream*")), ["screamer"])
    assert not core.logs_allowed(access(logs("a")), ["a", "b"])
    assert not core.logs_allowed(access(logs("*"), deny=(logs("b"),)), ["b"])
    assert not core.logs_allowed(access(rule("Read", "*")), ["a"])  # state rules give no logs


def request(**content: object) -> ank_base.Request:
    return ank_base.Request(requestId="r", **content)


def test_request_kinds() -> None:
    a = access(rule("Read", "*"))
    assert core.request_allowed(a, request(completeStateRequest=ank_base.CompleteStateRequest(fieldMask=[SIMPLE])))
    assert not core.request_allowed(a, request(updateStateRequest=ank_base.UpdateStateRequest(updateMask=[SIMPLE])))
    names = [ank_base.WorkloadInstanceName(workloadName="w")]
    assert not core.request_allowed(a, request(logsRequest=ank_base.LogsRequest(workloadNames=names)))
    assert core.request_allowed(a, request(logsCancelRequest=ank_base.LogsCancelRequest()))
    assert core.request_allowed(None, request(eventsCancelRequest=ank_base.EventsCancelRequest()))
    assert not core.request_allowed(a, request())


def test_framing_round_trip_in_pieces() -> None:
    messages = [core.accepted(), core.error("id", "x" * 300), core.closed("bye")]
    data = b"".join(core.frame(m) for m in messages)
    decoder = core.Decoder()
    bodies = [body for i in range(len(data)) for body in decoder.feed(data[i : i + 1])]
    parsed = [control_api.FromAnkaios.FromString(b) for b in bodies]
    assert parsed == messages


def test_oversized_length_prefix_is_refused() -> None:
    with pytest.raises(core.FrameError):
        core.Decoder(limit=1024).feed(core.varint(1 << 30))
    with pytest.raises(core.FrameError):
        core.Decoder().feed(b"\xff" * 11)


@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    try:
        for body in core.Decoder(limit=4096).feed(data):
            core.decode_to_ankaios(body)
    except core.FrameError:
        pass


def test_version_check() -> None:
    assert core.version_problem("1.0.0") is None and core.version_problem("1.3.2") is None
    problem = core.version_problem("0.6.0")
    assert problem is not None and "0.6.0" in problem and core.PROTOCOL_VERSION in problem
    assert core.version_problem("") is not None and core.version_problem("x.y") is not None


def _complete() -> CompleteState:
    access_ = access(rule("Read", "*"), logs("a"))
    x = Workload(
        runtime="process", runtime_config="command: x", agent="A", tags={"t": "1"}, control_interface_access=access_
    )
    desired = Manifest(api_version="v1", workloads={"x": x}, configs={"c": {"k": ["v"]}})
    ws = WorkloadState(workload="x", agent="A", execution_state=RUNNING, instance="i1", seq=1)
    return CompleteState(desired=desired, workload_states=[ws], agents=["A"])


def test_state_to_protobuf_and_masks() -> None:
    tree = core.state_tree(_complete())
    proto = core.tree_to_proto(tree)
    wl = proto.desiredState.workloads.workloads["x"]
    assert wl.runtime == "process" and wl.agent == "A" and wl.tags.tags["t"] == "1"
    assert wl.controlInterfaceAccess.allowRules[0].stateRule.operation == ank_base.RW_READ
    assert list(wl.controlInterfaceAccess.allowRules[1].logRule.workloadNames) == ["a"]
    assert proto.desiredState.configs.configs["c"].object.fields["k"].array.values[0].String == "v"
    state = proto.workloadStates.agentStateMap["A"].wlNameStateMap["x"].idStateMap["i1"]
    assert state.WhichOneof("ExecutionStateEnum") == "running"
    assert "A" in proto.agents.agents
    only_tags = core.filter_tree(tree, ["desiredState.workloads.*.tags"])
    assert only_tags == {"desiredState": {"workloads": {"x": {"tags": {"t": "1"}}}}}
    assert core.filter_tree(tree, ["nothing.here"]) == {}


def test_update_request_becomes_a_set_state_document() -> None:
    proto = core.tree_to_proto(core.state_tree(_complete()))
    document = core.desired_document(proto)
    x = document["desiredState"]["workloads"]["x"]
    assert x["runtime"] == "process" and x["tags"] == {"t": "1"} and x["agent"] == "A"
    assert x["controlInterfaceAccess"]["allowRules"][0] == {
        "type": "StateRule",
        "filterMasks": ["*"],
        "operation": "Read",
    }
    assert document["desiredState"]["configs"] == {"c": {"k": ["v"]}}


def _tree(workloads: dict[str, Any], configs: dict[str, Any] | None = None) -> dict[str, Any]:
    desired: dict[str, Any] = {"apiVersion": "v1", "workloads": workloads}
    if configs:
        desired["configs"] = configs
    return {"desiredState": desired, "workloadStates": {}, "agents": {}}


SIMPLE_A = {"runtime": "podman", "agent": "agent_A"}
SIMPLE_B = {"runtime": "podman", "agent": "agent_B", "dependencies": {"some_other_workload": "ADD_COND_RUNNING"}}


def test_altered_fields_as_ankaios_events_report_them() -> None:
    """The expectations of stests/control_interface/test_events.robot."""
    empty, a, b = _tree({}), _tree({"simple": SIMPLE_A}), _tree({"simple": SIMPLE_B})
    mask = ["desiredState.workloads.simple"]
    assert core.altered_fields(empty, a, mask) == (["desiredState.workloads.simple"], [], [])
    assert core.altered_fields(a, b, mask) == (
        ["desiredState.workloads.simple.dependencies"],
        ["desiredState.workloads.simple.agent"],
        [],
    )
    assert core.altered_fields(b, empty, mask) == ([], [], ["desiredState.workloads.simple"])
    agents = ["desiredState.workloads.*.agent"]
    assert core.altered_fields(empty, a, agents) == (["desiredState.workloads.simple.agent"], [], [])
    assert core.altered_fields(a, b, agents) == ([], ["desiredState.workloads.simple.agent"], [])
    assert core.altered_fields(b, empty, agents) == ([], [], ["desiredState.workloads.simple.agent"])
    deep = ["desiredState.workloads.*.*.some_other_workload"]
    assert core.altered_fields(a, b, deep) == (
        ["desiredState.workloads.simple.dependencies.some_other_workload"],
        [],
        [],
    )
    assert core.altered_fields(b, empty, deep) == (
        [],
        [],
        ["desiredState.workloads.simple.dependencies.some_other_workload"],
    )
    assert core.altered_fields(empty, a, ["desiredState.workloads.other"]) == ([], [], [])


def test_altered_fields_of_configs() -> None:
    before = {"some_config": {"param1": "a", "param2": "b", "some_sub_config": {"sub_param1": "c"}}}
    after = {"some_config": {"param1": "A", "param2": "b", "some_sub_config": {"sub_param1": "C"}}}
    empty, one, two = _tree({}), _tree({}, before), _tree({}, after)
    assert core.altered_fields(empty, one, ["desiredState.configs"]) == (["desiredState.configs"], [], [])
    assert core.altered_fields(one, two, ["desiredState.configs"]) == (
        [],
        ["desiredState.configs.some_config.param1", "desiredState.configs.some_config.some_sub_config.sub_param1"],
        [],
    )
    two_stars = ["desiredState.configs.*.*"]
    assert core.altered_fields(empty, one, two_stars)[0] == [
        "desiredState.configs.some_config.param1",
        "desiredState.configs.some_config.param2",
        "desiredState.configs.some_config.some_sub_config",
    ]
    assert core.altered_fields(two, empty, two_stars)[2] == [
        "desiredState.configs.some_config.param1",
        "desiredState.configs.some_config.param2",
        "desiredState.configs.some_config.some_sub_config",
    ]


def test_altered_fields_of_workload_states() -> None:
    complete = _complete()
    before = core.state_tree(complete)
    ws = msgspec.structs.replace(complete.workload_states[0], execution_state=pending("Starting"), seq=2)
    after = core.state_tree(msgspec.structs.replace(complete, workload_states=[ws]))
    assert core.altered_fields(before, after, ["workloadStates"]) == (
        [],
        ["workloadStates.A.x.i1.state", "workloadStates.A.x.i1.subState"],
        [],
    )


def test_kube_mount_only_into_the_target_container() -> None:
    import yaml

    from services.agent.control_interface.kube import mount_into
    from services.agent.runtimes.base import StartError

    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}},
    }
    text = yaml.safe_dump_all([pod, deployment])
    out = list(yaml.safe_load_all(mount_into(text, "p/a", "/host/ci")))
    a, b = out[0]["spec"]["containers"]
    assert a["volumeMounts"] == [{"name": "ank-control-interface", "mountPath": "/run/ankaios/control_interface"}]
    assert "volumeMounts" not in b
    assert out[0]["spec"]["volumes"][0]["hostPath"]["path"] == "/host/ci"
    out = list(yaml.safe_load_all(mount_into(text, "d-pod/c", "/host/ci")))
    assert out[1]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    for bad in ("", "p", "p/zz", "q/a"):
        with pytest.raises(StartError):
            mount_into(text, bad, "/host/ci")


def test_every_ankaios_field_of_a_workload_survives_the_round_trip_through_protobuf() -> None:
    full = Workload(
        runtime="podman",
        runtime_config="image: x",
        agent="A",
        restart_policy="ON_FAILURE",
        dependencies={"db": "ADD_COND_RUNNING"},
        tags={"t": "1"},
        configs={"alias": "c"},
        files=[FileItem(mount_point="/etc/x", data="hello")],
        control_interface_access=access(rule("ReadWrite", "*"), logs("a"), deny=(rule("Write", SIMPLE),)),
    )
    complete = CompleteState(desired=Manifest(api_version="v1", workloads={"x": full}))
    document = core.desired_document(core.tree_to_proto(core.state_tree(complete)))
    again = msgspec.convert(document["desiredState"]["workloads"]["x"], Workload)
    assert again == full
