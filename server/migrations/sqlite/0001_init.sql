-- The store's tables (SQLite). Keep in step with migrations/postgres.

-- One row: the global revision (every write takes the next one) and the oldest revision
-- still in the change log.
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL,
    compacted_revision BIGINT NOT NULL
);
INSERT INTO meta (id, revision, compacted_revision) VALUES (1, 0, 0);

-- Current objects; body is the whole object as JSON.
CREATE TABLE objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL UNIQUE,
    revision BIGINT NOT NULL,
    owners TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);

-- Every change, by revision, for watches. Compacted from the oldest end.
CREATE TABLE changes (
    revision BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    change_type TEXT NOT NULL,
    body TEXT NOT NULL
);

-- Events per object, repeats folded into a count.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    event_type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_time TEXT NOT NULL,
    last_time TEXT NOT NULL
);
CREATE INDEX events_by_uid ON events (uid);
CREATE INDEX events_by_namespace ON events (namespace, id);
