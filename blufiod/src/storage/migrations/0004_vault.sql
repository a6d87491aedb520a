-- The secrets vault. Entries are sealed under a random data key; each slot holds that data key
-- sealed under a key-encryption key that is never stored here (a systemd credential, a key
-- file, or a passphrase through Argon2id), with the salt and parameters to derive it again and
-- a key check value that recognises the right key before anything is opened or changed.
-- 'current' opens the vault; 'pending' is a rekey waiting for its key to be put in place.
CREATE TABLE vault_slots (
    slot          TEXT    PRIMARY KEY CHECK (slot IN ('current', 'pending')),
    source        TEXT    NOT NULL,
    kdf           TEXT    NOT NULL CHECK (kdf IN ('hkdf-sha256', 'argon2id')),
    m_cost_kib    INTEGER,
    t_cost        INTEGER,
    p_cost        INTEGER,
    salt          BLOB    NOT NULL,
    check_value   BLOB    NOT NULL,
    nonce         BLOB    NOT NULL,
    wrapped_key   BLOB    NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE vault_entries (
    name          TEXT    PRIMARY KEY,
    nonce         BLOB    NOT NULL,
    ciphertext    BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_used_at  INTEGER
);
