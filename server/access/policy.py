"""Who may do what: device and therapist credentials, their roles, and the clients each may reach.

A device is enrolled for its clients and opens sessions for them only, so the server, not the device, decides
whose record and memory a turn reaches. A therapist reads only the clients assigned to them. An admin (a
therapists row with role 'admin') reads what is assigned to them too, and may also erase any client: admins
manage access, they do not browse records. Every change is in the audit log with who made it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.errors import AuthError, BadRequest, NotFound, TadbotError
from server.records.storage import StorageError
from server.records.store import Records, hash_token, new_token

_LOGGER = logging.getLogger(__name__)

KINDS = {"device": "devices", "therapist": "therapists"}
ROLES = ("therapist", "admin")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
"""Pseudonyms and credential names: 1-64 letters, digits, or _ . @ -, starting with a letter or digit."""
NAME_RULE = "1-64 letters, digits, or _ . @ -, starting with a letter or digit"
CHECK_CLIENT = "tadbot-doctor"
"""The pseudonym `tadbot doctor` opens its test sessions under (device/doctor.py's DOCTOR_CLIENT): every
device may use it, so a check never writes into a person's record, and it is no one's record."""
SEEN_EVERY_S = 60.0
"""last_seen is written at most this often per credential, so a busy device does not write on every call."""


class Forbidden(TadbotError):
    status = 403


@dataclass(frozen=True)
class Caller:
    kind: str
    """'device' or 'therapist' (an admin is a therapist account with role 'admin')."""
    id: int
    name: str
    role: str
    """'device', 'therapist' or 'admin'."""

    @property
    def actor(self) -> str:
        """How the audit log names them."""
        return f"{self.role}:{self.name}"


def check_name(name: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise BadRequest("bad_name", f"{what} {name!r} is not a valid name: use {NAME_RULE}")
    return name


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(kind)
    return KINDS[kind]


class Access:
    def __init__(self, records: Records) -> None:
        self._records = records

    # Credentials -------------------------------------------------------------------------------

    def add(
        self,
        kind: str,
        name: str,
        *,
        actor: str,
        role: str = "therapist",
        expires_days: float | None = None,
        replace: bool = False,
    ) -> str:
        """Create a device or an account and return its bearer token (shown once, stored hashed). With
        `replace`, an existing one of that name gets a new token and is made valid again."""
        table = _table(kind)
        check_name(name, kind)
        if role not in ROLES:
            raise BadRequest("bad_role", f"role must be one of: {', '.join(ROLES)}")
        token = new_token()
        now = time.time()
        expires = now + expires_days * 86400 if expires_days is not None else None
        columns = "name, token_hash, created_at, expires_at" + (", role" if kind == "therapist" else "")
        values = [name, hash_token(token), now, expires] + ([role] if kind == "therapist" else [])
        marks = ", ".join("?" * len(values))
        with self._records.transaction() as db:
            if replace:
                db.execute(
                    f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT (name) DO UPDATE SET "
                    "token_hash = excluded.token_hash, expires_at = excluded.expires_at, revoked_at = NULL",
                    values,
                )
            else:
                try:
                    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)
                except sqlite3.IntegrityError:
                    raise BadRequest(
                        "name_taken", f"{kind} {name!r} already exists; pick another name"
                    ) from None
            added = role if kind == "therapist" else kind
            Records.audit_in(db, actor, f"add_{added}", name)
        return token

    def rotate(self, kind: str, name: str, *, actor: str) -> str:
        """A new token for a device or account; the old one stops working at once."""
        token = new_token()
        with self._records.transaction() as db:
            row = self._row(db, kind, name)
            if row["revoked_at"] is not None:
                raise BadRequest(
                    "revoked",
                    f"{kind} {name!r} was revoked; make it again with "
                    f"`tadbot admin add-{kind} {name} --replace`",
                )
            db.execute(
                f"UPDATE {_table(kind)} SET token_hash = ? WHERE id = ?", (hash_token(token), row["id"])
            )
            if kind == "therapist":
                db.execute("DELETE FROM web_sessions WHERE therapist_id = ?", (row["id"],))
            Records.audit_in(db, actor, f"rotate_{kind}", name)
        return token

    def revoke(self, kind: str, name: str, *, actor: str) -> None:
        """The token, the password login and any open dashboard login stop working; the record stays."""
        with self._records.transaction() as db:
            row = self._row(db, kind, name)
            db.execute(
                f"UPDATE {_table(kind)} SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (time.time(), row["id"]),
            )
            if kind == "therapist":
                db.execute("DELETE FROM web_sessions WHERE therapist_id = ?", (row["id"],))
            Records.audit_in(db, actor, f"revoke_{kind}", name)

    def expire(self, kind: str, name: str, days: float | None, *, actor: str) -> float | None:
        """Set (or, with None, clear) when a credential stops working; returns the time it is set to."""
        at = time.time() + days * 86400 if days is not None else None
        with self._records.transaction() as db:
            row = self._row(db, kind, name)
            db.execute(f"UPDATE {_table(kind)} SET expires_at = ? WHERE id = ?", (at, row["id"]))
            if kind == "therapist" and at is not None and at <= time.time():
                db.execute("DELETE FROM web_sessions WHERE therapist_id = ?", (row["id"],))
            Records.audit_in(db, actor, f"expire_{kind}", f"{name} {_when(at) if at else 'never'}")
        return at

    def listing(self) -> list[dict[str, Any]]:
        """Every device and account with its state and clients, for `tadbot admin list`: no secrets."""
        rows: list[dict[str, Any]] = []
        with self._records.transaction() as db:
            for row in db.execute(
                "SELECT 'device' AS kind, d.id, d.name, 'device' AS role, d.created_at, d.expires_at, "
                "d.revoked_at, d.last_seen, 0 AS password, 0 AS totp, "
                "(SELECT group_concat(c.pseudonym, ' ') FROM enrollments e "
                "JOIN clients c ON c.id = e.client_id WHERE e.device_id = d.id) AS clients FROM devices d "
                "UNION ALL "
                "SELECT 'therapist', t.id, t.name, t.role, t.created_at, t.expires_at, t.revoked_at, "
                "t.last_seen, "
                "t.password_hash IS NOT NULL, t.totp_secret IS NOT NULL, "
                "(SELECT group_concat(c.pseudonym, ' ') FROM assignments a "
                "JOIN clients c ON c.id = a.client_id WHERE a.therapist_id = t.id) "
                "FROM therapists t ORDER BY 1, 3"
            ):
                rows.append(
                    {
                        **dict(row),
                        "password": bool(row["password"]),
                        "totp": bool(row["totp"]),
                        "clients": sorted((row["clients"] or "").split()),
                    }
                )
        return rows

    def caller(self, kind: str, token: str) -> Caller:
        """The device or account a bearer token belongs to; refuses an unknown, revoked or expired one."""
        table = _table(kind)
        now = time.time()
        role = "role" if kind == "therapist" else "'device'"
        with self._records.transaction() as db:
            row = db.execute(
                f"SELECT id, name, {role} AS role, expires_at, revoked_at, last_seen FROM {table} "
                "WHERE token_hash = ?",
                (hash_token(token),),
            ).fetchone()
            if row is None:
                raise AuthError(
                    "bad_token",
                    f"this token is not a valid {kind} token; send the one `tadbot admin add-{kind} NAME` "
                    f"printed, or ask the admin for a new one (`tadbot admin rotate {kind} NAME`)",
                )
            if row["revoked_at"] is not None:
                raise AuthError(
                    "revoked_token",
                    f"this {kind} token was revoked on {_when(row['revoked_at'])}; ask the admin",
                )
            if row["expires_at"] is not None and row["expires_at"] <= now:
                raise AuthError(
                    "expired_token",
                    f"this {kind} token expired on {_when(row['expires_at'])}; ask the admin for a new one "
                    f"(`tadbot admin rotate {kind} NAME`)",
                )
        if row["last_seen"] is None or row["last_seen"] < now - SEEN_EVERY_S:
            # Only a note for the admin: a disk that will not take it must not lock the caller out.
            with contextlib.suppress(StorageError), self._records.transaction() as db:
                db.execute(f"UPDATE {table} SET last_seen = ? WHERE id = ?", (now, row["id"]))
        return Caller(kind, int(row["id"]), str(row["name"]), str(row["role"]))

    def known(self, token: str) -> bool:
        """Whether a token is a valid device or therapist token; never raises."""
        for kind in KINDS:
            try:
                self.caller(kind, token)
                return True
            except AuthError:
                continue
        return False

    # Scope ---------------------------------------------------------------------------------

    def enroll(self, device: str, clients: list[str], *, actor: str, remove: bool = False) -> None:
        """Enrol a device for clients (made if new) or, with `remove`, take them off it."""
        self._link("enrollments", "device", device, clients, actor=actor, remove=remove, create=True)

    def assign(self, therapist: str, clients: list[str], *, actor: str, remove: bool = False) -> None:
        """Give a therapist clients to read, or take them away; the clients must exist."""
        self._link("assignments", "therapist", therapist, clients, actor=actor, remove=remove, create=False)

    def session_client(self, device: Caller, asked: str | None) -> str:
        """The client a device's new session is for: the one it asked for if it is enrolled for them, or,
        when it names none, the one client it is enrolled for."""
        if asked == CHECK_CLIENT:
            return asked
        enrolled = self.enrolled(device.id)
        if asked is None:
            if len(enrolled) == 1:
                return enrolled[0]
            if not enrolled:
                raise Forbidden(
                    "not_enrolled",
                    f"device {device.name!r} is enrolled for no client; on the server run "
                    f"`tadbot admin enroll {device.name} CLIENT`",
                )
            raise BadRequest(
                "client_required",
                f'this device is enrolled for {len(enrolled)} clients: send JSON {{"client": "<pseudonym>"}}',
            )
        if asked not in enrolled:
            raise Forbidden(
                "client_not_enrolled",
                f"device {device.name!r} is not enrolled for that client; on the server run "
                f"`tadbot admin enroll {device.name} CLIENT` if it should be",
            )
        return asked

    def enrolled(self, device_id: int) -> list[str]:
        with self._records.transaction() as db:
            rows = db.execute(
                "SELECT c.pseudonym FROM enrollments e JOIN clients c ON c.id = e.client_id "
                "WHERE e.device_id = ? ORDER BY c.pseudonym",
                (device_id,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def is_enrolled(self, device_id: int, client: str) -> bool:
        return client == CHECK_CLIENT or client in self.enrolled(device_id)

    def assigned(self, caller: Caller) -> list[str]:
        """The clients a therapist or admin may read."""
        with self._records.transaction() as db:
            rows = db.execute(
                "SELECT c.pseudonym FROM assignments a JOIN clients c ON c.id = a.client_id "
                "WHERE a.therapist_id = ? ORDER BY c.pseudonym",
                (caller.id,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def may_read(self, caller: Caller, client: str) -> bool:
        return caller.kind == "therapist" and client in self.assigned(caller)

    def require_session(self, caller: Caller, session_id: str) -> None:
        """Refuse a session whose client is not the reader's as if it did not exist (404): the API and the
        dashboard both read sessions through this."""
        try:
            client: str | None = self._records.session(session_id).client
        except NotFound:
            client = None
        if client is None or not self.may_read(caller, client):
            raise NotFound("unknown_session", f"no session {session_id!r} among your clients'")

    def may_erase(self, caller: Caller, client: str) -> bool:
        return caller.role == "admin" or self.may_read(caller, client)

    def links(self, client: str) -> dict[str, list[str]]:
        """The devices enrolled for a client and the therapists assigned to them: what erasing them ends."""
        with self._records.transaction() as db:
            devices = db.execute(
                "SELECT d.name FROM enrollments e JOIN devices d ON d.id = e.device_id JOIN clients c "
                "ON c.id = e.client_id WHERE c.pseudonym = ? ORDER BY d.name",
                (client,),
            ).fetchall()
            therapists = db.execute(
                "SELECT t.name FROM assignments a JOIN therapists t ON t.id = a.therapist_id JOIN clients c "
                "ON c.id = a.client_id WHERE c.pseudonym = ? ORDER BY t.name",
                (client,),
            ).fetchall()
        return {"devices": [str(r[0]) for r in devices], "therapists": [str(r[0]) for r in therapists]}

    # ----------------------------------------------------------------------------------------

    def _link(
        self, table: str, kind: str, name: str, clients: list[str], *, actor: str, remove: bool, create: bool
    ) -> None:
        owner = "device_id" if kind == "device" else "therapist_id"
        now = time.time()
        with self._records.transaction() as db:
            row = self._row(db, kind, name)
            for client in clients:
                check_name(client, "client")
                if create and not remove:
                    db.execute(
                        "INSERT INTO clients (pseudonym, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                        (client, now),
                    )
                found = db.execute("SELECT id FROM clients WHERE pseudonym = ?", (client,)).fetchone()
                if found is None:
                    raise NotFound(
                        "unknown_client",
                        f"no client {client!r}: enrol a device for them first (`tadbot admin enroll DEVICE "
                        f"{client}`), or check the spelling",
                    )
                if remove:
                    db.execute(
                        f"DELETE FROM {table} WHERE {owner} = ? AND client_id = ?", (row["id"], found[0])
                    )
                else:
                    db.execute(f"INSERT OR IGNORE INTO {table} VALUES (?, ?)", (row["id"], found[0]))
            verb = {("device", False): "enroll", ("device", True): "unenroll"}.get(
                (kind, remove), "unassign" if remove else "assign"
            )
            Records.audit_in(db, actor, verb, f"{name}: {len(clients)} clients")

    @staticmethod
    def _row(db: sqlite3.Connection, kind: str, name: str) -> sqlite3.Row:
        row: sqlite3.Row | None = db.execute(
            f"SELECT id, revoked_at FROM {_table(kind)} WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound("unknown_name", f"no {kind} {name!r}; `tadbot admin list` shows them all")
        return row
