-- Conversations, their messages, the turns that produced them, and the cost ledger.

CREATE TABLE sessions (
    id          TEXT    PRIMARY KEY,          -- UUIDv7
    title       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,             -- unix seconds
    updated_at  INTEGER NOT NULL,
    model       TEXT    NOT NULL DEFAULT '',  -- model of the latest turn
    state       TEXT    NOT NULL DEFAULT 'idle' CHECK (state IN ('idle', 'running', 'interrupted'))
);
CREATE INDEX sessions_by_update ON sessions (updated_at DESC, id DESC);

CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- total order of all messages
    id          TEXT    NOT NULL UNIQUE,
    session_id  TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn_id     TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    content     TEXT    NOT NULL,                  -- JSON array of content blocks
    created_at  INTEGER NOT NULL
);
CREATE INDEX messages_by_session ON messages (session_id, seq);

CREATE TABLE turns (
    id                   TEXT    PRIMARY KEY,
    session_id           TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    inbound_message_id   TEXT    NOT NULL,
    state                TEXT    NOT NULL CHECK (state IN ('running', 'completed', 'failed', 'cancelled', 'interrupted')),
    error                TEXT,
    started_at           INTEGER NOT NULL,
    finished_at          INTEGER
);
CREATE INDEX turns_running ON turns (state) WHERE state = 'running';

-- One row per provider call. No foreign key: spending outlives deleted sessions.
CREATE TABLE ledger (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    at                     INTEGER NOT NULL,  -- unix seconds
    day                    TEXT    NOT NULL,  -- YYYY-MM-DD, UTC
    month                  TEXT    NOT NULL,  -- YYYY-MM, UTC
    session_id             TEXT    NOT NULL,
    turn_id                TEXT    NOT NULL,
    provider               TEXT    NOT NULL,
    model                  TEXT    NOT NULL,
    input_tokens           INTEGER NOT NULL,
    output_tokens          INTEGER NOT NULL,
    cache_creation_tokens  INTEGER NOT NULL,
    cache_read_tokens      INTEGER NOT NULL,
    cost_micros            INTEGER NOT NULL,  -- millionths of a US dollar
    status                 TEXT    NOT NULL CHECK (status IN ('ok', 'failed'))
);
CREATE INDEX ledger_by_day ON ledger (day);
CREATE INDEX ledger_by_month ON ledger (month);
CREATE INDEX ledger_by_session ON ledger (session_id);
