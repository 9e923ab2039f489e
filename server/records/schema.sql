-- TADBot records. Audio and images are never stored: only text, timings and emotion scores.
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY,
    pseudonym TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

-- Devices and therapists hold one bearer token each (its SHA-256; rotating replaces it). A revoked or
-- expired one is refused; columns after created_at are added by database.py to older data dirs too.
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    last_seen REAL
);

CREATE TABLE IF NOT EXISTS therapists (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    last_seen REAL,
    role TEXT NOT NULL DEFAULT 'therapist',
    -- argon2id, for the dashboard's login; null: this account has no password and logs in by token only.
    password_hash TEXT,
    -- A base32 TOTP secret when the second factor is on, and the last time step used (no replays).
    totp_secret TEXT,
    totp_last INTEGER
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
-- turns_by_key, UNIQUE (session_id, idempotency_key), is made in database.py once a data dir from an
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

-- Who may do what. A device opens sessions only for the clients it is enrolled for; a therapist (or an
-- admin, a therapists row with role 'admin') reads only the clients assigned to them.
CREATE TABLE IF NOT EXISTS enrollments (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    client_id INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    PRIMARY KEY (device_id, client_id)
);

CREATE TABLE IF NOT EXISTS assignments (
    therapist_id INTEGER NOT NULL REFERENCES therapists (id) ON DELETE CASCADE,
    client_id INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    PRIMARY KEY (therapist_id, client_id)
);

-- A dashboard login: the cookie holds a random id, stored here only as its hash, with the form token.
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash TEXT PRIMARY KEY,
    therapist_id INTEGER NOT NULL REFERENCES therapists (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL,
    seen_at REAL NOT NULL
);

-- Every login attempt, for lockout and rate limits: the name tried (known or not) and the address.
CREATE TABLE IF NOT EXISTS login_attempts (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    ok INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS login_attempts_by_name ON login_attempts (name, t);
CREATE INDEX IF NOT EXISTS login_attempts_by_address ON login_attempts (address, t);

-- Which sessions a therapist has opened, so the dashboard can mark the unread ones.
CREATE TABLE IF NOT EXISTS session_reads (
    therapist_id INTEGER NOT NULL REFERENCES therapists (id) ON DELETE CASCADE,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    t REAL NOT NULL,
    PRIMARY KEY (therapist_id, session_id)
);
