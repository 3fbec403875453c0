from s3syncd.cli import main

raise SystemExit(main())
