from sfpltracker.cli.main import main

raise SystemExit(main())
