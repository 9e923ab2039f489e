"""`tadbot admin purge`: the retention pass, run by hand or by tadbot-retention.timer."""

from __future__ import annotations

import argparse
from typing import Any

from server.cli.settings import settings_for
from server.config import Settings
from server.errors import TadbotError


def _existing_memory(settings: Settings) -> Any:
    """The server's own memory store; None where none was ever made (the server can run without one)."""
    if not (settings.data_path / "memory").exists():
        return None
    from server.conversation.components import open_memory

    return open_memory(settings)


def cmd_purge(args: argparse.Namespace) -> int:
    """`tadbot admin purge`: the retention pass (records/retention.py); unreached memories exit 1."""
    from server.records import retention

    days = None if args.older_than_config else retention.parse_days("--older-than", args.older_than)
    settings = settings_for(args)
    if days is None:
        days = settings.retention.days
        if days == 0:
            print("retention is off (retention.days = 0); nothing purged")
            return 0
    report = retention.purge_data_dir(
        settings, days, lambda: _existing_memory(settings), dry_run=args.dry_run
    )
    print(report.line())
    if report.memory_error:
        raise TadbotError("memory_unavailable", report.memory_error)
    return 0


def add_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`tadbot admin purge`, added after server/cli/admin.py's actions."""
    purge = actions.add_parser(
        "purge",
        help="delete sessions last active before a cutoff, with their turns, emotions, safety events "
        "and memories; prints one summary line",
        description="Delete sessions last active before local midnight DAYS days ago, with their turns, "
        "emotion samples, safety events and vector memories. Newer sessions, devices, therapists and the "
        "audit log stay.",
    )
    purge.set_defaults(func=cmd_purge)
    cutoff = purge.add_mutually_exclusive_group(required=True)
    cutoff.add_argument("--older-than", metavar="DAYS", help="a whole number of days, 1 to 36500")
    cutoff.add_argument(
        "--older-than-config",
        action="store_true",
        help="use retention.days, as tadbot-retention.timer does; 0 (the default) purges nothing",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
