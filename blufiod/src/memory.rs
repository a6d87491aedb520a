//! The daemon's view of its own memory: resident set size from `/proc/self/statm`, bytes
//! allocated through jemalloc, and whether the configured limit is under pressure.
//!
//! This module measures and judges; the agent refuses new turns under pressure, and the status
//! RPC reports the numbers. It never frees or kills anything.

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

    /// Whether the resident set is above `pressure_percent` of the limit.
    pub fn under_pressure(&self, config: &MemoryConfig) -> bool {
        self.limit_bytes > 0
            && u128::from(self.rss_bytes) * 100 > u128::from(self.limit_bytes) * u128::from(config.pressure_percent)
    }
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
