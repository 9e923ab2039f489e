"""Train/val/test by question, so that no question, nor a near-copy of it, is in two splits.

Two rows are the same question when their normalised texts are equal (lowercase, letters and digits only)
or their word sets overlap by a Jaccard similarity of at least 0.9: reposts that differ by a typo or a
sentence. Such near-duplicates are found exactly, without comparing every pair, by prefix filtering (two
sets this similar must share one of their few rarest words). A split group is then every question linked
to another through a duplicate or a shared source id (counsel-chat reuses some questionIDs for different
questions); each group goes wholly into one split.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")
JACCARD = 0.9
"""Word-set similarity from which two question texts count as one question."""

_NOT_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class Item:
    """What the split sees of one row: a counsel-chat answer row or a whole dialog."""

    question: str
    """The text near-duplicates are judged on: a question's title and text, a dialog's user turns."""
    links: tuple[str, ...] = ()
    """Source ids whose items must share a split (counsel-chat's questionID, prefixed by the source)."""
    split: str | None = None
    """The split the source gave it (train, val or test), if any."""


@dataclass(frozen=True)
class SplitResult:
    splits: list[str]
    """Per item, the split it goes to."""
    question_of: list[int]
    """Per item, its question: near-duplicates share the number."""
    stats: dict[str, int] = field(default_factory=dict)
    """Counts for the data card: merged duplicates, groups that straddled the given splits, moves."""


def normalise(text: str) -> str:
    """Lowercase words of letters and digits, one space apart."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def exact_key(text: str) -> str:
    """Equal for texts that differ only in case, punctuation and spacing ("self-harm" = "selfharm")."""
    return normalise(text).replace(" ", "")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def near_duplicates(texts: Sequence[str], threshold: float = JACCARD) -> list[int]:
    """Per text, the index of the first text of its cluster: equal normalised texts, or word sets with a
    Jaccard similarity of at least `threshold`, linked transitively."""
    found = _UnionFind(len(texts))
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        # A text with no letters or digits at all is like no other.
        found.union(i, first.setdefault(exact_key(text) or f"#{i}", i))
    words = {i: frozenset(normalise(texts[i]).split()) for i in first.values()}
    frequency = Counter(word for ws in words.values() for word in ws)
    index: dict[str, list[int]] = defaultdict(list)
    for i in sorted(words, key=lambda k: (len(words[k]), k)):
        ordered = sorted(words[i], key=lambda w: (frequency[w], w))
        if not ordered:
            continue
        # Sets with J >= t share a word among the rarest |x| - ceil(t|x|) + 1 of each (prefix filtering).
        prefix = len(ordered) - math.ceil(threshold * len(ordered) - 1e-9) + 1
        candidates: set[int] = set()
        for word in ordered[:prefix]:
            candidates.update(index[word])
            index[word].append(i)
        for j in candidates:
            if (
                len(words[j]) >= threshold * len(words[i]) - 1e-9
                and _jaccard(words[i], words[j]) >= threshold
            ):
                found.union(i, j)
    return [found.find(i) for i in range(len(texts))]


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


def assign_splits(
    items: Sequence[Item], *, val_fraction: float, test_fraction: float, seed: int
) -> SplitResult:
    """Each split group goes to the split most of its items were given (a tie goes to train). A split
    that no item was given (all of them, for a source without splits) is carved from the training groups
    by a seeded draw: `val_fraction` and `test_fraction` of all groups."""
    question_of = near_duplicates([item.question for item in items])
    groups = _UnionFind(len(items))
    by_link: dict[str, int] = {}
    for i, item in enumerate(items):
        groups.union(i, question_of[i])
        for link in item.links:
            groups.union(i, by_link.setdefault(link, i))
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        members[groups.find(i)].append(i)

    chosen: dict[int, str | None] = {}
    straddling = 0
    for root, indices in members.items():
        votes = Counter(items[i].split for i in indices if items[i].split)
        if len(votes) > 1:
            straddling += 1
        chosen[root] = max(SPLITS, key=lambda s: (votes[s], s == "train")) if votes else None

    given = {item.split for item in items if item.split}
    pool = sorted(root for root, split in chosen.items() if split in (None, "train"))
    random.Random(seed).shuffle(pool)
    carved = dict.fromkeys(SPLITS, 0)
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if split in given or fraction <= 0:
            continue
        wanted = min(max(1, round(fraction * len(members))), len(pool) - 1)
        take, pool = pool[:wanted], pool[wanted:]
        for root in take:
            chosen[root] = split
        carved[split] = len(take)
    splits = [chosen[groups.find(i)] or "train" for i in range(len(items))]

    moved = [i for i, item in enumerate(items) if item.split and item.split != splits[i]]
    clusters: dict[int, list[int]] = defaultdict(list)
    for i, q in enumerate(question_of):
        clusters[q].append(i)
    merged = sum(
        1
        for indices in clusters.values()
        if len({exact_key(items[i].question) for i in indices}) > 1
        or len({link for i in indices for link in items[i].links}) > 1
    )
    stats = {
        "questions": len(clusters),
        "split_groups": len(members),
        "duplicate_questions_merged": merged,
        "groups_joined_by_shared_ids": sum(
            1 for indices in members.values() if len({question_of[i] for i in indices}) > 1
        ),
        "groups_straddling_given_splits": straddling,
        "questions_moved": len({question_of[i] for i in moved}),
        "rows_moved": len(moved),
        "groups_carved_for_val": carved["val"],
        "groups_carved_for_test": carved["test"],
    }
    return SplitResult(splits, question_of, stats)
