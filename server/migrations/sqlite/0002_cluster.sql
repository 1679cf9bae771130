-- The identity of this control plane's store: created once, shared by every replica on the same
-- database, stamped on every Docker object (label minicloud.dev/cluster) so that several
-- minicloud installations can share one Docker engine without touching each other's containers.
CREATE TABLE cluster (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id TEXT NOT NULL
);
