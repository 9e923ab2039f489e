"""Dashboard logins: argon2id passwords, an optional TOTP second factor, lockout and rate limits on failed
attempts, and the server-side login sessions a cookie points at (so logging out or revoking an account ends
them at once).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass

from server.access.policy import Caller, check_name
from server.errors import AuthError, BadRequest, NotFound, TadbotError
from server.records.store import Records

_LOGGER = logging.getLogger(__name__)

PASSWORD_MIN = 12
"""Characters; a passphrase of a few words passes, a word and a digit does not."""
PASSWORD_MAX = 1024
"""Hashing is deliberately slow, so an enormous password would cost the server dearly."""
ADDRESS_FAILURES = 20
"""Failed logins from one address within the lockout window before that address is refused for a while."""
ATTEMPTS_KEPT_S = 30 * 86400
TOTP_ISSUER = "TADBot"
REFUSED = "the name, password or code is not right"


@dataclass(frozen=True)
class LoginPolicy:
    idle_s: float = 30 * 60
    max_s: float = 12 * 3600
    lockout_failures: int = 5
    lockout_s: float = 15 * 60


@dataclass(frozen=True)
class WebLogin:
    caller: Caller
    csrf: str
    """This login's form token: every form carries it and every POST must send it back."""


class TooManyAttempts(TadbotError):
    status = 429


def _hash_id(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()


class Accounts:
    def __init__(self, records: Records, policy: LoginPolicy | None = None) -> None:
        from argon2 import PasswordHasher

        self._records = records
        self.policy = policy or LoginPolicy()
        self._hasher = PasswordHasher()
        # Verified when the name is unknown, so a wrong name costs as long as a wrong password.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    # Set by the admin ----------------------------------------------------------------------

    def set_password(self, name: str, password: str, *, actor: str) -> None:
        if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
            raise BadRequest(
                "weak_password", f"a password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters"
            )
        hashed = self._hasher.hash(password)
        with self._records.transaction() as db:
            row = _account(db, name)
            db.execute("UPDATE therapists SET password_hash = ? WHERE id = ?", (hashed, row["id"]))
            db.execute("DELETE FROM web_sessions WHERE therapist_id = ?", (row["id"],))
            Records.audit_in(db, actor, "set_password", name)

    def totp_on(self, name: str, *, actor: str) -> str:
        """Turn the second factor on with a new secret; returns the otpauth:// URI for an authenticator."""
        import pyotp

        secret = pyotp.random_base32()
        with self._records.transaction() as db:
            row = _account(db, name)
            db.execute(
                "UPDATE therapists SET totp_secret = ?, totp_last = NULL WHERE id = ?", (secret, row["id"])
            )
            Records.audit_in(db, actor, "totp_on", name)
        return str(pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=TOTP_ISSUER))

    def totp_off(self, name: str, *, actor: str) -> None:
        with self._records.transaction() as db:
            row = _account(db, name)
            db.execute(
                "UPDATE therapists SET totp_secret = NULL, totp_last = NULL WHERE id = ?", (row["id"],)
            )
            Records.audit_in(db, actor, "totp_off", name)

    def unlock(self, name: str, *, actor: str) -> None:
        """Clear a lockout: a success marker ends the run of failures the lockout counts."""
        with self._records.transaction() as db:
            _account(db, name)
            db.execute(
                "INSERT INTO login_attempts (t, name, address, ok) VALUES (?, ?, 'unlocked by admin', 1)",
                (time.time(), name),
            )
            Records.audit_in(db, actor, "unlock", name)

    # Logging in ----------------------------------------------------------------------------

    def _try(self, name: str, password: str, code: str, address: str) -> Caller | None:
        now = time.time()
        with self._records.transaction() as db:
            db.execute("DELETE FROM login_attempts WHERE t < ?", (now - ATTEMPTS_KEPT_S,))
            self._refuse_if_throttled(db, name, address, now)
        with self._records.transaction() as db:
            row = db.execute(
                "SELECT id, name, role, password_hash, totp_secret, totp_last, revoked_at, expires_at "
                "FROM therapists WHERE name = ?",
                (name,),
            ).fetchone()
        ok = self._password_ok(row, password[:PASSWORD_MAX])
        step = self._totp_step(row, code) if ok and row["totp_secret"] else None
        ok = ok and (row["totp_secret"] is None or step is not None)
        ok = ok and row["revoked_at"] is None and (row["expires_at"] is None or row["expires_at"] > now)
        with self._records.transaction() as db:
            db.execute(
                "INSERT INTO login_attempts (t, name, address, ok) VALUES (?, ?, ?, ?)",
                (now, name[:64], address, int(ok)),
            )
            if not ok:
                Records.audit_in(db, f"address:{address}", "login_failed", name[:64])
                return None
            if step is not None:
                db.execute("UPDATE therapists SET totp_last = ? WHERE id = ?", (step, row["id"]))
            if self._hasher.check_needs_rehash(row["password_hash"]):
                db.execute(
                    "UPDATE therapists SET password_hash = ? WHERE id = ?",
                    (self._hasher.hash(password), row["id"]),
                )
            Records.audit_in(db, f"{row['role']}:{name}", "login", address)
        return Caller("therapist", int(row["id"]), str(row["name"]), str(row["role"]))

    def login(self, name: str, password: str, code: str, address: str) -> Caller:
        """The account for a name, password and (when it has one) TOTP code, or a refusal that does not say
        which of them was wrong. Locked names and busy addresses are refused before any check."""
        caller = self._try(name, password, code, address)
        if caller is None:  # raised here, after the transaction that records the failure has committed
            _LOGGER.warning("a failed dashboard login from %s", address)
            raise AuthError("bad_login", REFUSED)
        return caller

    def open(self, caller: Caller) -> str:
        """A new login session; returns the cookie's value (stored only as its hash)."""
        cookie = secrets.token_urlsafe(32)
        now = time.time()
        with self._records.transaction() as db:
            db.execute(
                "DELETE FROM web_sessions WHERE seen_at < ? OR created_at < ?",
                (now - self.policy.idle_s, now - self.policy.max_s),
            )
            db.execute(
                "INSERT INTO web_sessions (id_hash, therapist_id, csrf, created_at, seen_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (_hash_id(cookie), caller.id, secrets.token_urlsafe(32), now, now),
            )
        return cookie

    def resume(self, cookie: str) -> WebLogin | None:
        """The login a cookie belongs to, while it is neither idle too long, too old, nor its account revoked
        or expired; each page load keeps it alive."""
        now = time.time()
        with self._records.transaction() as db:
            row = db.execute(
                "SELECT w.id_hash, w.csrf, w.created_at, w.seen_at, t.id, t.name, t.role, t.revoked_at, "
                "t.expires_at FROM web_sessions w JOIN therapists t ON t.id = w.therapist_id "
                "WHERE w.id_hash = ?",
                (_hash_id(cookie),),
            ).fetchone()
            if row is None:
                return None
            alive = (
                row["seen_at"] > now - self.policy.idle_s
                and row["created_at"] > now - self.policy.max_s
                and row["revoked_at"] is None
                and (row["expires_at"] is None or row["expires_at"] > now)
            )
            if not alive:
                db.execute("DELETE FROM web_sessions WHERE id_hash = ?", (row["id_hash"],))
                return None
            db.execute("UPDATE web_sessions SET seen_at = ? WHERE id_hash = ?", (now, row["id_hash"]))
        return WebLogin(
            Caller("therapist", int(row["id"]), str(row["name"]), str(row["role"])), str(row["csrf"])
        )

    def close(self, cookie: str) -> None:
        with self._records.transaction() as db:
            db.execute("DELETE FROM web_sessions WHERE id_hash = ?", (_hash_id(cookie),))

    # ----------------------------------------------------------------------------------------

    def _refuse_if_throttled(self, db: sqlite3.Connection, name: str, address: str, now: float) -> None:
        window = now - self.policy.lockout_s
        (from_address,) = db.execute(
            "SELECT COUNT(*) FROM login_attempts WHERE address = ? AND ok = 0 AND t > ?", (address, window)
        ).fetchone()
        if from_address >= ADDRESS_FAILURES:
            raise _throttled("too many failed logins from this address", self.policy.lockout_s, "")
        since = db.execute(
            "SELECT MAX(t) FROM login_attempts WHERE name = ? AND ok = 1", (name[:64],)
        ).fetchone()[0]
        failures = db.execute(
            "SELECT COUNT(*), MAX(t) FROM login_attempts WHERE name = ? AND ok = 0 AND t > ?",
            (name[:64], max(window, since or 0.0)),
        ).fetchone()
        if failures[0] >= self.policy.lockout_failures:
            wait = failures[1] + self.policy.lockout_s - now
            raise _throttled(
                "too many failed logins for this name",
                wait,
                ", or ask the admin to run `tadbot admin unlock NAME`",
            )

    def _password_ok(self, row: sqlite3.Row | None, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        stored = row["password_hash"] if row is not None and row["password_hash"] else self._decoy
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
        return stored is not self._decoy

    @staticmethod
    def _totp_step(row: sqlite3.Row, code: str) -> int | None:
        """The time step a code is valid for (this one or either neighbour, for clock drift), if it is newer
        than the last one used: a code read over a shoulder cannot be used again."""
        import pyotp

        totp = pyotp.TOTP(row["totp_secret"])
        now = int(time.time() // totp.interval)
        code = code.strip().replace(" ", "")
        for step in (now - 1, now, now + 1):
            if (row["totp_last"] is None or step > row["totp_last"]) and hmac.compare_digest(
                totp.at(step * totp.interval), code
            ):
                return step
        return None


def _throttled(why: str, wait_s: float, otherwise: str) -> TooManyAttempts:
    minutes = max(1, round(wait_s / 60))
    error = TooManyAttempts(
        "too_many_attempts", f"{why}: try again in {minutes} minute{'s' * (minutes > 1)}{otherwise}"
    )
    error.retry_after_s = max(1.0, wait_s)
    return error


def _account(db: sqlite3.Connection, name: str) -> sqlite3.Row:
    check_name(name, "therapist")
    row: sqlite3.Row | None = db.execute("SELECT id FROM therapists WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound("unknown_name", f"no therapist {name!r}; `tadbot admin list` shows them all")
    return row
