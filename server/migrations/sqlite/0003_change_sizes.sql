-- The encoded size of each change, so that the change log can be compacted by bytes as well
-- as by count (changes written before this migration count as 0).
ALTER TABLE changes ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
