"""A wire-level STAND-IN for the Kubernetes API server (not a real one): HTTP
on loopback, JSON as the API server speaks it, enough for a scheduler:

- GET  /api/v1/pods, /api/v1/namespaces/<ns>/pods   list, or watch=true
       (chunked JSON lines from resourceVersion, fieldSelector on
       spec.schedulerName / spec.nodeName / metadata.*, timeoutSeconds,
       ERROR 410 Gone when the resourceVersion was compacted away; objects
       leaving the selector arrive as DELETED, as from the real server)
- GET  /api/v1/nodes
- POST /api/v1/namespaces/<ns>/pods/<name>/binding   201 Status, 409 when
       already bound, 404 when there is no such pod
- POST /api/v1/namespaces/<ns>/events                201

The test drives it directly (add_node, create_pod, compact, ...)."""

from __future__ import annotations

import copy
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Obj = dict[str, Any]


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


def _list(kind: str, rv: str, items: list[Obj]) -> Obj:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _matches(obj: Obj | None, selector: list[tuple[str, str, str]]) -> bool:
    if obj is None:
        return False
    for path, op, value in selector:
        have = _field(obj, path)
        if (op == "=" and have != value) or (op == "!=" and have == value):
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    out = []
    for term in filter(None, text.split(",")):
        m = re.match(r"^([A-Za-z.]+)(!=|==|=)(.*)$", term)
        if m is None:
            raise ValueError(f"bad fieldSelector term {term!r}")
        out.append((m.group(1), "=" if m.group(2) == "==" else m.group(2), m.group(3)))
    return out


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client dropping a kept-alive connection is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class KubeStandIn:
    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], Obj] = {}
        self.nodes: dict[str, Obj] = {}
        self.events: list[Obj] = []
        self.bindings: list[tuple[str, str, str]] = []  # (namespace, pod, node)
        self.binding_conflicts = 0
        self.list_calls = 0
        self.watch_calls = 0
        self.rv = 100
        self.history: list[tuple[int, Obj | None, Obj | None]] = []  # (rv, old, new)
        self.oldest_rv = 100  # a watch from an older resourceVersion gets 410 Gone
        self.cond = threading.Condition()
        self.closing = False
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # As Go's net/http does: without it, headers and body in two writes meet
                # delayed ACKs on kept-alive connections (~40 ms per request).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                standin._get(self)

            def do_POST(self) -> None:
                standin._post(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self) -> str:
        return (
            "apiVersion: v1\nkind: Config\ncurrent-context: standin\n"
            f"clusters:\n- name: standin\n  cluster:\n    server: {self.url}\n"
            "contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n"
            "users:\n- name: standin\n  user:\n    token: standin-token\n"
        )

    # -- the test's side ---------------------------------------------------------
    def _change(self, old: Obj | None, new: Obj | None) -> None:
        # caller holds self.cond
        self.rv += 1
        if new is not None:
            new["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, copy.deepcopy(old), copy.deepcopy(new)))
        self.cond.notify_all()

    def add_node(
        self,
        name: str,
        *,
        arch: str = "arm64",
        ready: bool = True,
        unschedulable: bool = False,
        taints: list[Obj] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        with self.cond:
            self.rv += 1
            self.nodes[name] = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "resourceVersion": str(self.rv),
                    "labels": {"kubernetes.io/arch": arch, "kubernetes.io/hostname": name, **(labels or {})},
                },
                "spec": {"unschedulable": unschedulable, **({"taints": taints} if taints else {})},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
            }

    def create_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        scheduler_name: str = "sdi-scheduler",
        node_selector: dict[str, str] | None = None,
        tolerations: list[Obj] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        with self.cond:
            pod = {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": f"uid-{namespace}-{name}",
                    **({"annotations": annotations} if annotations else {}),
                },
                "spec": {
                    "schedulerName": scheduler_name,
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.9"}],
                    **({"nodeSelector": node_selector} if node_selector else {}),
                    **({"tolerations": tolerations} if tolerations else {}),
                },
                "status": {"phase": "Pending"},
            }
            self.pods[(namespace, name)] = pod
            self._change(None, pod)

    def bind_elsewhere(self, name: str, node: str, namespace: str = "default") -> None:
        """Someone else binds the pod (the scheduler will get 409 if it tries)."""
        with self.cond:
            pod = self.pods[(namespace, name)]
            old = copy.deepcopy(pod)
            pod["spec"]["nodeName"] = node
            self._change(old, pod)

    def compact(self) -> None:
        """Forget the history: watches from an older resourceVersion get 410 Gone."""
        with self.cond:
            self.history.clear()
            self.rv += 10  # other objects changed meanwhile; their history is gone too
            self.oldest_rv = self.rv + 1
            self.cond.notify_all()

    def node_of(self, name: str, namespace: str = "default") -> str:
        with self.cond:
            return str(self.pods[(namespace, name)]["spec"].get("nodeName") or "")

    # -- HTTP --------------------------------------------------------------------
    def _reply(self, h: BaseHTTPRequestHandler, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/api/v1/nodes":
            with self.cond:
                items = [copy.deepcopy(n) for _, n in sorted(self.nodes.items())]
                rv = str(self.rv)
            self._reply(
                h, 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}
            )
            return
        m = re.match(r"^/api/v1(?:/namespaces/([^/]+))?/pods$", url.path)
        if m is None:
            self._reply(h, 404, _status(404, "NotFound", f"the stand-in does not serve {url.path}"))
            return
        try:
            selector = parse_field_selector(query.get("fieldSelector", ""))
        except ValueError as exc:
            self._reply(h, 400, _status(400, "BadRequest", str(exc)))
            return
        if m.group(1):
            selector.append(("metadata.namespace", "=", m.group(1)))
        if query.get("watch") in ("true", "1"):
            self._watch(h, selector, query)
            return
        with self.cond:
            self.list_calls += 1
            items = [copy.deepcopy(p) for _, p in sorted(self.pods.items()) if _matches(p, selector)]
            rv = str(self.rv)
        self._reply(
            h, 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}
        )

    def _watch(self, h: BaseHTTPRequestHandler, selector: list[tuple[str, str, str]], query: dict[str, str]) -> None:
        with self.cond:
            self.watch_calls += 1
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(event: Obj) -> None:
            data = json.dumps(event).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        try:
            with self.cond:
                too_old = bool(since) and since < self.oldest_rv - 1
                current = self.oldest_rv - 1
            if too_old:
                send(
                    {
                        "type": "ERROR",
                        "object": _status(410, "Expired", f"too old resource version: {since} ({current})"),
                    }
                )
                return
            position = since
            while True:
                with self.cond:
                    while not self.closing and not any(rv > position for rv, _, _ in self.history):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        self.cond.wait(min(remaining, 0.5))
                    if self.closing:
                        return
                    due = [(rv, old, new) for rv, old, new in self.history if rv > position]
                for rv, old, new in due:
                    position = rv
                    was, now = _matches(old, selector), _matches(new, selector)
                    if now:
                        send({"type": "MODIFIED" if was else "ADDED", "object": new})
                    elif was:
                        gone = copy.deepcopy(new or old)
                        assert gone is not None  # `was` matched, so old is an object
                        gone["metadata"]["resourceVersion"] = str(rv)
                        send({"type": "DELETED", "object": gone})
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except OSError:
                pass
            h.close_connection = True

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
        m = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/binding$", url.path)
        if m:
            namespace, name = m.group(1), m.group(2)
            node = str((body.get("target") or {}).get("name") or "")
            with self.cond:
                pod = self.pods.get((namespace, name))
                if pod is None:
                    code, reply = 404, _status(404, "NotFound", f'pods "{name}" not found')
                elif pod["spec"].get("nodeName"):
                    self.binding_conflicts += 1
                    bound_to = pod["spec"]["nodeName"]
                    message = (
                        f'Operation cannot be fulfilled on pods/binding "{name}": already assigned to "{bound_to}"'
                    )
                    code, reply = 409, _status(409, "Conflict", message)
                elif node not in self.nodes:
                    code, reply = 400, _status(400, "BadRequest", f"node {node!r} not found")
                else:
                    old = copy.deepcopy(pod)
                    pod["spec"]["nodeName"] = node
                    self.bindings.append((namespace, name, node))
                    self._change(old, pod)
                    code, reply = 201, _status(201, "", "")
            self._reply(h, code, reply)
            return
        m = re.match(r"^/api/v1/namespaces/([^/]+)/events$", url.path)
        if m:
            with self.cond:
                self.events.append(body)
                self.cond.notify_all()
            self._reply(h, 201, body)
            return
        self._reply(h, 404, _status(404, "NotFound", f"the stand-in does not serve POST {url.path}"))


@contextmanager
def running_standin() -> Iterator[KubeStandIn]:
    standin = KubeStandIn()
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
