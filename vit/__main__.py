from vit.cli import main

raise SystemExit(main())
