-- Reviews close the loop: who reviewed (the operator's name, since floor
-- terminals share a login, and the client's uid), and a note (a rejection's
-- reason, or any remark). An answer may be reviewed again: reviews append,
-- and the newest review of an answer is the one in force.
ALTER TABLE reviews ADD COLUMN note TEXT;
ALTER TABLE reviews ADD COLUMN reviewer_uid INTEGER;
CREATE INDEX reviews_answer ON reviews(answer_id, id);

-- When a round last did something (created, stepped, paused, finished): the
-- scheduler tells a window that ran from one the box slept through.
ALTER TABLE runs ADD COLUMN active_at TEXT;
UPDATE runs SET active_at = coalesce(ended_at, started_at);
