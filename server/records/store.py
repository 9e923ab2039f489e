"""The therapist's record: SQLite in WAL mode, readable SQL, committed before anything is acknowledged.

`Records` is the one object the server holds on it, made of the parts each concern reads and writes
(server/records/database.py opens the file and each call's connection); the device and therapist tokens
stored in it are made and hashed here.
"""

from __future__ import annotations

import hashlib
import secrets

from server.records.conversation import ConversationRecords
from server.records.therapist import TherapistRecords
from server.records.turns import TurnRecords

TOKEN_PREFIX = "tdb_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are 256-bit random, so a plain SHA-256 is enough; only the hash is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Records(TurnRecords, ConversationRecords, TherapistRecords):
    """Sessions, turns and what the model reads of them, and the therapist's view, on one SQLite file."""
