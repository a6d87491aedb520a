//! The database's footprint on disk, for the doctor's deep checks: free space against what the
//! database and a backup need (`disk`), and how fast the database grows (`growth`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::health::Finding;

/// Room kept free beside the database and its backups, for the WAL's growth and the logs.
const DISK_HEADROOM: u64 = 64 * 1024 * 1024;

/// The doctor's deep `disk` check: free space in the state directory against what the database
/// and a backup of it need (the snapshot and, for a scheduled backup, the archive beside it).
pub fn disk_finding(state_dir: &Path, database: &Path) -> Finding {
    let stat = match nix::sys::statvfs::statvfs(state_dir) {
        Ok(stat) => stat,
        Err(error) => {
            return Finding::fail(
                format!("cannot read the free space of {}: {error}", state_dir.display()),
                "check that the state directory exists and is readable",
            );
        }
    };
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let size = database_bytes(database);
    let need = size.saturating_mul(2).saturating_add(DISK_HEADROOM);
    let mib = |bytes: u64| bytes / (1024 * 1024);
    let said = format!(
        "{} MiB free in {}; the database is {} MiB, and a backup needs about {} MiB more",
        mib(free),
        state_dir.display(),
        mib(size),
        mib(need)
    );
    if free < need {
        Finding::fail(
            said,
            "free space there, or point backup.dir at another disk; a full disk stops every write",
        )
    } else if free < need.saturating_mul(2) {
        Finding::warn(
            said,
            "free space there before it runs out; `blufioctl sessions prune` drops old sessions",
        )
    } else {
        Finding::ok(said)
    }
}

/// The database and its WAL, in bytes (0 for a file that is missing).
fn database_bytes(database: &Path) -> u64 {
    let size_of = |path: &Path| std::fs::metadata(path).map_or(0, |metadata| metadata.len());
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    size_of(database) + size_of(Path::new(&wal))
}

/// One look at the database's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When.
    pub at: SystemTime,
    /// The database and its WAL, bytes.
    pub bytes: u64,
}

/// The `growth` check: the database's size at start, against which later sizes are measured.
/// Kept in memory only: after a restart the rate is measured anew.
#[derive(Debug, Clone)]
pub struct Growth {
    database: PathBuf,
    state_dir: PathBuf,
    first: Sample,
}

impl Growth {
    /// Takes the first sample now.
    pub fn start(state_dir: &Path, database: &Path) -> Self {
        Self {
            database: database.to_owned(),
            state_dir: state_dir.to_owned(),
            first: Sample {
                at: SystemTime::now(),
                bytes: database_bytes(database),
            },
        }
    }

    /// The database's size and growth since start, and how long the free space lasts at that
    /// rate.
    pub fn finding(&self) -> Finding {
        let now = Sample {
            at: SystemTime::now(),
            bytes: database_bytes(&self.database),
        };
        let free = nix::sys::statvfs::statvfs(&self.state_dir)
            .map(|stat| stat.blocks_available().saturating_mul(stat.fragment_size()))
            .ok();
        growth_verdict(self.first, now, free)
    }
}

/// Growth is measured over at least this long: a turn's few pages are not a trend.
const GROWTH_WINDOW_SECS: f64 = 3600.0;

/// The verdict on growth from `first` to `now`, with `free` bytes left on the state directory's
/// file system: a warning when the free space lasts under 30 days at this rate, a failure under 7.
pub fn growth_verdict(first: Sample, now: Sample, free: Option<u64>) -> Finding {
    #[allow(clippy::cast_precision_loss, reason = "sizes far below 2^52 bytes")]
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let running = now.at.duration_since(first.at).unwrap_or_default().as_secs_f64();
    let size = format!("the database is {:.1} MiB", mib(now.bytes));
    if running < GROWTH_WINDOW_SECS {
        return Finding::ok(format!(
            "{size}; its growth is measured after an hour of running ({} min so far, counted from this start)",
            (running / 60.0).floor()
        ));
    }
    let days = running / 86_400.0;
    let grown = now.bytes.saturating_sub(first.bytes);
    if grown == 0 {
        return Finding::ok(format!("{size}, not grown in the {:.1} days since this start", days));
    }
    let per_day = mib(grown) / days;
    let said = format!(
        "{size}, growing {per_day:.2} MiB a day (over {:.1} days since this start)",
        days
    );
    let Some(free) = free else {
        return Finding::ok(said);
    };
    let lasts = mib(free) / per_day;
    let said = format!("{said}; the free space lasts {lasts:.0} days at this rate");
    let hint =
        "free space, lower agent.session_retention_days, or `blufioctl sessions prune`; a full disk stops every write";
    if lasts < 7.0 {
        Finding::fail(said, hint)
    } else if lasts < 30.0 {
        Finding::warn(said, hint)
    } else {
        Finding::ok(said)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::Level;

    const MIB: u64 = 1024 * 1024;

    fn sample(hours: u64, mib: u64) -> Sample {
        Sample {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(hours * 3600),
            bytes: mib * MIB,
        }
    }

    #[test]
    fn growth_is_judged_by_how_long_the_free_space_lasts() {
        let start = sample(0, 100);
        let early = growth_verdict(start, sample(0, 150), Some(MIB));
        assert_eq!(early.level, Level::Ok);
        assert!(early.detail.contains("measured after an hour"), "{}", early.detail);

        // 10 MiB a day over two days.
        let steady = growth_verdict(start, sample(48, 120), Some(1000 * MIB));
        assert_eq!(steady.level, Level::Ok);
        assert!(
            steady.detail.contains("growing 10.00 MiB a day") && steady.detail.contains("lasts 100 days"),
            "{}",
            steady.detail
        );
        assert_eq!(
            growth_verdict(start, sample(48, 120), Some(200 * MIB)).level,
            Level::Warn
        );
        let filling = growth_verdict(start, sample(48, 120), Some(50 * MIB));
        assert_eq!(filling.level, Level::Fail);
        assert!(filling.hint.as_deref().unwrap_or_default().contains("sessions prune"));
        assert_eq!(
            growth_verdict(start, sample(48, 100), Some(0)).level,
            Level::Ok,
            "not growing"
        );
        assert_eq!(
            growth_verdict(start, sample(48, 120), None).level,
            Level::Ok,
            "free space unknown"
        );
    }

    #[test]
    fn the_size_counts_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("blufio.db");
        std::fs::write(&database, vec![0; 1000]).unwrap();
        std::fs::write(dir.path().join("blufio.db-wal"), vec![0; 24]).unwrap();
        assert_eq!(database_bytes(&database), 1024);
        assert_eq!(database_bytes(&dir.path().join("missing.db")), 0);
    }
}
