"""`tadbot admin`: devices and accounts, who may reach which client, logins, the audit log and purging.

Run on the server by whoever may read its data dir; each change is in the audit log as `cli:<user>`.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from server.access.accounts import Accounts
from server.access.policy import Access
from server.config import Settings, load_settings
from server.errors import BadRequest, TadbotError
from server.records.store import Records

Handler = Callable[[argparse.Namespace, Settings], int]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M") if t else "-"


def _stores(settings: Settings) -> tuple[Records, Access]:

    records = Records(settings.data_path / "tadbot.sqlite3")
    return records, Access(records)


def _accounts(settings: Settings) -> Accounts:
    records, _ = _stores(settings)
    return Accounts(records)


def _add(args: argparse.Namespace, settings: Settings) -> int:
    kind = "device" if args.action == "add-device" else "therapist"
    role = "admin" if args.action == "add-admin" else "therapist"
    _, access = _stores(settings)
    token = access.add(
        kind, args.name, actor=_actor(), role=role, expires_days=args.expires, replace=args.replace
    )
    clients = getattr(args, "client", None) or []
    if clients and kind == "device":
        access.enroll(args.name, clients, actor=_actor())
    elif clients:
        access.assign(args.name, clients, actor=_actor())
    what = role if kind == "therapist" else kind
    print(
        f"{'replaced' if args.replace else 'created'} {what} {args.name!r}; its bearer token follows "
        "(shown once, stored only as a hash):"
    )
    print(token)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    _, access = _stores(settings)
    rows = access.listing()
    print(f"{'kind':9} {'name':20} {'role':9} {'state':8} {'expires':16} {'last seen':16} login  clients")
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        login = ("password" if row["password"] else "token") + ("+totp" if row["totp"] else "")
        if row["kind"] == "device":
            login = "token"
        print(
            f"{row['kind']:9} {row['name']:20} {row['role']:9} {state:8} {_when(row['expires_at']):16} "
            f"{_when(row['last_seen']):16} {login:6} {' '.join(row['clients']) or '-'}"
        )
    print(f"{len(rows)} credentials; times in UTC")
    return 0


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    _, access = _stores(settings)
    token = access.rotate(args.kind, args.name, actor=_actor())
    print(f"new token for {args.kind} {args.name!r}; the old one no longer works (shown once):")
    print(token)
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    _, access = _stores(settings)
    access.revoke(args.kind, args.name, actor=_actor())
    print(f"revoked {args.kind} {args.name!r}: its token, password and open logins no longer work")
    return 0


def _expire(args: argparse.Namespace, settings: Settings) -> int:
    _, access = _stores(settings)
    at = access.expire(args.kind, args.name, None if args.never else args.days, actor=_actor())
    print(f"{args.kind} {args.name!r} " + (f"expires {_when(at)} UTC" if at else "never expires"))
    return 0


def _enroll(args: argparse.Namespace, settings: Settings) -> int:
    _, access = _stores(settings)
    access.enroll(args.device, args.clients, actor=_actor(), remove=args.remove)
    enrolled = _clients(access, "device", args.device)
    print(f"device {args.device!r} is enrolled for: {' '.join(enrolled) or 'no client'}")
    return 0


def _clients(access: Access, kind: str, name: str) -> list[str]:
    """The clients a device is enrolled for or a therapist is assigned, as `tadbot admin list` shows them."""
    return next(row["clients"] for row in access.listing() if row["kind"] == kind and row["name"] == name)


def _assign(args: argparse.Namespace, settings: Settings) -> int:
    _, access = _stores(settings)
    access.assign(args.therapist, args.clients, actor=_actor(), remove=args.remove)
    mine = _clients(access, "therapist", args.therapist)
    print(f"therapist {args.therapist!r} reads: {' '.join(mine) or 'no client'}")
    return 0


def _password(args: argparse.Namespace, settings: Settings) -> int:
    if args.generate:
        password = "-".join(secrets.token_urlsafe(6) for _ in range(3))
    elif sys.stdin.isatty():
        password = getpass.getpass(f"new password for {args.therapist}: ")
        if getpass.getpass("again: ") != password:
            raise BadRequest("password_mismatch", "the two passwords differ; nothing changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    _accounts(settings).set_password(args.therapist, password, actor=_actor())
    if args.generate:
        print(f"password set for {args.therapist!r}; give it to them in person (shown once):")
        print(password)
    else:
        print(f"password set for {args.therapist!r}; their open logins were ended")
    return 0


def _totp(args: argparse.Namespace, settings: Settings) -> int:
    accounts = _accounts(settings)
    if args.off:
        accounts.totp_off(args.therapist, actor=_actor())
        print(f"second factor off for {args.therapist!r}")
        return 0
    uri = accounts.totp_on(args.therapist, actor=_actor())
    print(f"second factor on for {args.therapist!r}: add this to their authenticator app (shown once):")
    print(uri)
    return 0


def _unlock(args: argparse.Namespace, settings: Settings) -> int:
    _accounts(settings).unlock(args.therapist, actor=_actor())
    print(f"{args.therapist!r} may try to log in again")
    return 0


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    records, _ = _stores(settings)
    for line in reversed(records.audit_lines(args.limit)):
        print(f"{_when(line['t'])}  {line['actor']:28} {line['action']:18} {line['target']}")
    return 0


HANDLERS: dict[str, Handler] = {
    "add-device": _add,
    "add-therapist": _add,
    "add-admin": _add,
    "list": _list,
    "rotate": _rotate,
    "revoke": _revoke,
    "expire": _expire,
    "enroll": _enroll,
    "assign": _assign,
    "password": _password,
    "totp": _totp,
    "unlock": _unlock,
    "audit": _audit,
}


def run(args: argparse.Namespace) -> int:
    settings = load_settings(Path(args.config) if args.config else None)
    try:
        return HANDLERS[args.action](args, settings)
    except ValueError as exc:  # argparse's choices keep these out; kept as one line if one slips through
        raise TadbotError("bad_argument", str(exc)) from None


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < days <= 36500:
        raise argparse.ArgumentTypeError("give 0 < DAYS <= 36500")
    return days


def add_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `tadbot admin` actions, beside `purge` (which server/cli/purge.py adds)."""
    for action, who, clients_help in (
        (
            "add-device",
            "a device",
            "enrol it for this client (repeat for more); it can open no session without one",
        ),
        ("add-therapist", "a therapist", "assign them this client to read (repeat for more)"),
        ("add-admin", "an admin (erases any client; reads only what is assigned)", None),
    ):
        p = actions.add_parser(action, help=f"create {who}; its token is printed on the last line")
        p.add_argument("name")
        if clients_help:
            p.add_argument("--client", action="append", metavar="CLIENT", help=clients_help)
        p.add_argument(
            "--expires", type=_days, metavar="DAYS", help="the token stops working after DAYS days"
        )
        p.add_argument(
            "--replace", action="store_true", help="give an existing one a new token and undo a revoke"
        )
    actions.add_parser("list", help="every device and account: role, state, expiry, last seen, clients")
    for action, help_text in (
        ("rotate", "a new token (printed on the last line); the old one stops working"),
        ("revoke", "its token, password and logins stop working; its records stay"),
        ("expire", "set when its token stops working"),
    ):
        p = actions.add_parser(action, help=help_text)
        p.add_argument("kind", choices=("device", "therapist"), help="'therapist' covers admins too")
        p.add_argument("name")
        if action == "expire":
            when = p.add_mutually_exclusive_group(required=True)
            when.add_argument("--days", type=_days, help="from now")
            when.add_argument("--never", action="store_true")
    for action, owner, help_text in (
        ("enroll", "device", "let a device open sessions for these clients (made if new)"),
        ("assign", "therapist", "let a therapist or admin read these clients"),
    ):
        p = actions.add_parser(action, help=help_text)
        p.add_argument(owner)
        p.add_argument("clients", nargs="+", metavar="CLIENT")
        p.add_argument("--remove", action="store_true", help="take these clients away instead")
    p = actions.add_parser(
        "password", help="set a dashboard password: typed twice, one line on stdin, or --generate"
    )
    p.add_argument("therapist")
    p.add_argument("--generate", action="store_true", help="make a random one and print it on the last line")
    p = actions.add_parser("totp", help="turn the login's second factor on (prints an otpauth:// URI) or off")
    p.add_argument("therapist")
    p.add_argument("--off", action="store_true")
    p = actions.add_parser("unlock", help="let a name locked by failed logins try again")
    p.add_argument("therapist")
    p = actions.add_parser("audit", help="the newest lines of the audit log: who did what, when (UTC)")
    p.add_argument("--limit", type=int, default=50)
