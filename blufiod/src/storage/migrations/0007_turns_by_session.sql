-- A session's turns by the session. Deleting a session (`sessions delete`, `sessions prune`)
-- cascades to its turns, and without this index every cascade scanned the whole `turns` table:
-- pruning a thousand sessions from a year of turns read that year a thousand times. One more
-- index entry per turn, written once when the turn begins.
CREATE INDEX turns_by_session ON turns (session_id);
