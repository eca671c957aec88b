"""python -m services.agent: the same as `ank-agent`."""

from services.agent.shell import main

raise SystemExit(main())
