"""A wire-level STAND-IN for the Kubernetes API server (not a real one): HTTP
or HTTPS on loopback, JSON as the API server speaks it, used by the tests and
the bench through the REAL `kubernetes` Python client. It behaves like a
busy API server where a scheduler relies on it:

- pods: list and watch (chunked JSON lines from a resourceVersion),
  fieldSelector on the fields the API server supports for pods (others: 400
  "field label not supported"), timeoutSeconds; BOOKMARK events every
  `bookmark_interval_s` and just before timeoutSeconds ends (when
  allowWatchBookmarks); history that expires after `history_s`, beyond
  `history_max` events (the watch cache's size) or on `compact()` (a watch
  from an older resourceVersion gets ERROR 410 Expired);
  objects leaving the selector, and deleted ones, arrive as DELETED carrying
  the PREVIOUS object with the event's resourceVersion (as the watch cache);
  several events in one chunk and one event split across two chunks;
  objects with uid, creationTimestamp, managedFields, status conditions;
- deletion with finalizers (deletionTimestamp set, removed when the
  finalizers go) and without (gone at once);
- POST pods/binding: 201 Status; 409 for each reason of the registry (UID
  precondition, being deleted, already assigned, scheduling gates), with the
  API server's messages; 404 for no such pod;
- PATCH pods/status (strategic merge: conditions merge on `type`);
- POST events.k8s.io/v1 and core/v1 events (events.k8s.io ones validated as
  the API server does: name, eventTime, reportingController/Instance,
  action, reason, regarding);
- coordination.k8s.io/v1 leases: get, create (409 AlreadyExists), update
  with resourceVersion (409 Conflict when stale);
- authentication: bearer tokens (401 otherwise); token rotation (`rotate`);
- authorisation: RBAC from the ClusterRole bound to the service account in
  manifests/scheduler/sdi-scheduler-deploy.yaml (403 with the API server's
  message), resourceNames included;
- TLS with its own CA (`tls=True`), and a fake service-account mount
  (`service_account_dir`: token, ca.crt, namespace) for load_incluster_config;
- error injection: `fail(method, path_regex, code, times, retry_after)` (401,
  403, 429 with Retry-After, 500, 503, ...) and `watch_error(code)` (an
  ERROR event, e.g. 504 "Timeout" or 500, then the watch ends);
- per-request latency injection (`latency[(method, kind)] = seconds`);
- a simulated kubelet: a pod bound to a node whose allocatable cannot hold
  the requests of its non-terminal pods, whose labels do not match its
  nodeSelector / required node affinity, or whose hostPorts are taken, is
  failed (phase Failed, reason OutOfcpu / OutOfmemory / NodeAffinity /
  NodePorts) as the kubelet's admission does; otherwise it becomes Running.

It does not prove: behaviour under real etcd timing, real admission
plugins, API priority and fairness, HTTP/2, watch-list (sendInitialEvents),
or anything about other resources than those above.

The test drives it directly (add_node, create_pod, delete_pod, ...)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "manifests/scheduler/sdi-scheduler-deploy.yaml"
SERVICE_ACCOUNT = "system:serviceaccount:kube-system:sdi-scheduler"

# The fields the API server accepts in a pod fieldSelector (pkg/registry/core/pod/strategy.go).
POD_FIELDS = {
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        **({"details": details} if details else {}),
        "code": code,
    }


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
            raise ValueError(f"invalid selector: {term!r}")
        if m.group(1) not in POD_FIELDS:
            raise ValueError(f'field label not supported: "{m.group(1)}"')
        out.append((m.group(1), "=" if m.group(2) == "==" else m.group(2), m.group(3)))
    return out


_UNITS: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "m": Decimal("0.001"),
    "k": 1000,
    "M": 10**6,
    "G": 10**9,
}


def kubelet_quantity(text: object) -> Decimal:
    """The kubelet's side of a quantity (independent of the scheduler's parser)."""
    m = re.match(r"^([0-9.]+)([A-Za-z]*)$", str(text))
    if m is None:
        raise ValueError(f"bad quantity {text!r}")
    return Decimal(m.group(1)) * Decimal(_UNITS.get(m.group(2), 1))


def _requests(pod: Obj) -> dict[str, Decimal]:
    total: dict[str, Decimal] = {}
    for c in pod["spec"].get("containers") or []:
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[k] = total.get(k, Decimal(0)) + kubelet_quantity(v)
    return total


def _host_ports(pod: Obj) -> set[tuple[str, int]]:
    return {
        (str(p.get("protocol") or "TCP"), int(p["hostPort"]))
        for c in pod["spec"].get("containers") or []
        for p in c.get("ports") or []
        if p.get("hostPort")
    }


def _affinity_ok(pod: Obj, node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    for k, v in (pod["spec"].get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    req = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not req:
        return True
    for term in req.get("nodeSelectorTerms") or []:
        ok = bool(term.get("matchExpressions") or term.get("matchFields"))
        for e in term.get("matchExpressions") or []:
            have, op, values = labels.get(e["key"]), e["operator"], e.get("values") or []
            ok = (
                ok
                and {
                    "In": have in values,
                    "NotIn": have not in values,
                    "Exists": have is not None,
                    "DoesNotExist": have is None,
                    "Gt": have is not None and have.isdigit() and int(have) > int(values[0]),
                    "Lt": have is not None and have.isdigit() and int(have) < int(values[0]),
                }[op]
            )
        for e in term.get("matchFields") or []:
            ok = ok and ((node["metadata"]["name"] in (e.get("values") or [])) == (e["operator"] == "In"))
        if ok:
            return True
    return False


def load_rbac_rules(path: Path = DEPLOY, subject: str = SERVICE_ACCOUNT) -> list[Obj]:
    """The rules of every ClusterRole bound to `subject` by a ClusterRoleBinding in the file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    rules: list[Obj] = []
    for d in docs:
        if d["kind"] != "ClusterRoleBinding":
            continue
        for s in d.get("subjects") or []:
            if f"system:serviceaccount:{s.get('namespace')}:{s.get('name')}" == subject:
                rules += roles[d["roleRef"]["name"]].get("rules") or []
    return rules


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (openssl): (ca.crt, server.crt, server.key)."""
    ca_key, ca, key, csr, crt = (directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=standin-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt),
        "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, crt, key


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client dropping a kept-alive connection is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


class Injected:
    def __init__(self, method: str, path: str, code: int, times: int, retry_after: int | None, message: str) -> None:
        self.method, self.path, self.code, self.times = method, re.compile(path), code, times
        self.retry_after, self.message = retry_after, message


class KubeStandIn:
    def __init__(
        self,
        *,
        tls: bool = False,
        tmp: Path | None = None,
        rbac: bool = True,
        history_s: float = 300.0,
        history_max: int = 100_000,
        bookmark_interval_s: float = 60.0,
        framing: str = "mixed",
    ) -> None:
        self.pods: dict[tuple[str, str], Obj] = {}
        self.nodes: dict[str, Obj] = {}
        self.leases: dict[tuple[str, str], Obj] = {}
        self.events: list[Obj] = []  # events.k8s.io/v1 and core/v1, as posted
        self.bindings: list[tuple[str, str, str]] = []  # (namespace, pod, node)
        self.binding_conflicts = 0
        self.conflicts: list[str] = []  # the 409 messages answered to bindings
        self.status_patches: list[tuple[str, str, Obj]] = []
        self.requests: list[tuple[str, str, str]] = []  # (token, method, path) of every authenticated request
        self.kubelet_rejections: list[tuple[str, str]] = []  # (pod, reason)
        self.forbidden: list[str] = []  # the 403 messages answered
        self.unauthorized = 0  # requests answered 401
        self.binds_now = 0  # binding requests being served
        self.max_concurrent_binds = 0
        self.list_calls = 0
        self.watch_calls = 0
        self.bookmarks_sent = 0
        self.rv = 100
        self.history: list[tuple[int, float, Obj | None, Obj | None]] = []  # (rv, monotonic, old, new)
        self.oldest_rv = 100  # a watch from an older resourceVersion gets 410 Gone
        self.history_s = history_s
        self.history_max = history_max
        self.bookmark_interval_s = bookmark_interval_s
        self.send_bookmarks = True  # False: as an API server whose bookmarks did not reach the client
        self.framing = framing
        self.tokens: set[str] = {"standin-token"}
        self.rules: list[Obj] | None = load_rbac_rules() if rbac else None
        self.injected: list[Injected] = []
        self.watch_errors: list[int] = []
        self.latency: dict[tuple[str, str], float] = {}  # (method, kind) -> seconds; kind: binding, watch, list, ...
        self.cond = threading.Condition()
        self.closing = False
        self.tmp = tmp
        self.ca_file: Path | None = None
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # As Go's net/http does: without it, headers and body in two writes meet
                # delayed ACKs on kept-alive connections (~40 ms per request).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def do_PUT(self) -> None:
                standin._handle(self, "PUT")

            def do_PATCH(self) -> None:
                standin._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                standin._handle(self, "DELETE")

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            assert tmp is not None, "TLS needs a directory for the certificates"
            ca, crt, key = make_tls(tmp)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(crt, key)
            self.server.context = context
            self.ca_file = ca
            scheme = "https"
        self.port = self.server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
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

    def kubeconfig(self, token: str = "standin-token") -> str:
        ca = f"    certificate-authority: {self.ca_file}\n" if self.ca_file else ""
        return (
            "apiVersion: v1\nkind: Config\ncurrent-context: standin\n"
            f"clusters:\n- name: standin\n  cluster:\n    server: {self.url}\n{ca}"
            "contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n"
            f"users:\n- name: standin\n  user:\n    token: {token}\n"
        )

    def service_account_dir(self, directory: Path, token: str = "standin-token") -> dict[str, str]:
        """A fake service-account mount; returns the environment load_incluster_config needs."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(token)
        (directory / "namespace").write_text("kube-system")
        if self.ca_file is not None:
            (directory / "ca.crt").write_bytes(self.ca_file.read_bytes())
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}

    def rotate(self, directory: Path, new_token: str, *, revoke_old: bool = True) -> None:
        """The kubelet writes a new token into the mount (atomically, as it does); the old one stops working."""
        old = (directory / "token").read_text()
        with self.cond:
            self.tokens.add(new_token)
        tmp = directory / ".token.new"
        tmp.write_text(new_token)
        os.replace(tmp, directory / "token")
        if revoke_old:
            with self.cond:
                self.tokens.discard(old)

    def fail(self, method: str, path: str, code: int, *, times: int = 1, retry_after: int | None = None) -> None:
        """The next `times` requests matching method and path regex get `code`."""
        reason = {401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests", 500: "InternalError"}
        message = reason.get(code, "ServiceUnavailable")
        with self.cond:
            self.injected.append(Injected(method, path, code, times, retry_after, message))

    def watch_error(self, code: int = 504) -> None:
        """The open watches (and the next) send an ERROR event with `code` and end."""
        with self.cond:
            self.watch_errors.append(code)
            self.cond.notify_all()

    # -- the test's side ---------------------------------------------------------
    def _change(self, old: Obj | None, new: Obj | None) -> None:
        # caller holds self.cond
        self.rv += 1
        if new is not None:
            new["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, time.monotonic(), copy.deepcopy(old), copy.deepcopy(new)))
        self._expire()
        self.cond.notify_all()

    def _expire(self) -> None:
        # caller holds self.cond: the watch cache keeps history for a while only
        horizon = time.monotonic() - self.history_s
        while self.history and (self.history[0][1] < horizon or len(self.history) > self.history_max):
            rv = self.history.pop(0)[0]
            self.oldest_rv = rv + 1

    def add_node(
        self,
        name: str,
        *,
        arch: str = "arm64",
        ready: bool = True,
        unschedulable: bool = False,
        taints: list[Obj] | None = None,
        labels: dict[str, str] | None = None,
        allocatable: dict[str, str] | None = None,
    ) -> None:
        alloc = allocatable or {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
        with self.cond:
            self.rv += 1
            self.nodes[name] = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self.rv),
                    "creationTimestamp": _now(),
                    "labels": {
                        "kubernetes.io/arch": arch,
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        **(labels or {}),
                    },
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                    "managedFields": [
                        {
                            "manager": "kubelet",
                            "operation": "Update",
                            "apiVersion": "v1",
                            "time": _now(),
                            "fieldsType": "FieldsV1",
                            "fieldsV1": {"f:status": {"f:allocatable": {}}},
                        }
                    ],
                },
                "spec": {"unschedulable": unschedulable, **({"taints": taints} if taints else {})},
                "status": {
                    "capacity": dict(alloc),
                    "allocatable": dict(alloc),
                    "conditions": [
                        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                        {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"},
                    ],
                    "nodeInfo": {"architecture": arch, "kubeletVersion": "v1.31.0", "operatingSystem": "linux"},
                },
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
        labels: dict[str, str] | None = None,
        requests: dict[str, str] | None = None,
        host_ports: list[int] | None = None,
        affinity: Obj | None = None,
        gates: list[str] | None = None,
        finalizers: list[str] | None = None,
        node_name: str = "",
    ) -> str:
        """Creates the pod; returns its uid."""
        uid = str(uuid.uuid4())
        container: Obj = {
            "name": "app",
            "image": "registry.k8s.io/pause:3.9",
            "resources": {"requests": requests} if requests else {},
            "terminationMessagePath": "/dev/termination-log",
            "imagePullPolicy": "IfNotPresent",
        }
        if host_ports:
            container["ports"] = [{"containerPort": p, "hostPort": p, "protocol": "TCP"} for p in host_ports]
        with self.cond:
            pod: Obj = {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": uid,
                    "creationTimestamp": _now(),
                    "labels": {"app": name, **(labels or {})},
                    **({"annotations": annotations} if annotations else {}),
                    **({"finalizers": finalizers} if finalizers else {}),
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": f"{name}-rs",
                            "uid": str(uuid.uuid4()),
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                    "managedFields": [
                        {
                            "manager": "kube-controller-manager",
                            "operation": "Update",
                            "apiVersion": "v1",
                            "time": _now(),
                            "fieldsType": "FieldsV1",
                            "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:containers": {}}},
                        }
                    ],
                },
                "spec": {
                    "schedulerName": scheduler_name,
                    "containers": [container],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "default",
                    "enableServiceLinks": True,
                    "priority": 0,
                    **({"nodeName": node_name} if node_name else {}),
                    **({"nodeSelector": node_selector} if node_selector else {}),
                    **({"tolerations": tolerations} if tolerations else {}),
                    **({"affinity": affinity} if affinity else {}),
                    **({"schedulingGates": [{"name": g} for g in gates]} if gates else {}),
                },
                "status": {"phase": "Pending", "qosClass": "Burstable" if requests else "BestEffort"},
            }
            if gates:
                pod["status"]["conditions"] = [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "SchedulingGated",
                        "message": "Scheduling is blocked due to non-empty scheduling gates",
                    }
                ]
            self.pods[(namespace, name)] = pod
            self._change(None, pod)
            if node_name:
                self._kubelet(pod)
        return uid

    def ungate(self, name: str, namespace: str = "default") -> None:
        with self.cond:
            pod = self.pods[(namespace, name)]
            old = copy.deepcopy(pod)
            pod["spec"].pop("schedulingGates", None)
            self._change(old, pod)

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        """As DELETE: with finalizers the pod only gets a deletionTimestamp; without, it is gone."""
        with self.cond:
            pod = self.pods[(namespace, name)]
            if pod["metadata"].get("finalizers"):
                old = copy.deepcopy(pod)
                pod["metadata"]["deletionTimestamp"] = _now()
                pod["metadata"]["deletionGracePeriodSeconds"] = 0
                self._change(old, pod)
                return
            del self.pods[(namespace, name)]
            self._change(pod, None)

    def remove_finalizers(self, name: str, namespace: str = "default") -> None:
        with self.cond:
            pod = self.pods[(namespace, name)]
            old = copy.deepcopy(pod)
            pod["metadata"].pop("finalizers", None)
            if pod["metadata"].get("deletionTimestamp"):
                del self.pods[(namespace, name)]
                self._change(old, None)
            else:
                self._change(old, pod)

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
            pod = self.pods.get((namespace, name))
            return str(pod["spec"].get("nodeName") or "") if pod else ""

    def pod(self, name: str, namespace: str = "default") -> Obj | None:
        with self.cond:
            pod = self.pods.get((namespace, name))
            return copy.deepcopy(pod) if pod else None

    # -- the simulated kubelet ---------------------------------------------------
    def _kubelet(self, pod: Obj) -> None:
        """Admission on the node (caller holds self.cond): fail the pod as the kubelet would, or run it."""
        node = self.nodes.get(pod["spec"]["nodeName"])
        old = copy.deepcopy(pod)
        reason, message = "", ""
        if node is None:
            reason, message = "NodeLost", "node does not exist"
        elif not _affinity_ok(pod, node):
            reason, message = "NodeAffinity", "Pod was rejected: Predicate NodeAffinity failed"
        else:
            others = [
                p
                for p in self.pods.values()
                if p is not pod
                and p["spec"].get("nodeName") == node["metadata"]["name"]
                and p["status"].get("phase") not in ("Succeeded", "Failed")
            ]
            alloc = node["status"].get("allocatable") or {}
            want = _requests(pod)
            used: dict[str, Decimal] = {}
            for p in others:
                for k, v in _requests(p).items():
                    used[k] = used.get(k, Decimal(0)) + v
            for resource, amount in sorted(want.items()):
                if resource in alloc and used.get(resource, Decimal(0)) + amount > kubelet_quantity(alloc[resource]):
                    reason = f"Out{resource}"
                    message = (
                        f"Pod was rejected: Node didn't have enough resource: {resource}, requested: {amount}, "
                        f"used: {used.get(resource, 0)}, capacity: {kubelet_quantity(alloc[resource])}"
                    )
                    break
            if not reason and "pods" in alloc and len(others) + 1 > int(alloc["pods"]):
                reason, message = "OutOfpods", "Pod was rejected: Node didn't have enough resource: pods"
            taken = set().union(*(_host_ports(p) for p in others)) if others else set()
            if not reason and _host_ports(pod) & taken:
                reason, message = "NodePorts", "Pod was rejected: Predicate NodePorts failed"
        if reason:
            pod["status"].update(phase="Failed", reason=reason, message=message)
            self.kubelet_rejections.append((pod["metadata"]["name"], reason))
        else:
            pod["status"]["phase"] = "Running"
        self._change(old, pod)

    # -- HTTP --------------------------------------------------------------------
    def _reply(self, h: BaseHTTPRequestHandler, code: int, body: Obj, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _attributes(self, method: str, path: str, query: dict[str, str]) -> tuple[str, str, str, str, str] | None:
        """(group, resource[/subresource], namespace, name, verb) of a request, or None if not a resource path."""
        m = re.match(r"^/(?:api/v1|apis/([^/]+)/v1)(?:/namespaces/([^/]+))?/([^/]+)(?:/([^/]+))?(?:/([^/]+))?$", path)
        if m is None:
            return None
        group, ns, resource, name, sub = m.group(1) or "", m.group(2) or "", m.group(3), m.group(4) or "", m.group(5)
        if sub:
            resource = f"{resource}/{sub}"
        if method == "GET":
            verb = "watch" if query.get("watch") in ("true", "1") else ("get" if name else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        return group, resource, ns, name, verb

    def _allowed(self, group: str, resource: str, name: str, verb: str) -> bool:
        if self.rules is None:
            return True
        for rule in self.rules:
            if not ({"*", group} & set(rule.get("apiGroups") or [])):
                continue
            if not ({"*", resource} & set(rule.get("resources") or [])):
                continue
            if not ({"*", verb} & set(rule.get("verbs") or [])):
                continue
            names = rule.get("resourceNames") or []
            if names and name not in names:
                continue
            return True
        return False

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        auth = h.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""  # the API server: case-insensitive scheme
        with self.cond:
            known = token in self.tokens
        if not known:
            with self.cond:
                self.unauthorized += 1
            self._reply(h, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        attrs = self._attributes(method, url.path, query)
        if attrs is None:
            self._reply(h, 404, _status(404, "NotFound", "the server could not find the requested resource"))
            return
        group, resource, ns, name, verb = attrs
        with self.cond:
            self.requests.append((token, method, url.path))
        if not self._allowed(group, resource, name, verb):
            where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
            what = f"{resource.split('/')[0]}{'.' + group if group else ''}"
            message = (
                f'{what} "{name}" is forbidden: ' if name else f"{what} is forbidden: "
            ) + f'User "{SERVICE_ACCOUNT}" cannot {verb} resource "{resource}" in API group "{group}" {where}'
            with self.cond:
                self.forbidden.append(message)
            self._reply(h, 403, _status(403, "Forbidden", message, {"name": name, "kind": resource}))
            return
        with self.cond:
            for inj in self.injected:
                if inj.times > 0 and inj.method == method and inj.path.search(url.path):
                    inj.times -= 1
                    headers = {"Retry-After": str(inj.retry_after)} if inj.retry_after is not None else None
                    self._reply(h, inj.code, _status(inj.code, inj.message, f"injected {inj.code}"), headers)
                    return
        kind = resource.replace("pods/binding", "binding").replace("pods/status", "status")
        delay = self.latency.get((method, "watch" if verb == "watch" else kind), 0.0)
        if delay and kind != "binding":
            time.sleep(delay)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._reply(h, 400, _status(400, "BadRequest", "invalid JSON"))
            return
        if resource == "pods" and method == "GET":
            self._pods(h, ns, query, verb)
        elif resource == "nodes" and method == "GET":
            with self.cond:
                items = [copy.deepcopy(n) for _, n in sorted(self.nodes.items())]
                rv = str(self.rv)
            self._reply(h, 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": rv},
                                 "items": items})  # fmt: skip
        elif resource == "pods/binding" and method == "POST":
            with self.cond:
                self.binds_now += 1
                self.max_concurrent_binds = max(self.max_concurrent_binds, self.binds_now)
            try:
                if delay:
                    time.sleep(delay)  # the latency counts as being served (etcd write)
                self._bind(h, ns, name, body)
            finally:
                with self.cond:
                    self.binds_now -= 1
        elif resource == "pods/status" and method == "PATCH":
            self._patch_status(h, ns, name, body, h.headers.get("Content-Type") or "")
        elif resource == "events" and method == "POST":
            self._event(h, group, ns, body)
        elif resource == "leases" and group == "coordination.k8s.io":
            self._lease(h, method, ns, name, body)
        else:
            self._reply(h, 405, _status(405, "MethodNotAllowed", f"the stand-in does not serve {method} {url.path}"))

    def _pods(self, h: BaseHTTPRequestHandler, ns: str, query: dict[str, str], verb: str) -> None:
        try:
            selector = parse_field_selector(query.get("fieldSelector", ""))
        except ValueError as exc:
            self._reply(h, 400, _status(400, "BadRequest", str(exc)))
            return
        if ns:
            selector.append(("metadata.namespace", "=", ns))
        if verb == "watch":
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
            errors_seen = len(self.watch_errors)
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        asked = query.get("allowWatchBookmarks") in ("true", "1")
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(data: bytes) -> None:
            if data:
                h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def send(events: list[Obj]) -> None:
            data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
            if self.framing == "line":
                for e in events:
                    chunk(json.dumps(e).encode() + b"\n")
            else:  # "mixed": the events together, cut at an arbitrary byte into two chunks
                cut = len(data) // 2 + 1
                chunk(data[:cut])
                h.wfile.flush()
                chunk(data[cut:])
            h.wfile.flush()

        def bookmark(rv: int) -> Obj:
            self.bookmarks_sent += 1
            return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                   "metadata": {"resourceVersion": str(rv)}}}  # fmt: skip

        try:
            with self.cond:
                self._expire()
                too_old = bool(since) and since < self.oldest_rv - 1
                current = self.oldest_rv - 1
            if too_old:
                message = f"too old resource version: {since} ({current})"
                send([{"type": "ERROR", "object": _status(410, "Expired", message)}])
                return
            position = since
            next_bookmark = time.monotonic() + self.bookmark_interval_s
            bookmark_end_sent = False
            while True:
                with self.cond:
                    bookmarks = asked and self.send_bookmarks
                    while (
                        not self.closing
                        and len(self.watch_errors) == errors_seen
                        and not any(rv > position for rv, _, _, _ in self.history)
                    ):
                        now = time.monotonic()
                        remaining = deadline - now
                        if remaining <= 0:
                            return
                        bookmarks = asked and self.send_bookmarks
                        if bookmarks and now >= next_bookmark:
                            break
                        if bookmarks and not bookmark_end_sent and remaining <= min(1.0, timeout / 2):
                            break
                        self.cond.wait(min(remaining, 0.1))
                    if self.closing:
                        return
                    if len(self.watch_errors) != errors_seen:
                        code = self.watch_errors[-1]
                        reason = {504: "Timeout", 500: "InternalError"}.get(code, "ServiceUnavailable")
                        message = "Timeout: Too large resource version" if code == 504 else "etcdserver: leader changed"
                        out_err = [{"type": "ERROR", "object": _status(code, reason, message)}]
                        break_after = True
                    else:
                        out_err, break_after = [], False
                    due = [(rv, old, new) for rv, _, old, new in self.history if rv > position]
                    current_rv = self.rv
                    bookmarks = asked and self.send_bookmarks
                if break_after:
                    send(out_err)
                    return
                out: list[Obj] = []
                for rv, old, new in due:
                    position = rv
                    was, now_in = _matches(old, selector), _matches(new, selector)
                    if now_in:
                        out.append({"type": "MODIFIED" if was else "ADDED", "object": new})
                    elif was:
                        gone = copy.deepcopy(old)
                        assert gone is not None  # `was` matched, so old is an object
                        gone["metadata"]["resourceVersion"] = str(rv)  # the previous object, the event's version
                        out.append({"type": "DELETED", "object": gone})
                now = time.monotonic()
                if bookmarks and (now >= next_bookmark or (not bookmark_end_sent and deadline - now <= 1.0)):
                    if deadline - now <= min(1.0, timeout / 2):
                        bookmark_end_sent = True
                    next_bookmark = now + self.bookmark_interval_s
                    position = max(position, current_rv)
                    out.append(bookmark(position))
                if out:
                    send(out)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return
        finally:
            try:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except OSError:
                pass
            h.close_connection = True

    def _bind(self, h: BaseHTTPRequestHandler, namespace: str, name: str, body: Obj) -> None:
        node = str((body.get("target") or {}).get("name") or "")
        uid = str((body.get("metadata") or {}).get("uid") or "")
        with self.cond:
            pod = self.pods.get((namespace, name))
            prefix = f'Operation cannot be fulfilled on pods/binding "{name}": '
            if pod is None:
                code, reply = 404, _status(404, "NotFound", f'pods "{name}" not found')
            elif uid and uid != pod["metadata"]["uid"]:
                message = (
                    f'Operation cannot be fulfilled on pods "{name}": Precondition failed: UID in precondition: '
                    f"{uid}, UID in object meta: {pod['metadata']['uid']}"
                )
                code, reply = 409, _status(409, "Conflict", message)
            elif pod["metadata"].get("deletionTimestamp"):
                code, reply = (
                    409,
                    _status(409, "Conflict", prefix + f"pod {name} is being deleted, cannot be assigned to a host"),
                )
            elif pod["spec"].get("nodeName"):
                bound_to = pod["spec"]["nodeName"]
                code, reply = (
                    409,
                    _status(409, "Conflict", prefix + f'pod {name} is already assigned to node "{bound_to}"'),
                )
            elif pod["spec"].get("schedulingGates"):
                code, reply = 409, _status(409, "Conflict", prefix + f"pod {name} has non-empty .spec.schedulingGates")
            elif node not in self.nodes:
                code, reply = 400, _status(400, "BadRequest", f'node "{node}" not found')
            else:
                old = copy.deepcopy(pod)
                pod["spec"]["nodeName"] = node
                pod["status"]["conditions"] = [
                    c for c in pod["status"].get("conditions") or [] if c.get("type") != "PodScheduled"
                ] + [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}]
                self.bindings.append((namespace, name, node))
                self._change(old, pod)
                self._kubelet(pod)
                code, reply = 201, _status(201, "", "")
            if code == 409:
                self.binding_conflicts += 1
                self.conflicts.append(str(reply["message"]))
        self._reply(h, code, reply)

    def _patch_status(self, h: BaseHTTPRequestHandler, namespace: str, name: str, body: Obj, ctype: str) -> None:
        if "strategic-merge-patch" not in ctype and "merge-patch" not in ctype:
            self._reply(h, 415, _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {ctype}"))  # fmt: skip # noqa: E501
            return
        with self.cond:
            pod = self.pods.get((namespace, name))
            if pod is None:
                self._reply(h, 404, _status(404, "NotFound", f'pods "{name}" not found'))
                return
            old = copy.deepcopy(pod)
            new_conditions = (body.get("status") or {}).get("conditions") or []
            if "strategic" in ctype:
                merged = {c.get("type"): c for c in pod["status"].get("conditions") or []}
                for c in new_conditions:
                    merged[c.get("type")] = {k: v for k, v in c.items() if v is not None}
                pod["status"]["conditions"] = list(merged.values())
            else:
                pod["status"]["conditions"] = new_conditions
            self.status_patches.append((namespace, name, copy.deepcopy(body)))
            self._change(old, pod)
            reply = copy.deepcopy(pod)
        self._reply(h, 200, reply)

    def _event(self, h: BaseHTTPRequestHandler, group: str, namespace: str, body: Obj) -> None:
        if group == "events.k8s.io":
            missing = [
                f
                for f in ("eventTime", "reportingController", "reportingInstance", "action", "reason", "regarding")
                if not body.get(f)
            ]
            if not (body.get("metadata") or {}).get("name"):
                missing.insert(0, "metadata.name")
            if missing or len(str(body.get("note") or "")) > 1024:
                message = (
                    f'Event.events.k8s.io "{(body.get("metadata") or {}).get("name", "")}" is invalid: '
                    + ", ".join(f"{f}: Required value" for f in missing)
                )
                self._reply(h, 422, _status(422, "Invalid", message))
                return
        with self.cond:
            self.events.append(body)
            self.cond.notify_all()
        self._reply(h, 201, body)

    def _lease(self, h: BaseHTTPRequestHandler, method: str, namespace: str, name: str, body: Obj) -> None:
        with self.cond:
            if method == "GET":
                lease = self.leases.get((namespace, name))
                if lease is None:
                    code, reply = 404, _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                else:
                    code, reply = 200, copy.deepcopy(lease)
            elif method == "POST":
                name = str((body.get("metadata") or {}).get("name") or "")
                if (namespace, name) in self.leases:
                    message = f'leases.coordination.k8s.io "{name}" already exists'
                    code, reply = 409, _status(409, "AlreadyExists", message)
                else:
                    self.rv += 1
                    lease = copy.deepcopy(body)
                    lease["metadata"].update(namespace=namespace, resourceVersion=str(self.rv), uid=str(uuid.uuid4()))
                    self.leases[(namespace, name)] = lease
                    code, reply = 201, copy.deepcopy(lease)
            elif method == "PUT":
                lease = self.leases.get((namespace, name))
                rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
                if lease is None:
                    code, reply = 404, _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                elif rv != lease["metadata"]["resourceVersion"]:
                    message = (
                        f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object has been '
                        "modified; please apply your changes to the latest version and try again"
                    )
                    code, reply = 409, _status(409, "Conflict", message)
                else:
                    self.rv += 1
                    lease = copy.deepcopy(body)
                    lease["metadata"].update(namespace=namespace, resourceVersion=str(self.rv))
                    self.leases[(namespace, name)] = lease
                    code, reply = 200, copy.deepcopy(lease)
            else:
                code, reply = 405, _status(405, "MethodNotAllowed", method)
        self._reply(h, code, reply)


@contextmanager
def running_standin(**kwargs: Any) -> Iterator[KubeStandIn]:
    standin = KubeStandIn(**kwargs)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
