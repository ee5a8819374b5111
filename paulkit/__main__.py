from paulkit.cli import main

raise SystemExit(main())
