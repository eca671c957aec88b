"""The energy-aware scheduler: places workloads that have no agent (native
mode, on the bus) and binds Kubernetes pods (`--kubernetes`). See
docs/scheduler.md."""
