"""The agent: runs the workloads of one node (services.agent.shell)."""
