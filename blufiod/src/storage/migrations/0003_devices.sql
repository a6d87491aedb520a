-- Devices whose Ed25519 keys may sign gateway requests. Revoked rows stay, for the record.
CREATE TABLE devices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    keyid         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    public_key    BLOB    NOT NULL CHECK (length(public_key) = 32),
    fingerprint   TEXT    NOT NULL,
    added_at      INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE UNIQUE INDEX devices_active_name ON devices (name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX devices_active_keyid ON devices (keyid) WHERE revoked_at IS NULL;
