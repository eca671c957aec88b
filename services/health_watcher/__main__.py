"""`python -m services.health_watcher`: the same as `ank-health-watcher`."""

from services.health_watcher.shell import main

raise SystemExit(main())
