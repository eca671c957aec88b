from services.dashboard.shell import main

raise SystemExit(main())
