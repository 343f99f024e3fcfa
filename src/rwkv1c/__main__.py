from rwkv1c.cli import main

raise SystemExit(main())
