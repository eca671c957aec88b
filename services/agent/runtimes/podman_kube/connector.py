"""The `podman-kube` runtime connector: `podman kube play` / `podman kube down`
of the workload's Kubernetes YAML; its containers are watched through the
same `podman events` stream as podman workloads (services/agent/runtimes/
podman).

Play, down, stop, the bookkeeping volumes and the listings go through
podman's API service where one runs (podman/api.py: chosen at start, like
the podman connector's, reported in the agent status); a runtimeConfig the
API cannot take (generalOptions, downOptions, a playOption with no query
parameter: core.play_params) is played and torn down through the CLI, as is
everything where no service runs. Logs and stats stay on the CLI, as for
podman workloads. See docs/podman.md."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from schemas.messages import WorkloadUsage
from schemas.runtime_configs import PodmanKubeConfig
from services.agent.control_interface import kube as ci_kube
from services.agent.runtimes.base import Notify, RunHandle, Runtime, StartError, StartSpec
from services.agent.runtimes.podman.api import ApiFailure, PodmanApi
from services.agent.runtimes.podman.connector import (
    STOP_TIMEOUT_MARGIN_S,
    PodmanConnector,
    ps_containers,
)
from services.agent.runtimes.podman.core import (
    LABEL_INSTANCE,
    LABEL_RUN,
    LABEL_WORKLOAD,
    ContainerPhase,
    Run,
    run_labels,
    start_error,
)
from services.agent.runtimes.podman_kube import api as kube_api
from services.agent.runtimes.podman_kube import bookkeeping
from services.agent.runtimes.podman_kube.core import (
    NotThroughApi,
    decode_kube_config,
    down_command,
    play_command,
    play_params,
    prepare_manifest,
)

log = logging.getLogger("ank.agent.podman-kube")


class PodmanKubeRuntime(PodmanConnector):
    name = "podman-kube"

    def create(self, spec: StartSpec, notify: Notify) -> RunHandle:
        config = decode_kube_config(spec.runtime_config)
        if spec.files:
            raise StartError("files are not supported by runtime podman-kube (use a ConfigMap)", permanent=True)
        run_id = uuid.uuid4().hex[:12]
        play = prepare_manifest(
            config.manifest, run_labels(spec.agent, spec.workload, spec.instance, run_id), self.image_map
        )
        if spec.control_interface:  # into the container controlInterfaceTarget names
            play.text = ci_kube.mount_into(play.text, config.control_interface_target, spec.control_interface)
        folder = (Path(spec.run_dir) if spec.run_dir else self.run_dir) / "kube"
        folder.mkdir(parents=True, exist_ok=True)
        manifest_file = folder / f"{spec.workload}.{spec.instance}.{run_id}.yaml"
        manifest_file.write_text(play.text)
        self.watcher.watch_agent(spec.agent)
        self.watcher.register(Run(spec.workload, spec.instance, run_id, expected=play.expected), notify)
        api = self.service.api()
        params = self._params(spec.workload, config) if api is not None else None
        through = "cli"
        if api is not None and params is not None:
            through = self._play_through_api(api, play.text, params, spec.workload, run_id)
        if through == "cli":
            try:
                result = self.cli.run(play_command(config, str(manifest_file)), timeout=300)
            except (OSError, subprocess.TimeoutExpired) as exc:
                result = subprocess.CompletedProcess([], 1, "", str(exc))
            if result.returncode != 0:
                self.watcher.forget(run_id)
                self._down(config.general_options, config.down_options, manifest_file)
                raise start_error("kube play", result.returncode, result.stderr)
        log.info("%s: podman kube play (%s) → pods %s", spec.workload, through, ", ".join(play.pods))
        config_volume, pods_volume = bookkeeping.volume_names(spec.workload, spec.instance, spec.agent)
        self._volume(
            config.general_options,
            config_volume,
            bookkeeping.config_data(config.manifest, config.play_options, config.down_options),
        )
        self._volume(config.general_options, pods_volume, bookkeeping.pods_data(play.pods))
        return RunHandle(
            workload=spec.workload,
            instance=spec.instance,
            runtime=self.name,
            id=",".join(play.pods),
            record={
                "agent": spec.agent,
                "run": run_id,
                "manifest": str(manifest_file),
                "expected": str(play.expected),
                "general_options": json.dumps(config.general_options),
                "down_options": json.dumps(config.down_options),
                "transport": through,
            },
        )

    def _params(self, workload: str, config: PodmanKubeConfig) -> dict[str, object] | None:
        try:
            return play_params(config)
        except NotThroughApi as exc:
            log.info("%s: %s has no podman API equivalent: kube play through the CLI", workload, exc)
            return None

    def _play_through_api(
        self, api: PodmanApi, manifest: str, params: dict[str, object], workload: str, run_id: str
    ) -> str:
        """ "api" once played; "cli" where the service did not answer at all
        (the CLI plays it, --replace clearing what may be left). Raises
        StartError for what the service refused (after tearing it down)."""
        try:
            kube_api.play(api, manifest, params)
            return "api"
        except ApiFailure as exc:
            if exc.status == 0:
                log.warning("%s: podman API kube play: %s (trying the CLI)", workload, exc)
                return "cli"
            self.watcher.forget(run_id)
            self._down_through_api(api, manifest, workload)
            raise start_error("kube play", 125, str(exc)) from None

    def _down_through_api(self, api: PodmanApi, manifest: str, what: str) -> bool:
        try:
            kube_api.down(api, manifest)
            return True
        except ApiFailure as exc:
            log.warning("podman API kube down %s: %s", what, exc)
            return False

    def stop(self, handle: RunHandle, grace_s: float) -> None:
        """SIGTERM to the run's containers, SIGKILL after the grace, without
        blocking the agent; the exits arrive through the events."""
        by_label = ["--filter", f"label={LABEL_RUN}={handle.record.get('run', '')}"]
        api = self.service.api() if handle.record.get("transport", "api") == "api" else None
        if api is None:
            self._stop_in_background(handle, by_label, grace_s)  # `podman stop --filter label=…`
            return
        self.watcher.stop_asked(handle.record.get("run", ""))
        seconds = max(0, math.ceil(grace_s))

        def stop_one(container: str, failures: list[ApiFailure]) -> None:
            try:
                api.stop(container, seconds)
            except ApiFailure as exc:
                failures.append(exc)

        def stop() -> None:
            # all at once, as `podman stop` does: the grace is not paid once per container
            failures: list[ApiFailure] = []
            stoppers = [
                threading.Thread(target=stop_one, args=(container, failures), daemon=True)
                for container in self._container_ids(handle)
            ]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join(seconds + STOP_TIMEOUT_MARGIN_S)
            if not failures:
                return
            log.info("%s: podman API stop: %s (trying the CLI)", handle.workload, failures[0])
            try:
                result = self.cli.run(["stop", "-t", str(seconds), *by_label], timeout=seconds + STOP_TIMEOUT_MARGIN_S)
                if result.returncode != 0:
                    log.info("%s: podman stop: %s", handle.workload, result.stderr.strip())
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.error("%s: podman stop failed: %s", handle.workload, exc)

        threading.Thread(target=stop, name=f"podman-kube-stop-{handle.workload}", daemon=True).start()

    def remove(self, handle: RunHandle) -> None:
        run_id = handle.record.get("run", "")
        self.watcher.update(run_id, removing=True)
        manifest_file = Path(handle.record.get("manifest", ""))
        general_options = _options(handle, "general_options")
        api = self.service.api() if not general_options else None
        down_options = _options(handle, "down_options")
        done = False
        if api is not None and not down_options and manifest_file.is_file():
            done = self._down_through_api(api, manifest_file.read_text(), handle.workload)
        if not done:
            self._down(general_options, down_options, manifest_file)
        self.watcher.forget(run_id)
        manifest_file.unlink(missing_ok=True)
        agent = handle.record.get("agent", "")
        if agent:
            names = list(bookkeeping.volume_names(handle.workload, handle.instance, agent))
            if api is not None and self._remove_volumes_through_api(api, names):
                return
            self._run_quietly(bookkeeping.remove_command(general_options, names))

    def adopt(self, records: list[RunHandle], notify: Notify) -> list[RunHandle]:
        adopted: list[RunHandle] = []
        for record in records:
            agent, run_id = record.record.get("agent", ""), record.record.get("run", "")
            if record.runtime != self.name or not agent or not run_id:
                continue
            self.watcher.watch_agent(agent)
            try:
                rows = self._ps([f"{LABEL_RUN}={run_id}"])
            except (OSError, RuntimeError, ApiFailure, subprocess.TimeoutExpired) as exc:
                log.error("adopt: cannot list the containers of %s: %s", record.workload, exc)
                continue
            running = {
                str(row.get("Id", ""))
                for row in rows
                if str(row.get("State", "")).lower() == "running" and _is(row, record.workload, record.instance)
            }
            expected = int(record.record.get("expected", "1") or 1)
            if len(running) < expected:
                log.info("adopt: %s (%s) no longer runs", record.workload, record.instance)
                continue
            phases: dict[str, ContainerPhase] = dict.fromkeys(running, "running")
            run = Run(record.workload, record.instance, run_id, expected=expected, phases=phases, summary="running")
            self.watcher.register(run, notify, replay=True)
            adopted.append(record)
        return adopted

    def logs(self, handle: RunHandle, *, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        return self._logs(self._container_ids(handle), follow=follow, tail=tail)

    def usage(self, handles: list[RunHandle]) -> dict[str, WorkloadUsage]:
        runs = {handle.workload: self.watcher.get(handle.record.get("run", "")) for handle in handles}
        stats = self._stats([cid for run in runs.values() if run for cid in run.phases])
        usage: dict[str, WorkloadUsage] = {}
        for handle in handles:
            run = runs[handle.workload]
            found = [stats[cid[:12]] for cid in (run.phases if run else {}) if cid[:12] in stats]
            if found:
                cpu = sum(c for c, _ in found if c is not None)
                memory = sum(m for _, m in found if m is not None)
                usage[handle.workload] = WorkloadUsage(cpu_percent=cpu, memory_bytes=memory)
        return usage

    def _ps(self, labels: list[str]) -> list[dict[str, object]]:
        api = self.service.api()
        return api.ps(labels) if api is not None else ps_containers(self.cli, labels)

    def _container_ids(self, handle: RunHandle) -> list[str]:
        try:
            rows = self._ps([f"{LABEL_RUN}={handle.record.get('run', '')}"])
        except (OSError, RuntimeError, ApiFailure, subprocess.TimeoutExpired):
            return []
        return [str(row["Id"]) for row in rows if "Id" in row]

    def _volume(self, general_options: list[str], name: str, data: str) -> None:
        api = self.service.api() if not general_options else None
        if api is not None:
            try:
                kube_api.replace_volume(api, name, {"data": bookkeeping.encode(data)})
                return
            except ApiFailure as exc:
                log.warning("podman API volume %s: %s (trying the CLI)", name, exc)
        for command in bookkeeping.create_commands(general_options, name, data):
            self._run_quietly(command)

    def _remove_volumes_through_api(self, api: PodmanApi, names: list[str]) -> bool:
        """Bookkeeping only: False (the CLI then tries) on a failure."""
        try:
            for name in names:
                kube_api.remove_volume(api, name)
            return True
        except ApiFailure as exc:
            log.warning("podman API volume rm %s: %s", " ".join(names), exc)
            return False

    def _run_quietly(self, command: list[str]) -> None:
        """Bookkeeping only: a failure is logged, never fails the workload."""
        try:
            result = self.cli.run(command, timeout=60)
            if result.returncode != 0:
                log.warning("podman %s: %s", " ".join(command[:3]), result.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("podman %s failed: %s", " ".join(command[:3]), exc)

    def _down(self, general_options: list[str], down_options: list[str], manifest_file: Path) -> None:
        if not manifest_file.is_file():
            return
        try:
            result = self.cli.run(down_command(general_options, down_options, str(manifest_file)), timeout=120)
            if result.returncode != 0:
                log.warning("podman kube down %s: %s", manifest_file.name, result.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("podman kube down %s failed: %s", manifest_file.name, exc)


def _options(handle: RunHandle, key: str) -> list[str]:
    try:
        value = json.loads(handle.record.get(key, "[]"))
    except json.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _is(row: dict[str, object], workload: str, instance: str) -> bool:
    labels = row.get("Labels")
    if not isinstance(labels, dict):
        return False
    return labels.get(LABEL_WORKLOAD) == workload and labels.get(LABEL_INSTANCE) == instance


def make_runtime(run_dir: str | Path) -> Runtime:
    """The connector the agent loads (mypy checks it against the Protocol)."""
    return PodmanKubeRuntime(run_dir)
