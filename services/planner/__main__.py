"""`python -m services.planner`: runs ank-planner."""

from services.planner.shell import main

raise SystemExit(main())
