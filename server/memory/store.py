"""Per-client vector memory of past turns and session summaries, kept in an embedded chromadb.

The conversation engine recalls what a client said in earlier sessions so the companion can
refer back to it. Everything stays on this machine: telemetry is off, and the embedding
function is the caller's offline embedder, so chromadb never fetches its default ONNX model.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import pathlib
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from server.errors import MemoryStoreError, TadbotError

if TYPE_CHECKING:
    from server.memory.embedding import MiniLMEmbedder

_LOGGER = logging.getLogger(__name__)

COLLECTION = "memories"
_OVERFETCH = 3
"""Recall asks chromadb for k * _OVERFETCH hits so that k remain after dropping repeated texts."""
_FILTER_BATCH = 500
"""Session ids per `$in` filter, well under SQLite's limit on bound values."""


@dataclasses.dataclass(frozen=True)
class Recollection:
    """One remembered turn or summary, with its cosine distance to the query (0 = same meaning)."""

    text: str
    role: str
    session_id: str
    kind: str
    ts: float
    distance: float


M_PERTURB = -6
"""glibc's mallopt option that fills memory as it is allocated and as it is freed."""


@functools.cache
def wipe_heap_reuse() -> bool:
    """Have glibc overwrite memory when it is freed and when it is handed out again.

    chromadb writes its HNSW index file (data_level0.bin) from a buffer of 100 slots that malloc does not
    clear, whatever of it is still unused included. A privacy scan found a freed upload there: the bytes of
    a multipart request with its WAV, on disk. With this, what lands in those slots is a fill pattern,
    never an old buffer. Process-wide and once; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_PERTURB, 0xA5))


class Memory:
    """The `memories` collection: one document per turn or summary, tagged with client and session."""

    def __init__(self, path: pathlib.Path, embedder: MiniLMEmbedder) -> None:
        import chromadb
        from chromadb.config import Settings
        from chromadb.utils.embedding_functions import register_embedding_function

        wipe_heap_reuse()
        try:
            # chromadb rebuilds the collection's embedding function from its persisted name on every
            # add, and warns where the name is unknown; its docs ask custom functions to register.
            register_embedding_function(type(embedder))
            path.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(
                path=str(path), settings=Settings(anonymized_telemetry=False, allow_reset=False)
            )
            self._collection = self._client.get_or_create_collection(
                name=COLLECTION,
                embedding_function=embedder,  # type: ignore[arg-type]
                configuration={"hnsw": {"space": "cosine"}},
            )
            self._max_batch = self._client.get_max_batch_size()
        except Exception as exc:
            raise _store_error("open", exc) from exc
        self.embedder = embedder
        """Shared with the crisis check's second opinion: one copy of the model in memory."""
        _LOGGER.info("Memory opened at %s: %d items", path, self.count())

    def add(
        self, *, client: str, session_id: str, role: str, text: str, kind: str = "turn", ts: float
    ) -> str:
        """Store one text and return its id; `kind` is "turn" or "summary"."""
        item_id = uuid.uuid4().hex
        metadata: dict[str, str | float] = {
            "client": client,
            "session_id": session_id,
            "role": role,
            "kind": kind,
            "ts": ts,
        }
        try:
            self._collection.add(ids=[item_id], documents=[text], metadatas=[metadata])
        except TadbotError:
            raise
        except Exception as exc:
            raise _store_error("add", exc) from exc
        return item_id

    def recall(
        self,
        *,
        client: str,
        query: str,
        k: int,
        exclude_session: str | None = None,
        max_distance: float | None = None,
        roles: tuple[str, ...] = (),
    ) -> list[Recollection]:
        """Return up to k of this client's memories closest to `query`, nearest first, each text once.

        `exclude_session` leaves out the session in progress: its turns are already in the prompt.
        `roles` keeps only those roles, e.g. what the person said and the summaries, not the replies.
        """
        if k <= 0 or not query.strip():
            return []
        conditions: list[dict[str, Any]] = [{"client": client}]
        if exclude_session is not None:
            conditions.append({"session_id": {"$ne": exclude_session}})
        if roles:
            conditions.append({"role": {"$in": list(roles)}})
        where: Any = conditions[0] if len(conditions) == 1 else {"$and": conditions}
        started = time.perf_counter()
        try:
            # chromadb returns fewer hits, without complaint, when fewer items match the filter.
            result = self._collection.query(
                query_texts=[query],
                n_results=k * _OVERFETCH,
                where=where,
                include=["documents", "metadatas", "distances"],
            )
        except TadbotError:
            raise
        except Exception as exc:
            raise _store_error("recall", exc) from exc
        found: list[Recollection] = []
        seen: set[str] = set()
        documents = (result["documents"] or [[]])[0]
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        for text, meta, distance in zip(documents, metadatas, distances, strict=True):
            key = " ".join(text.split()).casefold()
            if key in seen or (max_distance is not None and distance > max_distance):
                continue
            seen.add(key)
            found.append(
                Recollection(
                    text=text,
                    role=str(meta["role"]),
                    session_id=str(meta["session_id"]),
                    kind=str(meta["kind"]),
                    ts=float(meta["ts"]),  # type: ignore[arg-type]
                    distance=float(distance),
                )
            )
            if len(found) == k:
                break
        _LOGGER.debug(
            "Recall for %s: %d of %d hits kept in %.1f ms",
            client,
            len(found),
            len(documents),
            (time.perf_counter() - started) * 1000,
        )
        return found

    def forget_client(self, client: str) -> int:
        """Delete everything remembered about a client (the right to erasure); returns how many items went."""
        try:
            ids = self._collection.get(where={"client": client}, include=[])["ids"]
            for start in range(0, len(ids), self._max_batch):
                self._collection.delete(ids=ids[start : start + self._max_batch])
        except Exception as exc:
            raise _store_error("forget", exc) from exc
        _LOGGER.info("Forgot client %s: %d memories deleted", client, len(ids))
        return len(ids)

    def forget_sessions(self, session_ids: Iterable[str], *, dry_run: bool = False) -> int:
        """Delete the turns and summaries of these sessions (retention), by metadata filter; returns how many.

        `dry_run` only counts. Session ids are unique across clients, so no client filter is needed.
        """
        wanted = sorted(set(session_ids))
        total = 0
        try:
            for start in range(0, len(wanted), _FILTER_BATCH):
                where: Any = {"session_id": {"$in": wanted[start : start + _FILTER_BATCH]}}
                total += len(self._collection.get(where=where, include=[])["ids"])
                if not dry_run:
                    self._collection.delete(where=where)
        except Exception as exc:
            raise _store_error("forget sessions", exc) from exc
        return total

    def sessions_before(self, ts: float) -> set[str]:
        """Sessions with a memory written before `ts`; a purge looks here for what an interrupted one left."""
        where: Any = {"ts": {"$lt": ts}}
        try:
            found = self._collection.get(where=where, include=["metadatas"])
        except Exception as exc:
            raise _store_error("list sessions", exc) from exc
        return {str(meta["session_id"]) for meta in found["metadatas"] or []}

    def count(self, client: str | None = None) -> int:
        """How many items are stored, for one client or in all."""
        try:
            if client is None:
                return self._collection.count()
            return len(self._collection.get(where={"client": client}, include=[])["ids"])
        except Exception as exc:
            raise _store_error("count", exc) from exc


def _store_error(action: str, exc: Exception) -> MemoryStoreError:
    """chromadb raises many exception types (its own, ValueError, sqlite3, Rust bindings); callers get one.

    The cause goes to the log, not into the message, which may reach an HTTP client.
    """
    _LOGGER.error("Memory %s failed: %s: %s", action, type(exc).__name__, exc)
    return MemoryStoreError(
        "memory_unavailable",
        f"The vector memory failed to {action}; see the server log, check the data dir and its free space.",
    )
