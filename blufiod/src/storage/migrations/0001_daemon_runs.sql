-- Each start of the daemon, so that an unclean end (crash, SIGKILL, power loss) is visible at the
-- next start and in `blufioctl status`.
CREATE TABLE daemon_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    pid         INTEGER NOT NULL,
    version     TEXT    NOT NULL,
    started_at  INTEGER NOT NULL, -- unix seconds
    stopped_at  INTEGER           -- unix seconds; NULL while running or after an unclean end
);
