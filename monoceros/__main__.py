from monoceros.cli import main

raise SystemExit(main())
