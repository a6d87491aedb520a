//! The daemon's view of its own memory: resident set size from `/proc/self/statm`, bytes
//! allocated through jemalloc, and whether the configured limit is under pressure.
//!
//! This module measures and judges; the agent refuses new turns under pressure, and the status
//! RPC and `/ready` report it. What it frees is only the allocator's own cache of pages: jemalloc
//! runs a background thread that returns unused pages to the system on its decay schedule even
//! when the daemon is idle, and [`release`] returns them at once after large transient work. It
//! never kills anything.

use crate::config::MemoryConfig;

/// A measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Bytes allocated through the allocator (0 when it cannot be read).
    pub allocated_bytes: u64,
    /// The configured limit in bytes (0: none).
    pub limit_bytes: u64,
}

impl MemoryUse {
    /// Measures now, against `config`.
    pub fn now(config: &MemoryConfig) -> Self {
        Self {
            rss_bytes: rss_bytes().unwrap_or(0),
            allocated_bytes: allocated_bytes().unwrap_or(0),
            limit_bytes: config.limit_mib.saturating_mul(1024 * 1024),
        }
    }

    /// Measures now; when that is under pressure, returns the allocator's unused pages to the
    /// system first and measures again, so that pages a past burst left behind never count.
    ///
    /// The purge runs at most once per [`PURGE_INTERVAL`]: under sustained pressure every turn,
    /// `/ready` and status call measures, and a purge walks every arena.
    pub fn check(config: &MemoryConfig) -> Self {
        let used = Self::now(config);
        if used.under_pressure(config) && purge_due() {
            release();
            return Self::now(config);
        }
        used
    }

    /// Whether the resident set is above three quarters of the pressure threshold.
    pub fn near_pressure(&self, config: &MemoryConfig) -> bool {
        self.limit_bytes > 0
            && u128::from(self.rss_bytes) * 100 * 4
                > u128::from(self.limit_bytes) * u128::from(config.pressure_percent) * 3
    }

    /// Whether the resident set is above `pressure_percent` of the limit.
    pub fn under_pressure(&self, config: &MemoryConfig) -> bool {
        self.limit_bytes > 0
            && u128::from(self.rss_bytes) * 100 > u128::from(self.limit_bytes) * u128::from(config.pressure_percent)
    }
}

/// Starts jemalloc's background purging thread, so that pages freed after a burst go back to the
/// system on jemalloc's decay schedule (10 s) even when no allocation happens afterwards. Without
/// it, purging only runs inside allocation calls, and an idle daemon keeps the pages of its last
/// burst resident indefinitely.
pub fn start_background_purge() {
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(%error, "cannot start jemalloc's background thread; freed memory returns to the system only when the daemon allocates");
    }
}

/// Returns every unused dirty page of every arena to the system now. Call after large transient
/// work (a big document parsed for a client) and when memory is under pressure.
pub fn release() {
    // MALLCTL_ARENAS_ALL: the pseudo-index that addresses every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    #[allow(unsafe_code)] // reason: the one mallctl without a safe wrapper in tikv-jemalloc-ctl
    // SAFETY: `arena.<i>.purge` takes no input and produces no output, so all four pointer
    // arguments are null/zero as jemalloc requires; the name is NUL-terminated.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        tracing::debug!(status, "jemalloc purge failed");
    }
}

/// Refuses, while the daemon runs, a memory limit whose pressure threshold is already below what
/// the daemon uses: every turn would be refused at once and for ever. (A file that starts the
/// daemon under pressure is the owner's choice; status and `/ready` then say so.)
pub fn register_live_check(live: &crate::config::LiveConfig) {
    live.on_check("memory", |new| {
        let memory = &new.config.memory;
        let used = MemoryUse::check(memory);
        if !used.under_pressure(memory) {
            return Ok(());
        }
        let mib = |bytes: u64| bytes.div_ceil(1024 * 1024);
        let needed = (u128::from(used.rss_bytes) * 100).div_ceil(u128::from(memory.pressure_percent.max(1)));
        Err(format!(
            "memory.limit_mib = {} at memory.pressure_percent = {} puts the pressure threshold below the {} MiB blufiod uses now, so every turn would be refused; set memory.limit_mib to at least {}, or 0 for no limit",
            memory.limit_mib,
            memory.pressure_percent,
            mib(used.rss_bytes),
            mib(u64::try_from(needed).unwrap_or(u64::MAX)) + 1
        ))
    });
}

/// Registers the memory check: fails while the resident set is above the pressure threshold.
pub fn register_checks(health: &crate::health::Health, config: crate::config::ConfigHandle) {
    health.register(
        crate::health::Check::new("memory", move || {
            let memory = config.get().config.memory.clone();
            async move {
                let used = MemoryUse::check(&memory);
                let detail = format!(
                    "{} MiB resident of a {} MiB limit",
                    used.rss_bytes / (1024 * 1024),
                    memory.limit_mib
                );
                if used.under_pressure(&memory) {
                    crate::health::Finding::fail(
                        detail,
                        "new turns are refused until memory falls; raise memory.limit_mib if this persists",
                    )
                } else if used.near_pressure(&memory) {
                    crate::health::Finding::warn(
                        detail,
                        "memory is near the pressure threshold; raise memory.limit_mib if this persists",
                    )
                } else {
                    crate::health::Finding::ok(detail)
                }
            }
        })
        .readiness("the daemon is over its memory limit and refuses new turns"),
    );
}

/// How often [`watch`] measures.
const WATCH_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// Measures every few seconds until `token` is cancelled, and announces each change of the
/// pressure state once: a log line and an event.
pub async fn watch(
    config: crate::config::ConfigHandle,
    events: std::sync::Arc<crate::events::EventBus>,
    token: tokio_util::sync::CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let mut under = false;
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(WATCH_TICK) => {}
        }
        let memory = config.get().config.memory.clone();
        let used = MemoryUse::check(&memory);
        let now = used.under_pressure(&memory);
        if now != under {
            under = now;
            if now {
                tracing::warn!(
                    rss_mib = used.rss_bytes / (1024 * 1024),
                    limit_mib = memory.limit_mib,
                    "memory under pressure: new turns are refused"
                );
            } else {
                tracing::info!(
                    rss_mib = used.rss_bytes / (1024 * 1024),
                    "memory back under the pressure threshold"
                );
            }
            events.publish(crate::events::Event::MemoryPressureChanged {
                under_pressure: now,
                rss_bytes: used.rss_bytes,
            });
        }
    }
}

/// The shortest time between two purges that [`MemoryUse::check`] starts.
const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a pressure purge may run now (and, if so, records that it does).
fn purge_due() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Milliseconds since the process's first call, + 1 so that 0 means "never".
    static LAST_PURGE: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = u64::try_from(START.get_or_init(std::time::Instant::now).elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let last = LAST_PURGE.load(Ordering::Relaxed);
    let interval = u64::try_from(PURGE_INTERVAL.as_millis()).unwrap_or(u64::MAX);
    (last == 0 || now.saturating_sub(last) >= interval)
        && LAST_PURGE
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Resident set size from `/proc/self/statm` (second field, in pages).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page_size).ok()?)
}

/// jemalloc's count of allocated bytes (refreshed by advancing its statistics epoch).
fn allocated_bytes() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    u64::try_from(tikv_jemalloc_ctl::stats::allocated::read().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_returns_freed_pages() {
        let before = rss_bytes().unwrap();
        let mut blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1024 * 1024]).collect();
        blocks.iter_mut().for_each(|block| block[0] = 2);
        let peak = rss_bytes().unwrap();
        drop(blocks);
        release();
        let after = rss_bytes().unwrap();
        assert!(
            peak > before + 32 * 1024 * 1024,
            "the blocks were resident: {before} -> {peak}"
        );
        assert!(
            after < peak - 32 * 1024 * 1024,
            "the freed pages left the resident set: {peak} -> {after}"
        );
    }

    #[test]
    fn measures_this_process_and_judges_pressure() {
        let config = MemoryConfig {
            limit_mib: 1,
            pressure_percent: 90,
        };
        let used = MemoryUse::now(&config);
        assert!(
            used.rss_bytes > 1024 * 1024,
            "a test process uses more than 1 MiB: {used:?}"
        );
        assert_eq!(used.limit_bytes, 1024 * 1024);
        assert!(used.under_pressure(&config));
        let roomy = MemoryConfig {
            limit_mib: 1024 * 1024,
            pressure_percent: 90,
        };
        assert!(!MemoryUse::now(&roomy).under_pressure(&roomy));
        let unlimited = MemoryConfig {
            limit_mib: 0,
            pressure_percent: 90,
        };
        assert!(!MemoryUse::now(&unlimited).under_pressure(&unlimited));
    }
}
