-- The newest event activity (a new event or a repeat) is found without reading the table:
-- clients that show events ask for it to know when to read them again.
CREATE INDEX events_by_last_time ON events (last_time);
