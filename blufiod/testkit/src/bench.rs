//! What the benchmark programs (`blufiod/benches/`, `cargo xtask bench`) share: their arguments,
//! a daemon set up for load against a fake provider, quantiles, a process's memory as the kernel
//! reports it, and least-squares slopes. Nothing here asserts a target.

use std::time::Duration;

use crate::{Daemon, DaemonOptions, new_dir};

/// The positional numbers on the command line (cargo bench adds flags such as `--bench`).
pub fn numbers() -> Vec<usize> {
    std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .filter_map(|arg| arg.parse().ok())
        .collect()
}

/// Config for a daemon under load against the fake provider at `provider_url`: every model free
/// and no budget caps (so no turn is refused), `slots` concurrent turns and as many queue places,
/// only warnings logged; `extra` is appended.
pub fn load_config(provider_url: &str, slots: usize, extra: &str) -> String {
    format!(
        "[log]\nlevel = \"warn\"\n\
         [provider]\nkind = \"anthropic\"\nbase_url = \"{provider_url}\"\napi_key = \"bench\"\nmodel = \"bench-model\"\n\
         [pricing.\"bench-model\"]\ninput = 0.0\noutput = 0.0\n[budget]\ndaily_usd = 0.0\nmonthly_usd = 0.0\n\
         [agent]\nmax_concurrent_turns = {0}\nmax_queued_turns = {0}\n{extra}",
        slots.max(1)
    )
}

/// Starts a daemon with [`load_config`] in a fresh temp dir and waits for `READY=1`. Its
/// binaries are those of the running benchmark's build (release, under `cargo bench`).
pub fn start_under_load(provider_url: &str, slots: usize, extra: &str) -> Daemon {
    Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: load_config(provider_url, slots, extra),
            ..DaemonOptions::default()
        },
    )
}

/// Stops a benchmark's daemon, echoes what it logged (warnings and errors only under
/// [`load_config`]), and panics unless it exited cleanly.
pub fn finish(mut daemon: Daemon) {
    let status = daemon.stop();
    eprint!("{}", daemon.stderr());
    assert!(status.success(), "blufiod exited with {status}");
}

/// The sample at `quantile` (0.0 to 1.0) of sorted samples, nearest rank, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// A process's memory and threads as `/proc/<pid>/status` and `/proc/<pid>/smaps_rollup` report
/// them, sizes in KiB.
///
/// Reading `smaps_rollup` (and `fd/`) of a process that is not dumpable, which `blufiod` makes
/// itself, needs root or `CAP_SYS_PTRACE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// `VmRSS`: resident set size.
    pub rss_kib: u64,
    /// `RssAnon`: the anonymous part of the resident set (heap, stacks, allocator caches).
    pub rss_anon_kib: u64,
    /// `RssFile`: the file-backed part (the binary's and libraries' pages).
    pub rss_file_kib: u64,
    /// `RssShmem`: the shared-memory part.
    pub rss_shmem_kib: u64,
    /// `VmHWM`: the kernel's own peak of the resident set since the process started.
    pub peak_rss_kib: u64,
    /// `Pss`: proportional set size (shared pages divided among their sharers).
    pub pss_kib: u64,
    /// `Pss_Anon`.
    pub pss_anon_kib: u64,
    /// `Pss_File`.
    pub pss_file_kib: u64,
    /// `Threads`.
    pub threads: u64,
    /// Open file descriptors (sockets included), counted in `/proc/<pid>/fd`.
    pub open_fds: u64,
}

impl ProcessMemory {
    /// Reads process `pid` now.
    pub fn of(pid: i32) -> std::io::Result<Self> {
        let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
        let status = std::fs::read_to_string(proc.join("status"))?;
        let rollup = std::fs::read_to_string(proc.join("smaps_rollup"))?;
        let open_fds = std::fs::read_dir(proc.join("fd"))?.count();
        Ok(Self {
            open_fds: u64::try_from(open_fds).unwrap_or(u64::MAX),
            ..Self::parse(&status, &rollup)
        })
    }

    /// The figures of a `status` and a `smaps_rollup` text (`open_fds` 0); a missing field is 0.
    pub fn parse(status: &str, smaps_rollup: &str) -> Self {
        let status_field = |name| field(status, name);
        let rollup_field = |name| field(smaps_rollup, name);
        Self {
            rss_kib: status_field("VmRSS"),
            rss_anon_kib: status_field("RssAnon"),
            rss_file_kib: status_field("RssFile"),
            rss_shmem_kib: status_field("RssShmem"),
            peak_rss_kib: status_field("VmHWM"),
            pss_kib: rollup_field("Pss"),
            pss_anon_kib: rollup_field("Pss_Anon"),
            pss_file_kib: rollup_field("Pss_File"),
            threads: status_field("Threads"),
            open_fds: 0,
        }
    }

    /// Each figure's maximum over `self` and `other`: the peak of a series of samples, column by
    /// column (the columns' maxima need not come from the same sample).
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        Self {
            rss_kib: self.rss_kib.max(other.rss_kib),
            rss_anon_kib: self.rss_anon_kib.max(other.rss_anon_kib),
            rss_file_kib: self.rss_file_kib.max(other.rss_file_kib),
            rss_shmem_kib: self.rss_shmem_kib.max(other.rss_shmem_kib),
            peak_rss_kib: self.peak_rss_kib.max(other.peak_rss_kib),
            pss_kib: self.pss_kib.max(other.pss_kib),
            pss_anon_kib: self.pss_anon_kib.max(other.pss_anon_kib),
            pss_file_kib: self.pss_file_kib.max(other.pss_file_kib),
            threads: self.threads.max(other.threads),
            open_fds: self.open_fds.max(other.open_fds),
        }
    }
}

/// The number after `name:` on its own line of a `/proc` text (`VmRSS:   1234 kB` → 1234).
fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

/// The least-squares slope of `points` (x, y), in units of y per unit of x; `None` for fewer than
/// two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let count = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / count;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / count;
    let covariance: f64 = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    let variance: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_memory_reads_status_and_smaps_rollup() {
        let status = "Name:\tblufiod\nVmHWM:\t   20480 kB\nVmRSS:\t   16384 kB\nRssAnon:\t    6144 kB\n\
                      RssFile:\t   10240 kB\nRssShmem:\t       0 kB\nThreads:\t7\n";
        let rollup = "55d0-7fff ---p 00000000 00:00 0  [rollup]\nRss:  16384 kB\nPss:  12000 kB\n\
                      Pss_Dirty:  6000 kB\nPss_Anon:  6100 kB\nPss_File:  5900 kB\nPss_Shmem:  0 kB\n";
        let read = ProcessMemory::parse(status, rollup);
        assert_eq!(
            read,
            ProcessMemory {
                rss_kib: 16384,
                rss_anon_kib: 6144,
                rss_file_kib: 10240,
                rss_shmem_kib: 0,
                peak_rss_kib: 20480,
                pss_kib: 12000,
                pss_anon_kib: 6100,
                pss_file_kib: 5900,
                threads: 7,
                open_fds: 0,
            }
        );
        let bigger = ProcessMemory {
            rss_kib: 20000,
            threads: 3,
            ..read
        };
        assert_eq!(read.max(bigger).rss_kib, 20000);
        assert_eq!(read.max(bigger).threads, 7);
    }

    #[test]
    fn process_memory_of_this_process_has_a_resident_set() {
        let this = ProcessMemory::of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(this.rss_kib > 0 && this.pss_kib > 0 && this.threads > 0 && this.open_fds > 0);
    }

    #[test]
    fn slope_is_the_least_squares_fit() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (f64::from(x), 3.0 * f64::from(x) + 1.0)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        // Up and down again: no slope.
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 2.0), (2.0, 2.0), (3.0, 1.0)]), Some(0.0));
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 7.0)]), None);
        assert_eq!(slope(&[]), None);
    }

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&samples, 0.0), 1.0);
        assert_eq!(quantile_ms(&samples, 0.5), 6.0);
        assert_eq!(quantile_ms(&samples, 0.9), 9.0);
        assert_eq!(quantile_ms(&samples, 1.0), 10.0);
    }
}
