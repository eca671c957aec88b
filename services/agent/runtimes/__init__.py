"""Runtime connectors, one folder each, behind services.agent.runtimes.base.Runtime."""
