"""The health-watcher: probes (exec, tcp, http, Zenoh-key freshness, podman
HEALTHCHECK) and their verdicts on `ank/health/<agent>/<workload>`."""
