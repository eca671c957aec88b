"""The planner: desired state, dependencies, per-agent plans, delete ordering
(core.py, pure), persisted by store.py, run by shell.py (`ank-planner`)."""
