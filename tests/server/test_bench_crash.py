"""`tadbot bench crash` on the tiny GGUF: the server killed mid-turn loses no acknowledged turn, and the check
that says so finds a turn the record lost."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from server.bench.crash_checks import check_acknowledged
from server.bench.crash_turns import Acknowledged
from server.records.store import Records
from tests.conftest import tadbot


def test_bench_crash_kills_the_server_and_loses_no_acknowledged_turn(tiny_gguf: Path, tmp_path: Path) -> None:
    config = tmp_path / "tadbot.toml"
    config.write_text("", encoding="utf-8")
    env = {**os.environ, "TADBOT_CONFIG": str(config), "TADBOT_MODELS_DIR": str(tmp_path / "models")}
    args = ("--model", str(tiny_gguf), "--max-tokens", "24", "--threads", "1")
    done = tadbot("bench", "crash", "--kills", "3", "--seed", "1", *args, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kills"] == 3 and report["passed"] is True, report
    assert sum(report["kill_points"].values()) == sum(report["kills_by"].values()) == 3
    assert report["turns_acknowledged"] > 0
    assert report["acknowledged_lost"] == 0
    for check in ("integrity", "chromadb_open", "health", "restart", "resend"):
        assert report[f"{check}_failures"] == 0, report["failures"]
    assert report["memory_items"] > 0, "chromadb was opened but held nothing: the turns never reached it"
    assert not (tmp_path / "models").exists(), "--model must not build the tiny model"


def test_a_turn_the_record_lost_or_changed_is_found(tmp_path: Path) -> None:
    records = Records(tmp_path / "tadbot.sqlite3")
    session = records.start_session("bench", None)
    acknowledged = []
    for index, said in enumerate(("I keep worrying about the harbour.", "The lighthouse helps a little.")):
        key = f"key-{index}"
        records.add_turn(session, "user", said, {}, key=key)
        reply = ("Breathe in slowly.", "Let it pass.")
        turn_id = records.add_turn(
            session, "assistant", " ".join(reply), {}, source="llm", sentences=[{"text": s} for s in reply]
        )
        acknowledged.append(Acknowledged(session, key, said, turn_id, "llm", reply))
    database = records.path
    assert check_acknowledged(database, acknowledged) == []

    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM turns WHERE id = ?", (acknowledged[0].turn_id,))
        db.execute("UPDATE turns SET text = 'something else' WHERE idempotency_key = 'key-1'")
    problems = check_acknowledged(database, acknowledged)
    assert [problem.turn for problem in problems] == [(session, "key-0"), (session, "key-1")]
    assert "recorded None" in problems[0].detail and "something else" in problems[1].detail
