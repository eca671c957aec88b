"""The exhaustive ACL test, generated from the policy table
(services.bus.policy.POLICY): for every identity x operation x key form
(literal; each chunk replaced by `*`; each chunk replaced by a `$*` pattern;
`**`; each prefix followed by `**`) of every key the table names, a real
secured router (Zenoh 1.10, the generated configuration) must let through
exactly what the table grants.

One router for the module, opened in this process: its own session's
subscriber, queryable and liveliness subscriber on `**` see every message that
passed the router's ingress check (local entities are not filtered), and its
own puts, queries and tokens probe what the clients declared. Everything of
one operation is sent at once; the allowed ones are awaited, then a grace
period lets any wrongly allowed one arrive (messages on one link are handled
in order, so the grace covers only the links that sent nothing allowed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zenoh

from services.bus import policy, secure
from tests.helpers import free_port
from tests.test_security import make_certs

AGENTS = ["car1", "car2"]
IDENTITIES = ["cli", "planner", "health-watcher", "scheduler", "agent-car1", "observer", "edge", "workload", "intruder"]
GRACE_S = 1.5
WAIT_S = 20.0


def _concrete(key_expr: str) -> str:
    return "/".join({"**": "x", "*": "w"}.get(chunk, chunk) for chunk in key_expr.split("/"))


def targets() -> list[str]:
    """A concrete key for every key expression the table names (for car1 and car2)."""
    keys: set[str] = {"ank/desired", "ank/cmd/apply", "ank/cmd/delete", "ank/cmd/state"}
    for identity in POLICY_IDENTITIES:
        for agent in AGENTS:
            for grants in policy.grants_of(identity.format(agent=agent), AGENTS).values():
                keys.update(_concrete(k) for k in grants)
    return sorted(keys)


POLICY_IDENTITIES = [i for i in policy.POLICY if i != policy.WORKLOAD]
TARGETS = targets()


def forms(key: str) -> list[str]:
    chunks = key.split("/")
    out = [key, "**"]
    for i, chunk in enumerate(chunks):
        out.append("/".join([*chunks[:i], "*", *chunks[i + 1 :]]))
        out.append("/".join([*chunks[:i], f"{chunk[0]}$*", *chunks[i + 1 :]]))
    out += ["/".join([*chunks[:i], "**"]) for i in range(1, len(chunks))]
    return list(dict.fromkeys(out))


def expected(identity: str, operation: str, key_expr: str) -> bool:
    if identity == policy.WORKLOAD:
        return not policy.includes(policy.ORCHESTRATOR_KEYS, key_expr)
    return policy.allowed(identity, operation, key_expr, AGENTS)


class Seen:
    def __init__(self) -> None:
        self.items: set[tuple[str, str]] = set()
        self.cond = threading.Condition()

    def add(self, item: tuple[str, str]) -> None:
        with self.cond:
            self.items.add(item)
            self.cond.notify_all()

    def wait_all(self, wanted: set[tuple[str, str]]) -> None:
        deadline = time.monotonic() + WAIT_S
        with self.cond:
            while not wanted <= self.items:
                left = deadline - time.monotonic()
                assert left > 0, f"allowed but never seen: {sorted(wanted - self.items)[:20]}"
                self.cond.wait(left)
        time.sleep(GRACE_S)  # the denied ones: nothing later on their links to order by


class Matrix:
    def __init__(self, router: zenoh.Session, sessions: dict[str, zenoh.Session]) -> None:
        self.router = router
        self.sessions = sessions
        self.cases = [(t, f) for t in TARGETS for f in forms(t)]

    def check(self, operation: str, send: Callable[[zenoh.Session, str, str, Seen], Any], seen: Seen) -> None:
        """send(session, identity, key_expr, seen) for every case; then
        compares what passed with the table."""
        want: set[tuple[str, str]] = set()
        for identity, session in self.sessions.items():
            for _target, form in self.cases:
                send(session, identity, form, seen)
                if expected(identity, operation, form):
                    want.add((identity, form))
        seen.wait_all(want)
        wrong = sorted(seen.items - want)
        assert wrong == [], f"{operation}: denied by the table but let through: {wrong[:30]} ({len(wrong)})"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    cert_dir = tmp_path_factory.mktemp("acl-certs")
    make_certs(cert_dir, "agent-car1", "agent-car2", "observer", "edge", "workload", "intruder")
    endpoint = f"tls/127.0.0.1:{free_port()}"
    router = zenoh.open(secure.router_config(cert_dir, AGENTS, endpoint))
    sessions: dict[str, zenoh.Session] = {}
    try:
        for identity in IDENTITIES:
            sessions[identity] = zenoh.open(secure.client_config(cert_dir, identity, endpoint))
        yield Matrix(router, sessions)
    finally:
        for session in sessions.values():
            session.close()
        router.close()


def test_the_model_agrees_with_zenohs_key_expression_inclusion() -> None:
    keys = sorted({f for t in targets() for f in forms(t)} | set(targets()))
    grants = sorted(
        {k.format(agent=a) for g in policy.POLICY.values() for ks in g.values() for k in ks for a in AGENTS}
    )
    for wide in [*grants, "ank/**", "**"]:
        for narrow in keys:
            truth = zenoh.KeyExpr.autocanonize(wide).includes(zenoh.KeyExpr.autocanonize(narrow))
            assert policy.includes(wide, narrow) == truth, (wide, narrow)


def test_puts_and_deletes(matrix: Matrix) -> None:
    for operation, kind in ((policy.PUT, zenoh.SampleKind.PUT), (policy.DELETE, zenoh.SampleKind.DELETE)):
        seen = Seen()

        def on_sample(sample: zenoh.Sample, kind: zenoh.SampleKind = kind, seen: Seen = seen) -> None:
            if sample.kind == kind and sample.attachment is not None:
                identity, _, form = sample.attachment.to_bytes().decode().partition("|")
                seen.add((identity, form))

        sub = matrix.router.declare_subscriber("**", on_sample)

        def send(session: zenoh.Session, identity: str, form: str, _seen: Seen, operation: str = operation) -> None:
            tag = f"{identity}|{form}".encode()
            if operation == policy.PUT:
                session.put(form, b"x", attachment=tag)
            else:
                session.delete(form, attachment=tag)

        try:
            matrix.check(operation, send, seen)
        finally:
            sub.undeclare()


def test_queries(matrix: Matrix) -> None:
    seen = Seen()

    def on_query(query: zenoh.Query) -> None:
        if query.attachment is not None:
            identity, _, form = query.attachment.to_bytes().decode().partition("|")
            seen.add((identity, form))
        query.drop()

    queryable = matrix.router.declare_queryable("**", on_query)

    def send(session: zenoh.Session, identity: str, form: str, _seen: Seen) -> None:
        session.get(form, handler=lambda _reply: None, attachment=f"{identity}|{form}".encode(), timeout=5.0)

    try:
        matrix.check(policy.QUERY, send, seen)
    finally:
        queryable.undeclare()


def test_subscriber_and_queryable_declarations(matrix: Matrix) -> None:
    """Every identity declares every form; the router then publishes (and
    queries) every target. A session must receive exactly the targets one of
    its allowed declarations covers (a session hands a sample it receives to
    all its matching subscribers, so what counts is what reaches the session).
    `workload` receives nothing under ank/ (egress)."""
    all_forms = sorted({f for _t, f in matrix.cases})
    for operation in (policy.SUBSCRIBE, policy.QUERYABLE):
        seen = Seen()
        entities: list[Any] = []

        def received(identity: str, key: str, seen: Seen = seen) -> None:
            if key in TARGETS:
                seen.add((identity, key))

        for identity, session in matrix.sessions.items():
            for form in all_forms:
                if operation == policy.SUBSCRIBE:

                    def on_sample(sample: zenoh.Sample, i: str = identity) -> None:
                        received(i, str(sample.key_expr))

                    entities.append(session.declare_subscriber(form, on_sample))
                else:

                    def on_query(q: zenoh.Query, i: str = identity) -> None:
                        received(i, str(q.key_expr))
                        q.drop()

                    entities.append(session.declare_queryable(form, on_query))
        want = {
            (i, t)
            for i in matrix.sessions
            if i != policy.WORKLOAD
            for t in TARGETS
            if any(expected(i, operation, f) and policy.includes(f, t) for f in all_forms)
        }
        _probe_until(matrix, operation, seen, want)
        for entity in entities:
            entity.undeclare()
        wrong = sorted(seen.items - want)
        assert wrong == [], f"{operation}: reached a session the table denies it: {wrong[:30]} ({len(wrong)})"


def _probe_until(matrix: Matrix, operation: str, seen: Seen, want: set[tuple[str, str]]) -> None:
    """Declarations travel asynchronously: probes every target until every
    allowed declaration answered, then waits the grace period."""
    deadline = time.monotonic() + WAIT_S
    while True:
        for target in TARGETS:
            if operation == policy.SUBSCRIBE:
                matrix.router.put(target, b"probe")
            else:
                matrix.router.get(target, handler=lambda _r: None, timeout=1.0)
        with seen.cond:
            if seen.cond.wait_for(lambda: want <= seen.items, timeout=1.0):
                break
        assert time.monotonic() < deadline, f"{operation}: allowed but never reached: {sorted(want - seen.items)}"
    time.sleep(GRACE_S)


def test_liveliness_tokens(matrix: Matrix) -> None:
    seen = Seen()

    def on_token(sample: zenoh.Sample) -> None:
        if sample.kind == zenoh.SampleKind.PUT:  # not the previous identity's tokens going away
            seen.add(("?", str(sample.key_expr)))

    sub = matrix.router.liveliness().declare_subscriber("**", on_token)
    tokens = []
    try:
        want: set[tuple[str, str]] = set()
        # One identity at a time: a token carries no attachment to tell who declared it.
        for identity, session in matrix.sessions.items():
            seen.items.clear()
            mine = [form for _t, form in matrix.cases if "$*" not in form]
            for form in mine:
                try:
                    tokens.append(session.liveliness().declare_token(form))
                except zenoh.ZError:
                    assert not expected(identity, policy.TOKEN, form), (identity, form)
            want = {("?", f) for f in mine if expected(identity, policy.TOKEN, f)}
            seen.wait_all(want)
            wrong = sorted(k for _, k in seen.items - want)
            assert wrong == [], f"{identity}: tokens denied by the table but declared: {wrong}"
            for token in tokens:
                token.undeclare()
            tokens.clear()
    finally:
        for token in tokens:
            token.undeclare()
        sub.undeclare()


def test_liveliness_queries(matrix: Matrix) -> None:
    """What a client's liveliness query returns (so the egress check counts
    too: a workload may ask `**`, but nothing under ank/ comes back)."""
    token = matrix.router.liveliness().declare_token("ank/agents/car1")
    seen = Seen()
    want: set[tuple[str, str]] = set()
    try:
        for identity, session in matrix.sessions.items():
            for form in forms("ank/agents/car1"):

                def on_reply(reply: zenoh.Reply, i: str = identity, f: str = form) -> None:
                    if reply.ok is not None and str(reply.ok.key_expr) == "ank/agents/car1":
                        seen.add((i, f))

                session.liveliness().get(form, handler=on_reply, timeout=2.0)
                if identity != policy.WORKLOAD and expected(identity, policy.LIVELINESS_QUERY, form):
                    want.add((identity, form))
        seen.wait_all(want)
        wrong = sorted(seen.items - want)
        assert wrong == [], f"liveliness queries denied by the table but answered: {wrong}"
    finally:
        token.undeclare()


def test_the_policy_table_in_docs_is_generated() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    assert policy.markdown_table() in doc, "docs/security.md: paste services.bus.policy.markdown_table()"


def test_liveliness_subscribers(matrix: Matrix) -> None:
    """Liveliness subscribers on every form of an agent's token: a session
    learns of the router's token only through a declaration the table allows."""
    token_key = "ank/agents/car1"
    seen = Seen()
    entities = []
    for identity, session in matrix.sessions.items():
        for form in forms(token_key):

            def on_token(sample: zenoh.Sample, i: str = identity) -> None:
                if sample.kind == zenoh.SampleKind.PUT and str(sample.key_expr) == token_key:
                    seen.add((i, token_key))

            entities.append(session.liveliness().declare_subscriber(form, on_token, history=True))
    want = {
        (i, token_key)
        for i in matrix.sessions
        if i != policy.WORKLOAD
        and any(expected(i, policy.LIVELINESS_SUBSCRIBE, f) and policy.includes(f, token_key) for f in forms(token_key))
    }
    token = matrix.router.liveliness().declare_token(token_key)
    try:
        seen.wait_all(want)
        wrong = sorted(seen.items - want)
        assert wrong == [], f"liveliness subscribers denied by the table but told: {wrong}"
    finally:
        token.undeclare()
        for entity in entities:
            entity.undeclare()
