"""The Kubernetes API calls of `ank-scheduler --kubernetes`, behind one small
interface: `KubeApi` (what the shell calls) and `ClientKubeApi`, its
implementation on the official `kubernetes` client.

The shell (services.scheduler.kube_shell) sees plain JSON dicts and one error
type, `KubeApiError` (an answer with an HTTP status; anything else raised is
a client-side failure: connection, timeout). So a test can drive the shell
with an in-memory stand-in (tests/test_memory_shell_kube_scheduler.py), and
the wire-level tests (tests/test_scheduler_kube_apiserver.py) prove this
implementation against an API server.

Every request has a client-side timeout; replies are read raw
(`_preload_content=False`: pods/binding answers 201 with a Status the client
cannot read as a Binding, and raw JSON is faster than the typed models) and
their connections given back to the pool.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, Protocol

from services.scheduler.kube_core import PodRef, binding_body

# kube-scheduler's informer selector: the pods bound to nodes and not finished,
# what NodeResourcesFit, NodePorts and anti-affinity count against a node.
ASSIGNED_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"


class KubeApiError(Exception):
    """The API server answered with an error status: its HTTP status, the
    Status message, and Retry-After (seconds) when it sent one."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after_s = status, message, retry_after_s


class WatchStream(Protocol):
    def lines(self) -> Iterator[str]:
        """The watch events, one JSON line each, until the server ends the watch."""
        ...

    def close(self) -> None:
        """Ends the stream (from any thread: it unblocks a read under way)."""
        ...


class KubeApi(Protocol):
    """What the Kubernetes shell asks of the API server."""

    def list_pending_pods(self, scheduler_name: str) -> tuple[list[dict[str, Any]], str]:
        """The scheduler's unbound pods and the list's resourceVersion."""
        ...

    def watch_pending_pods(self, scheduler_name: str, resource_version: str, timeout_s: float) -> WatchStream: ...

    def list_nodes(self) -> list[dict[str, Any]]: ...

    def list_assigned_pods(self) -> list[dict[str, Any]]:
        """Every pod bound to a node and not finished."""
        ...

    def bind(self, pod: PodRef, node: str) -> int:
        """POST pods/binding: the HTTP status of a success answer."""
        ...

    def patch_pod_status(self, pod: PodRef, patch: dict[str, Any]) -> None:
        """A strategic-merge patch of pods/status."""
        ...

    def create_event(self, body: dict[str, Any]) -> None:
        """An events.k8s.io/v1 Event in the namespace of its metadata."""
        ...

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None when there is none (404)."""
        ...

    def write_lease(self, namespace: str, name: str, body: dict[str, Any], *, create: bool) -> bool:
        """Create or replace the Lease; False when someone else wrote it first (409)."""
        ...


def _pending_selector(scheduler_name: str) -> str:
    return f"spec.schedulerName={scheduler_name},spec.nodeName="


def api_message(exc: Any) -> str:
    """The Status message of an ApiException (its body), else its reason."""
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason or "")
    except (ValueError, TypeError, AttributeError):
        return str(exc.reason or "")


def _retry_after(exc: Any) -> float | None:
    try:
        return float(str((exc.headers or {}).get("Retry-After")))
    except (TypeError, ValueError):
        return None


def _release(response: Any) -> None:
    """Give a raw (_preload_content=False) response's connection back to the
    pool; left alone, every request would open a new connection."""
    try:
        response.drain_conn()
        response.release_conn()
    except Exception:
        pass


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    """An ApiException becomes a KubeApiError; other exceptions pass."""
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        raise KubeApiError(int(exc.status or 0), api_message(exc), _retry_after(exc)) from exc


class _ClientWatch:
    def __init__(self, response: Any) -> None:
        self.response = response

    def lines(self) -> Iterator[str]:
        from kubernetes.watch.watch import iter_resp_lines

        with _api_errors():
            yield from iter_resp_lines(self.response)

    def close(self) -> None:
        response = self.response
        with contextlib.suppress(Exception):
            response.shutdown() if hasattr(response, "shutdown") else response.close()
        with contextlib.suppress(Exception):
            response.close()
            response.release_conn()


class ClientKubeApi:
    """KubeApi on the `kubernetes` client's ApiClient."""

    def __init__(self, api_client: Any, *, request_timeout_s: float = 10.0) -> None:
        from kubernetes import client

        # Any: the replies are raw urllib3 responses (_preload_content=False), not the typed models.
        self.core: Any = client.CoreV1Api(api_client)
        self.events: Any = client.EventsV1Api(api_client)
        self.coordination: Any = client.CoordinationV1Api(api_client)
        self.timeout = request_timeout_s

    def _json(self, response: Any) -> Any:
        try:
            return json.loads(response.data)
        finally:
            _release(response)

    def list_pending_pods(self, scheduler_name: str) -> tuple[list[dict[str, Any]], str]:
        with _api_errors():
            response = self.core.list_pod_for_all_namespaces(
                field_selector=_pending_selector(scheduler_name), _preload_content=False, _request_timeout=self.timeout
            )
        body = self._json(response)
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        return list(body.get("items") or []), version

    def watch_pending_pods(self, scheduler_name: str, resource_version: str, timeout_s: float) -> WatchStream:
        with _api_errors():
            response = self.core.list_pod_for_all_namespaces(
                field_selector=_pending_selector(scheduler_name),
                watch=True,
                resource_version=resource_version,
                timeout_seconds=max(1, int(timeout_s)),
                allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=(self.timeout, timeout_s + self.timeout),
            )
        return _ClientWatch(response)

    def list_nodes(self) -> list[dict[str, Any]]:
        with _api_errors():
            response = self.core.list_node(_preload_content=False, _request_timeout=self.timeout)
        return list(self._json(response).get("items") or [])

    def list_assigned_pods(self) -> list[dict[str, Any]]:
        with _api_errors():
            response = self.core.list_pod_for_all_namespaces(
                field_selector=ASSIGNED_PODS, _preload_content=False, _request_timeout=self.timeout
            )
        return list(self._json(response).get("items") or [])

    def bind(self, pod: PodRef, node: str) -> int:
        with _api_errors():
            response = self.core.create_namespaced_pod_binding(
                pod.name,
                pod.namespace,
                binding_body(pod, node),
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        status = int(response.status)
        _release(response)
        return status

    def patch_pod_status(self, pod: PodRef, patch: dict[str, Any]) -> None:
        with _api_errors():
            response = self.core.patch_namespaced_pod_status(
                pod.name,
                pod.namespace,
                patch,
                _content_type="application/strategic-merge-patch+json",
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        _release(response)

    def create_event(self, body: dict[str, Any]) -> None:
        with _api_errors():
            response = self.events.create_namespaced_event(
                body["metadata"]["namespace"], body, _preload_content=False, _request_timeout=self.timeout
            )
        _release(response)

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with _api_errors():
                response = self.coordination.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self.timeout
                )
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        lease: dict[str, Any] = self._json(response)
        return lease

    def write_lease(self, namespace: str, name: str, body: dict[str, Any], *, create: bool) -> bool:
        try:
            with _api_errors():
                if create:
                    response = self.coordination.create_namespaced_lease(
                        namespace, body, _preload_content=False, _request_timeout=self.timeout
                    )
                else:
                    response = self.coordination.replace_namespaced_lease(
                        name, namespace, body, _preload_content=False, _request_timeout=self.timeout
                    )
        except KubeApiError as exc:
            if exc.status == 409:
                return False  # someone else wrote it since we read it
            raise
        _release(response)
        return True
