-- Each message carries its turn's place in the order of turns (the turn's rowid), so that a
-- session's history is read in turn order from one index, with no join with `turns` and no sort:
-- at 400 messages that read took about a third of the time (docs/benchmarks.md, "Agent turns").
-- The new index also serves everything the old one did (a session's messages, their count, the
-- cascade of a session's deletion), so the number of indexes written per message is unchanged.
ALTER TABLE messages ADD COLUMN turn_seq INTEGER;
UPDATE messages SET turn_seq = (SELECT rowid FROM turns WHERE turns.id = messages.turn_id);
CREATE INDEX messages_by_session_turn ON messages (session_id, turn_seq, seq);
DROP INDEX messages_by_session;
