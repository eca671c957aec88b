"""Libraries the processes share that are not processes themselves.

`services/<name>/` is one process (or `services/bus/`, the shared bus adapter
DESIGN.md places there); what several of them use — manifest reading and
rendering, the clock, logging set-up, lifecycle helpers, the job queue, name
rules, digests — lives here.
"""
