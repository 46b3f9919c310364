from layerwise.cli import main

raise SystemExit(main())
