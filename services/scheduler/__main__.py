"""`python -m services.scheduler`: the same as `ank-scheduler`."""

import sys

from services.scheduler.shell import main

sys.exit(main())
