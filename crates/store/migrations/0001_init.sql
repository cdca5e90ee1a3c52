-- Ember's initial schema. Portable SQL only: it must run unchanged on SQLite and PostgreSQL
-- (TEXT, BIGINT, BOOLEAN; no AUTOINCREMENT, no SQLite-only types or functions).

CREATE TABLE accounts (
    account_id  TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    is_admin    BOOLEAN NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE access_keys (
    access_key_id      TEXT PRIMARY KEY,
    secret_access_key  TEXT NOT NULL,
    account_id         TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    created_at         TEXT NOT NULL
);

CREATE TABLE functions (
    account_id            TEXT NOT NULL REFERENCES accounts (account_id),
    name                  TEXT NOT NULL,
    runtime               TEXT,
    role                  TEXT NOT NULL,
    handler               TEXT,
    description           TEXT NOT NULL,
    timeout_s             BIGINT NOT NULL,
    memory_mb             BIGINT NOT NULL,
    ephemeral_mb          BIGINT NOT NULL,
    environment           TEXT NOT NULL,
    architectures         TEXT NOT NULL,
    package_type          TEXT NOT NULL,
    code_sha256           TEXT NOT NULL,
    code_size             BIGINT NOT NULL,
    revision_id           TEXT NOT NULL,
    last_modified         TEXT NOT NULL,
    reserved_concurrency  BIGINT,
    PRIMARY KEY (account_id, name)
);

CREATE INDEX functions_by_code ON functions (code_sha256);

CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
