"""A second opinion on crisis, by meaning: the labelled examples nearest to what was said.

Rules catch the ways of saying it that someone wrote down; people find others ("tonight is the night",
"my last night on earth"). The nearest labelled examples, by all-MiniLM-L6-v2 embeddings, catch many of
those. They only ever add a crisis the rules missed, and never overrule a reading the rules made (an
idiom, a negation, someone else's story, the past). The examples and their thresholds are data
(`data/crisis_examples.csv`, versioned by its first line, and `[neighbours]` in `data/crisis.toml`).

Both the examples and what was said are embedded in one plain form (`canonical`): lower case, no
punctuation at the ends, no fillers or openers (`[neighbours]` in `data/crisis.toml`). The same words
must get the same reading whether Whisper wrote "Um, I see no reason to go on living." or someone typed
"i see no reason to go on living".

The examples' embeddings take a few seconds to compute (longer on a Pi), so they are cached beside the
other server data, keyed by the plain texts and the model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.datafiles import DataFile
from server.errors import ConfigError
from server.safety.crisis import RULES_VERSION
from server.safety.plain import lowered

_LOGGER = logging.getLogger(__name__)
_SOURCE = "server/data/crisis_examples.csv"
VERSION = 1
"""The layout of crisis_examples.csv this code reads (its first line, `# version: 1`)."""
_CODE = "safety_rules_invalid"
_RECENT = 256
"""Plain forms whose embeddings are kept: a turn's n-best hypotheses, read again for sound-alikes, often
differ only in what the plain form drops."""


@dataclass(frozen=True)
class Nearest:
    crisis: bool
    """Whether the neighbours vote crisis."""
    example: str
    """The closest crisis example, for the therapist to see why."""
    similarity: float


class CrisisExamples:
    def __init__(
        self,
        embedder: Any,
        labels: list[str],
        texts: list[str],
        *,
        k: int,
        share: float,
        min_similarity: float,
        fillers: tuple[str, ...] = (),
        openers: tuple[str, ...] = (),
        cache_dir: Path | None = None,
    ) -> None:
        if not texts or len(labels) != len(texts) or k < 1:
            raise ConfigError("safety_rules_invalid", f"{_SOURCE}: no examples, or k < 1")
        self._embedder = embedder
        self._texts = texts
        self._fillers, self._openers = frozenset(fillers), frozenset(openers)
        self._keys = [self.canonical(t) for t in texts]
        self._crisis = np.array([label == "crisis" for label in labels])
        self._k, self._share, self._min_similarity = k, share, min_similarity
        self._vectors = self._embed_examples(cache_dir)
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_lock = threading.Lock()

    @classmethod
    def load(cls, embedder: Any, cache_dir: Path | None = None) -> CrisisExamples:
        settings = DataFile("server/data/crisis.toml", RULES_VERSION, _CODE, _neighbours).load()
        labels, texts = DataFile(_SOURCE, VERSION, _CODE, _examples).load()
        return cls(embedder, labels, texts, cache_dir=cache_dir, **settings)

    def __len__(self) -> int:
        """How many labelled examples there are (`tadbot doctor` reports it)."""
        return len(self._texts)

    def canonical(self, text: str) -> str:
        """`text` as it is embedded: lower case, straight quotes, no fillers, no words that only open the
        utterance ("honestly", "so" before the rest), and no punctuation at its ends. Commas inside stay:
        the examples' readings were measured with them, and they mark where a thought turns."""
        words = [w for w in lowered(text).split() if w.strip(_EDGES) not in self._fillers]
        while words[1:] and words[0].strip(_EDGES) in self._openers:
            words.pop(0)
        return " ".join(words).strip(_EDGES)

    def nearest(self, text: str, *, skip_identical: bool = False) -> Nearest:
        """`skip_identical` leaves out an example with the same words: for evaluating on the examples."""
        key = self.canonical(text)
        query = self._query(key)
        similarity = self._vectors @ query
        order = [int(i) for i in np.argsort(-similarity)]
        if skip_identical:
            order = [i for i in order if self._keys[i] != key]
        near = order[: self._k]
        crisis = [i for i in near if self._crisis[i]]
        best = max(crisis, key=lambda i: similarity[i]) if crisis else near[0]
        vote = len(crisis) / len(near) >= self._share and bool(crisis)
        alike = float(similarity[best])
        return Nearest(vote and alike >= self._min_similarity, self._texts[best], round(alike, 3))

    def _query(self, key: str) -> np.ndarray:
        with self._recent_lock:
            if key in self._recent:
                self._recent.move_to_end(key)
                return self._recent[key]
        query: np.ndarray = self._unit(self._embedder.embed([key]))[0]
        with self._recent_lock:
            self._recent[key] = query
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
        return query

    def _embed_examples(self, cache_dir: Path | None) -> np.ndarray:
        digest = hashlib.sha256("\n".join(self._keys).encode("utf-8"))
        digest.update(str(self._embedder.get_config()).encode("utf-8"))
        cached = cache_dir / f"crisis-examples-{digest.hexdigest()[:16]}.npy" if cache_dir else None
        if cached is not None and cached.is_file():
            vectors: np.ndarray = np.load(cached)
            if vectors.shape[0] == len(self._texts):
                return vectors
        vectors = self._unit(self._embedder.embed(self._keys))
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, vectors)
            except OSError as exc:
                _LOGGER.warning("could not cache the crisis examples' embeddings in %s: %s", cached, exc)
        _LOGGER.info("embedded %d crisis examples", len(self._texts))
        return vectors

    @staticmethod
    def _unit(vectors: Any) -> np.ndarray:
        array = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        result: np.ndarray = array / np.maximum(norms, 1e-12)
        return result


_EDGES = " .,;:!?…\"'-"
"""Punctuation that only dresses an utterance or a filler word, stripped where it does."""


def _neighbours(document: dict[str, Any]) -> dict[str, Any]:
    """crisis.toml's [neighbours], as CrisisExamples' keyword arguments."""
    settings = document["neighbours"]
    return {
        "k": int(settings["k"]),
        "share": float(settings["share"]),
        "min_similarity": float(settings["min_similarity"]),
        "fillers": tuple(str(word) for word in settings.get("fillers", [])),
        "openers": tuple(str(word) for word in settings.get("openers", [])),
    }


def _examples(document: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The labels and texts of crisis_examples.csv's rows."""
    rows = document["rows"]
    return [r["label"] for r in rows], [r["text"] for r in rows]
