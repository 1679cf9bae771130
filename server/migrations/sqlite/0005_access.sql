-- API tokens (only their SHA-256 is kept) and the audit log.
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    namespace TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    last_used_at TEXT,
    revoked_at TEXT
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    request_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    verb TEXT NOT NULL,
    resource TEXT NOT NULL,
    namespace TEXT,
    name TEXT,
    code BIGINT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (time);
