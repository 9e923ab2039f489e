"""The chromadb vector memory: per-client recall by meaning, erasure, persistence, and no network."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from server.errors import MemoryStoreError
from server.memory.embedding import REQUIRED_FILES, MiniLMEmbedder
from server.memory.store import Memory, Recollection

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any outbound connection from Python code (telemetry, a model download) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def memory(tmp_path: Path, embedder: MiniLMEmbedder) -> Memory:
    return Memory(tmp_path / "memory", embedder)


def fill(memory: Memory) -> None:
    turns = [
        ("ana", "s1", "user", "I'm terrified of flying, even thinking about the plane makes me panic", 1.0),
        (
            "ana",
            "s1",
            "assistant",
            "Let's slow your breathing down together, in for four and out for six.",
            2.0,
        ),
        ("ana", "s2", "user", "I baked bread with my sister at the weekend", 3.0),
        ("ana", "s2", "user", "My boss criticised my report and I keep replaying it", 4.0),
        ("ben", "s9", "user", "Flying scares me, I panic on every plane trip", 5.0),
    ]
    for client, session, role, text, ts in turns:
        memory.add(client=client, session_id=session, role=role, text=text, ts=ts)


def test_recall_finds_the_related_turn_first(memory: Memory) -> None:
    fill(memory)
    found = memory.recall(client="ana", query="I have a flight tomorrow and I'm anxious", k=2)
    assert len(found) == 2
    first = found[0]
    assert first == Recollection(
        text="I'm terrified of flying, even thinking about the plane makes me panic",
        role="user",
        session_id="s1",
        kind="turn",
        ts=1.0,
        distance=first.distance,
    )
    assert 0.0 <= first.distance < found[1].distance


def test_recall_never_returns_another_clients_turns(memory: Memory) -> None:
    fill(memory)
    for client, query in (("ana", "panic on a plane"), ("ben", "baking bread with family")):
        found = memory.recall(client=client, query=query, k=10)
        own = 4 if client == "ana" else 1
        assert len(found) == own
        assert all((r.session_id == "s9") == (client == "ben") for r in found)
    assert memory.recall(client="nobody", query="panic on a plane", k=3) == []


def test_exclude_session_leaves_out_the_current_one(memory: Memory) -> None:
    fill(memory)
    found = memory.recall(client="ana", query="fear of flying", k=10, exclude_session="s1")
    assert {r.session_id for r in found} == {"s2"}
    assert len(found) == 2


def test_max_distance_drops_far_memories(memory: Memory) -> None:
    fill(memory)
    found = memory.recall(client="ana", query="fear of flying on planes", k=10, max_distance=0.5)
    assert [r.session_id for r in found] == ["s1"]
    assert all(r.distance <= 0.5 for r in found)


def test_recall_deduplicates_by_text(memory: Memory) -> None:
    for ts in (1.0, 2.0, 3.0):
        memory.add(client="ana", session_id=f"s{ts}", role="user", text="I keep worrying about money", ts=ts)
    memory.add(client="ana", session_id="s4", role="user", text="i keep  worrying about money ", ts=4.0)
    memory.add(client="ana", session_id="s5", role="user", text="Rent is due and I'm broke", ts=5.0)
    found = memory.recall(client="ana", query="money worries", k=3)
    assert [r.text for r in found] == ["I keep worrying about money", "Rent is due and I'm broke"]


def test_summaries_are_kept_with_their_kind(memory: Memory) -> None:
    memory.add(
        client="ana",
        session_id="s1",
        role="summary",
        text="Talked about fear of flying.",
        kind="summary",
        ts=9.0,
    )
    (found,) = memory.recall(client="ana", query="flying", k=1)
    assert (found.kind, found.role, found.ts) == ("summary", "summary", 9.0)


def test_nothing_to_recall(memory: Memory) -> None:
    assert memory.recall(client="ana", query="anything", k=3) == []
    fill(memory)
    assert memory.recall(client="ana", query="anything", k=0) == []
    assert memory.recall(client="ana", query="   ", k=3) == []


def test_forget_client_removes_everything_of_that_client_only(memory: Memory) -> None:
    fill(memory)
    assert (memory.count(), memory.count("ana"), memory.count("ben")) == (5, 4, 1)
    assert memory.forget_client("ana") == 4
    assert memory.count("ana") == 0
    assert memory.recall(client="ana", query="flying", k=5) == []
    assert memory.count("ben") == 1 and memory.count() == 1
    assert memory.forget_client("ana") == 0


def test_a_new_instance_on_the_same_path_remembers(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    fill(Memory(tmp_path / "memory", embedder))
    again = Memory(tmp_path / "memory", embedder)
    assert again.count("ana") == 4
    assert again.recall(client="ana", query="airplane fear", k=1)[0].session_id == "s1"


def test_a_new_process_remembers_and_can_add(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    """Disk, not chromadb's per-path cache in this process; and with warnings as errors, which catches
    chromadb failing to rebuild the embedding function it persisted by name."""
    fill(Memory(tmp_path / "memory", embedder))
    script = textwrap.dedent(
        f"""
        import pathlib
        from server.memory.embedding import MiniLMEmbedder
        from server.memory.store import Memory
        embedder = MiniLMEmbedder(pathlib.Path({str(embedder.model_dir)!r}))
        memory = Memory(pathlib.Path({str(tmp_path / "memory")!r}), embedder)
        memory.add(client="ana", session_id="s3", role="user", text="Still nervous about planes", ts=6.0)
        print(memory.count("ana"), memory.recall(client="ana", query="airplane fear", k=1)[0].session_id)
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "s1"]


def test_model_dir_recorded_by_chromadb_may_move(
    tmp_path: Path, model_dir: Path, embedder: MiniLMEmbedder
) -> None:
    """The collection records where the model was loaded from; a later run loading it elsewhere still adds."""
    elsewhere = tmp_path / "elsewhere"
    for name in REQUIRED_FILES:
        (elsewhere / name).parent.mkdir(parents=True, exist_ok=True)
        (elsewhere / name).symlink_to(model_dir / name)
    first = Memory(tmp_path / "memory", MiniLMEmbedder(elsewhere))
    first.add(client="ana", session_id="s1", role="user", text="Crowds make me dizzy", ts=1.0)
    del first
    gc.collect()
    for name in REQUIRED_FILES:
        (elsewhere / name).unlink()
    again = Memory(tmp_path / "memory", embedder)
    again.add(client="ana", session_id="s2", role="user", text="The supermarket was packed", ts=2.0)
    assert again.recall(client="ana", query="busy crowded places", k=2)[0].session_id in {"s1", "s2"}
    assert again.count("ana") == 2


def test_store_failures_become_memory_unavailable(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    not_a_dir = tmp_path / "memory"
    not_a_dir.write_text("a file where the store should be", encoding="utf-8")
    with pytest.raises(MemoryStoreError) as err:
        Memory(not_a_dir, embedder)
    assert err.value.code == "memory_unavailable"
    assert err.value.status == 503


def test_the_index_file_s_unused_slots_hold_a_fill_pattern_not_old_memory(
    memory: Memory, tmp_path: Path
) -> None:
    """chromadb writes its HNSW file with 100 slots whatever it holds; malloc does not clear them, and a
    freed upload was once found there. With the heap wiped, every unused slot is glibc's fill byte."""
    fill(memory)
    (index,) = (tmp_path / "memory").glob("*/data_level0.bin")
    unused = index.read_bytes()[-100_000:]
    assert set(unused) == {0xA5 ^ 0xFF}
