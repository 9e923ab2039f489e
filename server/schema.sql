-- TADBot records. Audio and images are never stored: only text, timings and emotion scores.
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY,
    pseudonym TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS therapists (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    client_id INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    device_id INTEGER REFERENCES devices (id) ON DELETE SET NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    summary TEXT,
    -- The running summary of turns folded out of the prompt, and the last turn it covers.
    rolling_summary TEXT NOT NULL DEFAULT '',
    folded_through INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    timings TEXT NOT NULL DEFAULT '{}',
    -- The turn as the model saw it (with its notes) or wrote it, replayed so the cached prefix matches.
    prompt TEXT,
    -- A spoken turn: JSON {"engine", "avg_logprob", "words": [[word, probability], ...]}.
    confidence TEXT,
    -- The person's turn: the device's Idempotency-Key, so a repeat is answered from the record.
    idempotency_key TEXT,
    -- The turn a `done` event named: where the reply came from (null on a cut-off reply), and the
    -- sentence events as sent, JSON [{"text", "pause_ms"?}, ...], for a repeated key to replay.
    source TEXT,
    sentences TEXT
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, id);
-- turns_by_key, UNIQUE (session_id, idempotency_key), is made in records.py once a data dir from an
-- earlier version has the column.

CREATE TABLE IF NOT EXISTS emotion_samples (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    t REAL NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('turn', 'frame')),
    faces INTEGER NOT NULL,
    top3 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS emotions_by_session ON emotion_samples (session_id, t);

CREATE TABLE IF NOT EXISTS safety_events (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn_id INTEGER REFERENCES turns (id) ON DELETE CASCADE,
    t REAL NOT NULL,
    level TEXT NOT NULL,
    trigger TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    -- Which speech hypothesis raised it (1: the transcript) and, for another, its words.
    hypothesis INTEGER NOT NULL DEFAULT 1,
    heard_as TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS safety_by_turn ON safety_events (turn_id);

CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT ''
);
