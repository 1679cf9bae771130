-- A scratch row readiness writes (and deletes in the same transaction) to learn whether the
-- store can take writes again after one failed (disk full, I/O).
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY,
    filler TEXT NOT NULL
);
