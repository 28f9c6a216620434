from s3proxy.cli import main

raise SystemExit(main())
