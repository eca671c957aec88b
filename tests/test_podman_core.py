"""The podman connectors' pure decisions (no podman needed)."""

from __future__ import annotations

import pytest
import yaml

from schemas.runtime_configs import PodmanConfig
from services.agent.runtimes.base import StartError
from services.agent.runtimes.podman.core import (
    ContainerEvent,
    LogLines,
    Run,
    decode_podman_config,
    map_image,
    on_container_event,
    on_started,
    on_stop_asked,
    parse_api_event,
    parse_api_stats,
    parse_event,
    parse_image_map,
    parse_size,
    parse_stats,
    run_command,
    start_error,
)
from services.agent.runtimes.podman_kube.core import decode_kube_config, play_command, prepare_manifest

RULES = parse_image_map("ghcr.io/eclipse-ankaios/tests/=localhost/ank-test/, image_typo:latest=localhost/x:1")


def feed(run: Run, *events: tuple[str, str, int | None]) -> tuple[Run, list[tuple[str, int | None]]]:
    said: list[tuple[str, int | None]] = []
    for status, cid, code in events:
        run, out = on_container_event(run, ContainerEvent(ID=cid, Status=status, ContainerExitCode=code))
        said += [(e.kind, e.exit_code) for e in out]
    return run, said


# -- runtimeConfig -------------------------------------------------------------


def test_runtime_config_reads_ankaios_fields() -> None:
    text = "image: a:1\ncommandOptions: [--rm, -p, '8081:80']\ncommandArgs: [sleep, 30]\n"
    config = decode_podman_config(text + "generalOptions: [--log-level, info]")
    assert config == PodmanConfig("a:1", ["--rm", "-p", "8081:80"], ["sleep", "30"], ["--log-level", "info"])


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("image: [unclosed", "not valid YAML"),
        ("- just\n- a list", "must be a mapping"),
        ("image: a\nfoo: 1", "foo"),
        ("commandArgs: [x]", "image"),
        ("image: ''", "image"),
        ("image: a\ncommandArgs: {a: 1}", "commandArgs"),
    ],
)
def test_broken_runtime_config_is_a_permanent_start_error_naming_the_problem(text: str, names: str) -> None:
    with pytest.raises(StartError) as caught:
        decode_podman_config(text)
    assert caught.value.permanent is True
    assert names in str(caught.value)


# -- image map -----------------------------------------------------------------


def test_image_map_maps_exact_names_and_prefixes() -> None:
    assert map_image(RULES, "ghcr.io/eclipse-ankaios/tests/alpine:latest") == "localhost/ank-test/alpine:latest"
    assert map_image(RULES, "ghcr.io/eclipse-ankaios/tests/nginx:alpine-slim") == "localhost/ank-test/nginx:alpine-slim"
    assert map_image(RULES, "image_typo:latest") == "localhost/x:1"
    assert map_image(RULES, "docker.io/library/alpine") == "docker.io/library/alpine"


def test_image_map_rejects_a_rule_without_target() -> None:
    with pytest.raises(ValueError, match="FROM=TO"):
        parse_image_map("a=b,broken")


# -- the podman run command ----------------------------------------------------


def test_run_command_has_our_name_mounts_and_labels_the_manifest_cannot_override() -> None:
    config = PodmanConfig("img", ["--rm", "--label", "ank.agent=evil"], ["echo", "hi"], ["--log-level", "info"])
    argv = run_command(config, name="w.i.a", labels={"ank.agent": "a"}, mounts=[("/h/f", "/etc/f")], image="mapped")
    assert argv[:3] == ["--log-level", "info", "run"]
    assert argv[argv.index("--name") + 1] == "w.i.a"
    assert "--replace" in argv
    assert "type=bind,source=/h/f,destination=/etc/f,ro=true" in argv
    assert argv.index("ank.agent=a") > argv.index("ank.agent=evil")  # podman keeps the last
    assert argv[-3:] == ["mapped", "echo", "hi"]


def test_run_command_keeps_a_name_the_manifest_gives() -> None:
    argv = run_command(PodmanConfig("img", ["--name", "test_workload1"]), name="w.i.a", labels={})
    assert argv.count("--name") == 1
    assert "--replace" not in argv
    assert argv[argv.index("--name") + 1] == "test_workload1"


@pytest.mark.parametrize(
    ("stderr", "permanent"),
    [
        ('Error: short-name "image_typo:latest" did not resolve to an alias', False),
        ("Error: localhost/nope: image not known", False),
        ("Error: unknown flag: --bogus\nSee 'podman run --help'", True),
        ("Error: rootlessport listen tcp 0.0.0.0:80: bind: address already in use", False),
    ],
)
def test_failed_podman_run_is_retryable_unless_the_command_line_is_wrong(stderr: str, permanent: bool) -> None:
    error = start_error("run", 125, stderr)
    assert error.permanent is permanent
    assert not str(error).startswith("Error")
    assert "podman run failed" in str(error)


# -- events → runtime events ----------------------------------------------------


def test_parse_event_ignores_garbage_and_other_types() -> None:
    assert parse_event(b"not json") is None
    assert parse_event(b"") is None
    assert parse_event(b'{"Type":"image","Status":"pull"}') is None
    assert parse_event(b'{"ID":1}') is None
    event = parse_event(b'{"ID":"c1","Status":"died","Type":"container","Attributes":{"ank.run":"r"}}')
    assert event is not None and event.Attributes["ank.run"] == "r"


def test_container_start_then_death_reports_running_then_exit_code() -> None:
    _, said = feed(Run("w", "i", "r"), ("create", "c1", None), ("start", "c1", None), ("died", "c1", 3))
    assert said == [("running", None), ("exited", 3)]


def test_died_without_exit_code_means_zero() -> None:
    _, said = feed(Run("w", "i", "r"), ("start", "c1", None), ("died", "c1", None))
    assert said == [("running", None), ("exited", 0)]


def test_removal_nobody_asked_for_is_lost_even_after_exit() -> None:
    _, said = feed(Run("w", "i", "r"), ("start", "c1", None), ("died", "c1", 0), ("remove", "c1", None))
    assert said == [("running", None), ("exited", 0), ("lost", None)]


def test_removal_after_a_requested_stop_is_not_lost() -> None:
    run, _ = feed(Run("w", "i", "r"), ("start", "c1", None))
    run = Run("w", "i", "r", phases=run.phases, summary=run.summary, stopping=True)
    _, more = feed(run, ("died", "c1", 0), ("remove", "c1", None))
    assert more == [("exited", 0)]


def test_stop_of_a_run_that_already_ended_tells_its_exit_again() -> None:
    run, _ = feed(Run("w", "i", "r"), ("start", "c1", None), ("died", "c1", 5))
    _, said = on_stop_asked(run)
    assert [(e.kind, e.exit_code) for e in said] == [("exited", 5)]
    running, _ = feed(Run("w", "i", "r"), ("start", "c1", None))
    stopping, said = on_stop_asked(running)
    assert said == [] and stopping.stopping


def test_nothing_is_reported_once_removal_was_asked() -> None:
    _, said = feed(Run("w", "i", "r", removing=True), ("start", "c1", None), ("died", "c1", 1))
    assert said == []


def test_duplicate_and_replayed_events_report_once() -> None:
    _, said = feed(
        Run("w", "i", "r"), ("start", "c1", None), ("start", "c1", None), ("died", "c1", 2), ("died", "c1", 2)
    )
    assert said == [("running", None), ("exited", 2)]


def test_start_after_exit_is_running_again() -> None:
    _, said = feed(Run("w", "i", "r"), ("start", "c1", None), ("died", "c1", 1), ("start", "c1", None))
    assert said == [("running", None), ("exited", 1), ("running", None)]


def test_stream_catching_up_after_an_exit_file_is_not_a_restart() -> None:
    _, said = feed(
        Run("w", "i", "r"),
        ("exit-file", "c1", 2),  # before `podman run -d` returned, before the stream's start
        ("start", "c1", None),
        ("died", "c1", 2),
        ("start", "c1", None),  # after the stream caught up: a real restart
    )
    assert said == [("exited", 2), ("running", None)]


def test_run_returning_after_the_container_already_died_adds_nothing() -> None:
    run, _ = feed(Run("w", "i", "r"), ("start", "c1", None), ("died", "c1", 0))
    _, more = on_started(run, "c1")
    assert more == []


def test_kube_run_is_running_when_all_containers_run_and_exits_with_the_first_failure() -> None:
    run = Run("w", "i", "r", expected=2)
    _, said = feed(
        run,
        ("start", "a", None),
        ("start", "b", None),
        ("died", "a", 0),
        ("died", "b", 4),
    )
    assert said == [("running", None), ("exited", 4)]


def test_kube_init_container_exit_is_not_the_end_of_the_pod() -> None:
    _, said = feed(
        Run("w", "i", "r", expected=2),
        ("start", "init", None),
        ("died", "init", 0),
        ("start", "a", None),
        ("start", "b", None),
    )
    assert said == [("running", None)]


# -- usage -----------------------------------------------------------------------


def test_stats_are_read_by_name_and_short_id() -> None:
    rows = [{"id": "63862bdf5801", "name": "w.i.a", "cpu_percent": "12.5%", "mem_usage": "876.5kB / 25.28GB"}]
    stats = parse_stats(rows)
    assert stats["w.i.a"] == (12.5, 876500)
    assert stats["63862bdf5801"] == (12.5, 876500)
    assert parse_stats("garbage") == {}
    assert parse_size("1.5MiB") == 1572864
    assert parse_size("lots") is None


def test_api_stats_rows_give_the_same_shape_as_the_cli_ones() -> None:
    rows = [
        {"Name": "w.i.a", "ContainerID": "63862bdf5801" + "0" * 52, "CPU": 12.5, "MemUsage": 876500},
        {"Name": "odd", "ContainerID": "abc", "CPU": "12%", "MemUsage": True},  # wrong types: unknown, not wrong
        {"ContainerID": "nameless"},
        "junk",
    ]
    stats = parse_api_stats(rows)
    assert stats["w.i.a"] == stats["63862bdf5801"] == (12.5, 876500)
    assert stats["odd"] == (None, None)
    assert "nameless" not in stats
    assert parse_api_stats(None) == {}


# -- podman-kube -------------------------------------------------------------------

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: simple-pod
spec:
  restartPolicy: Never
  containers:
  - name: simple-container
    image: ghcr.io/eclipse-ankaios/tests/alpine:latest
    command: ["sleep", "30"]
"""

DEPLOYMENT = """
apiVersion: v1
kind: Deployment
metadata:
  name: pod_A
spec:
  replicas: 1
  template:
    metadata:
      labels:
        app: alpine
    spec:
      containers:
      - name: container_A
        image: ghcr.io/eclipse-ankaios/tests/alpine:latest
      - name: container_A_sidecar
        image: ghcr.io/eclipse-ankaios/tests/alpine:latest
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cm
"""


def test_kube_manifest_gets_our_labels_and_mapped_images() -> None:
    play = prepare_manifest(POD, {"ank.run": "r1", "ank.agent": "a"}, RULES)
    doc = yaml.safe_load(play.text)
    assert doc["metadata"]["labels"] == {"ank.run": "r1", "ank.agent": "a"}
    assert doc["spec"]["containers"][0]["image"] == "localhost/ank-test/alpine:latest"
    assert play.expected == 1
    assert play.pods == ["simple-pod"]


def test_kube_deployment_counts_its_containers_and_keeps_other_documents() -> None:
    play = prepare_manifest(DEPLOYMENT, {"ank.run": "r1"}, RULES)
    docs = list(yaml.safe_load_all(play.text))
    assert docs[0]["spec"]["template"]["metadata"]["labels"] == {"app": "alpine", "ank.run": "r1"}
    assert docs[1]["kind"] == "ConfigMap"
    assert play.expected == 2
    assert play.pods == ["pod_A-pod"]


@pytest.mark.parametrize(
    ("manifest", "names"),
    [
        ("kind: Pod\nmetadata: {name: x}\nspec: {containers: [}", "not valid YAML"),
        ("kind: ConfigMap\nmetadata: {name: x}", "no Pod or Deployment"),
        ("kind: Pod\nspec: {containers: [{name: c, image: i}]}", "metadata.name"),
        ("kind: Pod\nmetadata: {name: x}\nspec: {}", "no containers"),
    ],
)
def test_kube_manifest_that_can_never_play_is_a_permanent_error(manifest: str, names: str) -> None:
    with pytest.raises(StartError) as caught:
        prepare_manifest(manifest, {}, RULES)
    assert caught.value.permanent is True
    assert names in str(caught.value)


def test_kube_config_accepts_ankaios_control_interface_target_and_adds_replace() -> None:
    config = decode_kube_config("controlInterfaceTarget: pod_A-pod/container_A\nmanifest: |\n  kind: Pod\n")
    assert config.manifest.startswith("kind: Pod")
    assert play_command(config, "/f.yaml") == ["kube", "play", "--replace", "/f.yaml"]
    with pytest.raises(StartError, match="unknown"):
        decode_kube_config("manifest: x\nbogus: 1")


def _frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_log_lines_from_a_multiplexed_body_fed_in_any_pieces() -> None:
    body = _frame(1, b"one\ntw") + _frame(2, b"err\n") + _frame(1, b"o\n") + _frame(1, b"\xff last")
    for cut in range(len(body) + 1):  # every split of the body into two pieces: headers cut too
        lines = LogLines()
        got = lines.feed(body[:cut]) + lines.feed(body[cut:]) + lines.end()
        assert got == ["one", "err", "two", "\ufffd last"], cut


def test_log_lines_of_a_tty_container_are_its_raw_output() -> None:
    lines = LogLines()
    assert lines.feed(b"hel") == []
    assert lines.feed(b"lo\r\nworld\n") == ["hello\r", "world"]
    assert lines.end() == []
    assert LogLines().end() == []


# A `died` line of Podman 4.3's `GET /libpod/events` (its Docker-shaped events), as the service sent it.
API_DIED = (
    '{"status":"died","id":"1ab3","from":"localhost/ank-test/alpine:latest","Type":"container","Action":"died",'
    '"Actor":{"ID":"1ab3","Attributes":{"ank.agent":"a1","ank.run":"r1","containerExitCode":"137",'
    '"image":"localhost/ank-test/alpine:latest","name":"w.i1.a1","podId":""}},'
    '"scope":"local","time":1796023935,"timeNano":1796023935104441297}'
)


def test_api_events_read_as_the_cli_lines() -> None:
    event = parse_api_event(API_DIED)
    assert event == ContainerEvent(
        ID="1ab3",
        Name="w.i1.a1",
        Status="died",
        Type="container",
        Time="1796023935.104441297",
        ContainerExitCode=137,
        Attributes={"ank.agent": "a1", "ank.run": "r1"},
    )
    zero = parse_api_event(API_DIED.replace('"137"', '"0"'))
    assert zero is not None and zero.ContainerExitCode is None  # as the CLI omits a 0
    assert parse_api_event(API_DIED.replace('"Type":"container"', '"Type":"image"')) is None
    assert parse_api_event("") is None
    assert parse_api_event("{not json") is None
    assert parse_api_event('{"Actor": 5}') is None
    odd = parse_api_event(API_DIED.replace('"137"', '"x"'))
    assert odd is not None and odd.ContainerExitCode is None
