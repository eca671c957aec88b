"""A Control Interface's LogsRequest with follow=true is a stream, as `ank
logs -f` is (services/bus/log_follower.py): the agent pushes new lines on
`ank/logs/<agent>/<workload>/stream` and the log is not queried again but
to renew the lease. One Channel on real FIFOs, an in-memory bus, and the
agent's real LogsServer over a log held in memory; what the SDK receives
(LogEntriesResponse, LogsStopResponse) is Ankaios's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import keys
from schemas.manifest import AccessRule, ControlInterfaceAccess, Manifest
from schemas.messages import CompleteState, LogsReply
from services.agent import logs as agent_logs
from services.agent.control_interface.core import ank_base, control_api
from services.agent.control_interface.shell import Channel
from services.agent.logs import LogsServer, logs_reply, parse_params
from services.bus import log_follower
from services.bus.memory import MemoryBus, MemoryHub
from tests.helpers import wait_for
from tests.memory_helpers import memory_hub
from tests.test_control_interface_channel import Client, hello

AGENT = "car1"
STREAM = keys.logs_stream_key(AGENT, "screamer")
FOLLOW_SCREAMER = ControlInterfaceAccess(allow_rules=[AccessRule(type="LogRule", workload_names=["scream*"])])


class Agent:
    """The agent's logs (its real LogsServer) over lines held here, and a
    planner stand-in answering ank/cmd/state; counts the logs queries."""

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self.bus = MemoryBus(hub, f"agent/{AGENT}")
        self.logs: dict[str, list[str]] = {"screamer": ["one", "two"]}
        self.queries: list[str] = []  # the parameters of each logs query answered
        self._lock = threading.Lock()
        self.server = LogsServer(AGENT, self._read, lambda key, chunk: self.bus.put(key, chunk, reliable=False))
        # answered on the server's thread, as the agent's `defer` does (the
        # in-memory bus keeps only the replies made before its handler returns)
        self.bus.queryable(keys.logs_key(AGENT, "*"), self._answer)
        self.bus.queryable(keys.CMD_STATE, self._state)

    def write(self, *lines: str) -> None:
        with self._lock:
            self.logs["screamer"].extend(lines)

    def remove(self, workload: str) -> None:
        with self._lock:
            del self.logs[workload]

    def _read(self, workload: str) -> list[str] | None:
        with self._lock:
            lines = self.logs.get(workload)
            return None if lines is None else list(lines)

    def _answer(self, key: str, _payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        self.queries.append(params)
        done = threading.Event()
        answered: list[list[tuple[str, LogsReply]] | Exception] = []

        def job() -> None:
            try:
                answered.append(self.server.answer(key, params))
            except Exception as exc:
                answered.append(exc)
            finally:
                done.set()

        assert self.server.defer(job) and done.wait(5)
        if isinstance(answered[0], Exception):
            raise answered[0]
        return [(k, self.bus.encode(reply)) for k, reply in answered[0]]

    def _state(self, key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        return [(key, self.bus.encode(CompleteState(desired=Manifest(api_version="v1"))))]

    def close(self) -> None:
        self.server.close()
        self.server.join(5)


@pytest.fixture
def agent() -> Iterator[Agent]:
    with memory_hub() as hub:
        a = Agent(hub)
        yield a
        a.close()


@pytest.fixture
def client(agent: Agent, tmp_path: Path) -> Iterator[Client]:
    channel = Channel(MemoryBus(agent.hub, "agent/ci"), tmp_path / "ci", "follower", FOLLOW_SCREAMER)
    c = Client(channel.folder)
    c.send(hello())
    assert c.receive().WhichOneof("FromAnkaiosEnum") == "controlInterfaceAccepted"
    yield c
    c.close()
    channel.close()


def logs_request(rid: str, *, follow: bool, tail: int | None = None) -> control_api.ToAnkaios:
    name = ank_base.WorkloadInstanceName(workloadName="screamer", agentName=AGENT)
    request = ank_base.LogsRequest(workloadNames=[name], follow=follow)
    if tail is not None:
        request.tail = tail
    return control_api.ToAnkaios(request=ank_base.Request(requestId=rid, logsRequest=request))


def cancel(rid: str) -> control_api.ToAnkaios:
    return control_api.ToAnkaios(
        request=ank_base.Request(requestId=rid, logsCancelRequest=ank_base.LogsCancelRequest())
    )


def response(c: Client) -> tuple[str, str, ank_base.Response]:
    """The next response: (its request id, its kind, it)."""
    message = c.receive()
    assert message.WhichOneof("FromAnkaiosEnum") == "response", message
    kind = message.response.WhichOneof("ResponseContent")
    assert kind is not None
    return message.response.requestId, kind, message.response


def entries(c: Client, rid: str, count: int) -> list[str]:
    """The messages of the next `count` log entries of `rid` (nothing else may come)."""
    got: list[str] = []
    while len(got) < count:
        got_rid, kind, r = response(c)
        assert (got_rid, kind) == (rid, "logEntriesResponse"), (got_rid, kind)
        assert all(e.workloadName.workloadName == "screamer" for e in r.logEntriesResponse.logEntries)
        got += [e.message for e in r.logEntriesResponse.logEntries]
    return got


def test_followed_lines_are_pushed_without_the_log_being_queried_again(
    agent: Agent, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_follower, "FOLLOW_RENEW_S", 300.0)  # no renewal within the test,
    monkeypatch.setattr(agent_logs, "FOLLOW_LEASE_S", 600.0)  # and the lease lasts however slow the machine
    client.send(logs_request("r", follow=True))
    rid, kind, r = response(client)
    assert (rid, kind) == ("r", "logsRequestAccepted")
    assert [n.workloadName for n in r.logsRequestAccepted.workloadNames] == ["screamer"]
    assert entries(client, "r", 2) == ["one", "two"]
    for i in range(3):
        agent.write(f"new {i}", f"more {i}")
        assert entries(client, "r", 2) == [f"new {i}", f"more {i}"]
    # one query (the follow=1 that took the lease); polling would have asked again and again
    assert agent.queries == ["follow=1"]


def test_a_followed_workload_that_goes_away_ends_with_a_logs_stop_response(
    agent: Agent, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_follower, "FOLLOW_RENEW_S", 0.2)
    client.send(logs_request("r", follow=True, tail=1))
    assert response(client)[:2] == ("r", "logsRequestAccepted")
    assert entries(client, "r", 1) == ["two"]
    wait_for(lambda: STREAM in agent.hub.subscriptions(), 5, "the follower's subscription")
    agent.remove("screamer")
    rid, kind, r = response(client)
    assert (rid, kind) == ("r", "logsStopResponse")
    assert r.logsStopResponse.workloadName.workloadName == "screamer"
    wait_for(lambda: STREAM not in agent.hub.subscriptions(), 5, "the subscription withdrawn")
    assert agent.queries[0] == "tail=1;follow=1"
    assert all(q.startswith("offset=2;follow=1") for q in agent.queries[1:])


def test_a_cancelled_follow_ends_without_a_stop_and_a_plain_request_gets_the_tail(agent: Agent, client: Client) -> None:
    hub = agent.hub
    client.send(logs_request("r", follow=True))
    assert response(client)[:2] == ("r", "logsRequestAccepted")
    assert entries(client, "r", 2) == ["one", "two"]
    client.send(cancel("r"))
    assert response(client)[:2] == ("r", "logsCancelAccepted")
    wait_for(lambda: STREAM not in hub.subscriptions(), 5, "the subscription withdrawn")
    agent.write("after the cancel")
    # not following: the tail, then LogsStopResponse; nothing more of the cancelled "r"
    client.send(logs_request("plain", follow=False, tail=2))
    got = [response(client) for _ in range(3)]
    assert [(rid, kind) for rid, kind, _ in got] == [
        ("plain", "logsRequestAccepted"),
        ("plain", "logEntriesResponse"),
        ("plain", "logsStopResponse"),
    ]
    assert [e.message for e in got[1][2].logEntriesResponse.logEntries] == ["two", "after the cancel"]
    assert agent.queries[-1] == "tail=2"


def test_a_wildcard_agent_or_workload_name_follows_nothing_and_ends_at_once(agent: Agent, client: Client) -> None:
    for rid, agent_name in (("star", "*"), ("deep", "**"), ("slash", "car1/screamer")):
        name = ank_base.WorkloadInstanceName(workloadName="screamer", agentName=agent_name)
        request = ank_base.LogsRequest(workloadNames=[name], follow=True)
        client.send(control_api.ToAnkaios(request=ank_base.Request(requestId=rid, logsRequest=request)))
        assert response(client)[:2] == (rid, "logsRequestAccepted")
        assert response(client)[:2] == (rid, "logsStopResponse")
    assert agent.queries == []
    assert not [key for key in agent.hub.subscriptions() if key.startswith("ank/logs/")]


# -- the shared follower itself ----------------------------------------------------------


def test_the_follower_skips_a_chunk_after_a_lost_one_and_the_renewal_fills_the_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_follower, "FOLLOW_RENEW_S", 0.3)
    lines = ["a", "b"]
    asked: list[str] = []
    with memory_hub() as hub:
        agent, reader = MemoryBus(hub, f"agent/{AGENT}"), MemoryBus(hub, "cli")

        def answer(key: str, _payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
            asked.append(params)
            return [(key, agent.encode(logs_reply("screamer", list(lines), parse_params(params))))]

        agent.queryable(keys.logs_key(AGENT, "*"), answer)
        texts: list[str] = []
        stop = threading.Event()
        result: list[bool] = []
        thread = threading.Thread(
            target=lambda: result.append(
                log_follower.follow_logs(reader, AGENT, "screamer", texts.append, stop, timeout=5.0)
            )
        )
        thread.start()
        try:
            wait_for(lambda: texts == ["a\nb\n"], 5, "the log so far")
            lines += ["c", "d"]  # "c" was pushed and lost; "d" arrives after the gap
            agent.put(STREAM, LogsReply(workload="screamer", text="d\n", start=3, offset=4))
            wait_for(lambda: len(texts) == 2, 5, "the renewal")
            assert texts[1] == "c\nd\n"  # each line once, in order
            assert asked[1] == "offset=2;follow=1"
        finally:
            stop.set()
            thread.join(5)
        assert result == [True]
        assert STREAM not in hub.subscriptions()


def test_the_follower_ends_false_when_no_agent_answers() -> None:
    with memory_hub() as hub:
        reader = MemoryBus(hub, "cli")
        texts: list[str] = []
        assert (
            log_follower.follow_logs(reader, AGENT, "screamer", texts.append, threading.Event(), timeout=0.5) is False
        )
        assert texts == []
        assert hub.subscriptions() == []
