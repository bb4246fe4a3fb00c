from sfpltracker.cli import main

raise SystemExit(main())
