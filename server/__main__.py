"""`python -m server` is the `tadbot` command line."""

from server.cli.main import main

raise SystemExit(main())
