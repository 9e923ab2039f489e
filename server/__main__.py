"""`python -m server` is the `tadbot` command line."""

from server.cli import main

raise SystemExit(main())
