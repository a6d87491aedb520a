//! The memory monitor: measures the daemon's own memory and acts on two thresholds of the
//! configured limit (`memory.limit_mib`), so that blufiod never grows into the OOM killer.
//!
//! - **warn** (`memory.warn_percent`, 75 % by default): return jemalloc's dirty pages to the system
//!   and shed what the daemon caches. Each cache registers how to shrink itself with
//!   [`Monitor::on_shed`] (idle session locks, the provider's HTTP connection pool, the rate
//!   limiter's idle keys, SQLite's page caches). The replay cache never registers: forgetting a
//!   nonce early would let a captured request be replayed.
//! - **limit** (`memory.pressure_percent`, 90 % by default): refuse new turns and sessions (the
//!   transports map the refusal to 503 with `Retry-After` and `RESOURCE_EXHAUSTED`), let turns
//!   in flight finish, and fail the readiness check.
//!
//! The level is measured on the resident set (what the kernel's OOM killer and cgroups count) at
//! every admission and every few seconds by [`watch`]. A level is left only after falling
//! [`HYSTERESIS_PERCENT`] below its threshold, so that a daemon hovering near a threshold does
//! not flap. Each transition is logged once, published on the event bus and shown
//! by the `blufio_memory_pressure` gauge. The monitor never aborts or kills anything.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{ConfigHandle, MemoryConfig};
use crate::events::{Event, EventBus};

/// How far below a threshold memory must fall before its level is left, in percent of the
/// threshold (of the threshold, not of the limit: a threshold set low keeps a margin below it).
pub const HYSTERESIS_PERCENT: u64 = 5;

/// How often [`watch`] measures.
const WATCH_TICK: Duration = Duration::from_secs(2);

/// A measurement younger than this is reused: admission runs for every turn.
const MEASURE_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest time between two sheddings while memory stays at or above the warn level: a
/// purge walks every arena, and caches refill only with traffic.
const SHED_INTERVAL: Duration = Duration::from_secs(10);

/// The pressure level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Below the warn threshold.
    Normal,
    /// At or above the warn threshold: caches are shed.
    Warn,
    /// At or above the limit threshold: new turns and sessions are refused.
    Limit,
}

impl Pressure {
    /// A stable name: `normal`, `warn` or `limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Warn => "warn",
            Self::Limit => "limit",
        }
    }

    /// The gauge value: 0, 1 or 2.
    fn gauge(self) -> f64 {
        match self {
            Self::Normal => 0.0,
            Self::Warn => 1.0,
            Self::Limit => 2.0,
        }
    }
}

/// One measurement of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUse {
    /// Resident set size in bytes (`/proc/self/statm`).
    pub rss_bytes: u64,
    /// Bytes the program holds through jemalloc (0 when it cannot be read).
    pub heap_bytes: u64,
    /// Bytes of jemalloc's pages that are resident: the heap plus the allocator's own overhead
    /// and its not yet returned dirty pages.
    pub allocator_resident_bytes: u64,
}

impl MemoryUse {
    /// Measures now.
    pub fn now() -> Self {
        let (heap_bytes, allocator_resident_bytes) = allocator_bytes().unwrap_or_default();
        Self {
            rss_bytes: rss_bytes().unwrap_or(0),
            heap_bytes,
            allocator_resident_bytes,
        }
    }
}

/// The two thresholds of a configuration, in bytes (both 0 when there is no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The configured limit.
    pub limit_bytes: u64,
    /// Where shedding starts.
    pub warn_bytes: u64,
    /// Where new turns are refused.
    pub refuse_bytes: u64,
}

impl Thresholds {
    /// The thresholds of `config`.
    pub fn of(config: &MemoryConfig) -> Self {
        let limit_bytes = config.limit_mib.saturating_mul(1024 * 1024);
        let percent =
            |percent: u64| u64::try_from(u128::from(limit_bytes) * u128::from(percent) / 100).unwrap_or(u64::MAX);
        Self {
            limit_bytes,
            warn_bytes: percent(u64::from(config.warn_percent.min(config.pressure_percent))),
            refuse_bytes: percent(u64::from(config.pressure_percent)),
        }
    }

    /// The level `rss` reaches from `current`: a level is entered at its threshold and left only
    /// [`HYSTERESIS_PERCENT`] below it.
    pub fn level(&self, current: Pressure, rss: u64) -> Pressure {
        if self.limit_bytes == 0 {
            return Pressure::Normal;
        }
        let holds = |level: Pressure, threshold: u64| {
            let margin = u64::try_from(u128::from(threshold) * u128::from(HYSTERESIS_PERCENT) / 100).unwrap_or(0);
            rss >= threshold || (current >= level && rss >= threshold - margin)
        };
        if holds(Pressure::Limit, self.refuse_bytes) {
            Pressure::Limit
        } else if holds(Pressure::Warn, self.warn_bytes) {
            Pressure::Warn
        } else {
            Pressure::Normal
        }
    }
}

/// What the monitor last saw, for status, `/ready`, doctor and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The measurement.
    pub used: MemoryUse,
    /// The thresholds it was judged against.
    pub thresholds: Thresholds,
    /// The level.
    pub pressure: Pressure,
    /// How long the level has held (since start when it never changed).
    pub since: Duration,
}

/// Refused because memory is at the limit level.
#[derive(Debug, Clone, Copy)]
pub struct AtLimit {
    /// The resident set in MiB.
    pub rss_mib: u64,
    /// The configured limit in MiB.
    pub limit_mib: u64,
}

/// A cache that can give memory back: its name (for the log) and how to shrink it, returning how
/// many entries it dropped.
struct Shedder {
    name: &'static str,
    shed: Box<dyn Fn() -> usize + Send + Sync>,
}

/// The monitor. Made once by the root and shared.
pub struct Monitor {
    config: ConfigHandle,
    events: Arc<EventBus>,
    state: Mutex<State>,
    shedders: Mutex<Vec<Shedder>>,
}

struct State {
    pressure: Pressure,
    changed: Instant,
    measured: Option<(Instant, MemoryUse)>,
    shed: Option<Instant>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Monitor")
            .field("pressure", &self.state.lock().expect("memory state poisoned").pressure)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor judging against the live `config`, announcing transitions on `events`.
    pub fn new(config: ConfigHandle, events: Arc<EventBus>) -> Arc<Self> {
        Arc::new(Self {
            config,
            events,
            state: Mutex::new(State {
                pressure: Pressure::Normal,
                changed: Instant::now(),
                measured: None,
                shed: None,
            }),
            shedders: Mutex::new(Vec::new()),
        })
    }

    /// Registers a cache to shrink at the warn level. `shed` returns how many entries it dropped;
    /// it must be quick and must not wait on anything a turn holds for long.
    pub fn on_shed(&self, name: &'static str, shed: impl Fn() -> usize + Send + Sync + 'static) {
        self.shedders.lock().expect("shedders poisoned").push(Shedder {
            name,
            shed: Box::new(shed),
        });
    }

    /// Measures (or reuses a measurement younger than [`MEASURE_INTERVAL`]), moves to the level
    /// it reaches, and sheds when at or above warn and a shedding is due.
    pub fn observe(&self) -> Reading {
        let thresholds = Thresholds::of(&self.config.get().config.memory);
        let now = Instant::now();
        let mut state = self.state.lock().expect("memory state poisoned");
        let mut used = match state.measured {
            Some((at, used)) if now.duration_since(at) < MEASURE_INTERVAL => used,
            _ => {
                let used = MemoryUse::now();
                state.measured = Some((now, used));
                used
            }
        };
        let mut pressure = thresholds.level(state.pressure, used.rss_bytes);
        if pressure >= Pressure::Warn && state.shed.is_none_or(|at| now.duration_since(at) >= SHED_INTERVAL) {
            state.shed = Some(now);
            self.shed(&used);
            used = MemoryUse::now();
            state.measured = Some((now, used));
            pressure = thresholds.level(state.pressure, used.rss_bytes);
        }
        if pressure != state.pressure {
            let from = state.pressure;
            state.pressure = pressure;
            state.changed = now;
            self.announce(from, pressure, &used, &thresholds);
        }
        Reading {
            used,
            thresholds,
            pressure,
            since: now.duration_since(state.changed),
        }
    }

    /// Whether a new turn or session may start: not at the limit level.
    pub fn admit(&self) -> Result<(), AtLimit> {
        let reading = self.observe();
        if reading.pressure == Pressure::Limit {
            return Err(AtLimit {
                rss_mib: reading.used.rss_bytes / (1024 * 1024),
                limit_mib: reading.thresholds.limit_bytes / (1024 * 1024),
            });
        }
        Ok(())
    }

    /// Returns the allocator's unused pages and shrinks every registered cache.
    fn shed(&self, before: &MemoryUse) {
        let shedders = self.shedders.lock().expect("shedders poisoned");
        let dropped: Vec<String> = shedders
            .iter()
            .map(|shedder| format!("{}={}", shedder.name, (shedder.shed)()))
            .collect();
        drop(shedders);
        release();
        let after = MemoryUse::now();
        tracing::info!(
            rss_before_kib = before.rss_bytes / 1024,
            rss_after_kib = after.rss_bytes / 1024,
            dropped = %dropped.join(" "),
            "memory above the warn threshold: caches shed and free pages returned"
        );
    }

    fn announce(&self, from: Pressure, to: Pressure, used: &MemoryUse, thresholds: &Thresholds) {
        let rss_mib = used.rss_bytes / (1024 * 1024);
        let limit_mib = thresholds.limit_bytes / (1024 * 1024);
        match to {
            Pressure::Limit => tracing::warn!(
                rss_mib,
                limit_mib,
                "memory at the limit threshold: new turns and sessions are refused until it falls"
            ),
            Pressure::Warn if from == Pressure::Normal => {
                tracing::warn!(rss_mib, limit_mib, "memory above the warn threshold: caches are shed")
            }
            Pressure::Warn => tracing::info!(
                rss_mib,
                limit_mib,
                "memory back under the limit threshold: new turns are accepted again; caches are still shed"
            ),
            Pressure::Normal if from == Pressure::Limit => tracing::info!(
                rss_mib,
                limit_mib,
                "memory back to normal: new turns are accepted again"
            ),
            Pressure::Normal => tracing::info!(rss_mib, limit_mib, "memory back to normal"),
        }
        self.events.publish(Event::MemoryPressureChanged {
            level: to.as_str(),
            rss_bytes: used.rss_bytes,
        });
    }

    /// Registers the memory gauges, measured at each scrape.
    pub fn register_metrics(self: &Arc<Self>, metrics: &crate::metrics::Metrics) {
        let monitor = Arc::downgrade(self);
        metrics.register_scraped(
            &[
                ("memory_rss_bytes", "Resident set size of blufiod in bytes."),
                ("memory_heap_bytes", "Bytes allocated through jemalloc."),
                (
                    "memory_resident_bytes",
                    "Bytes of jemalloc's pages that are resident (heap plus allocator overhead).",
                ),
                ("memory_limit_bytes", "The configured memory limit in bytes (0: none)."),
                (
                    "memory_warn_bytes",
                    "Resident size at which caches are shed, in bytes (0: no limit).",
                ),
                (
                    "memory_refuse_bytes",
                    "Resident size at which new turns are refused, in bytes (0: no limit).",
                ),
                ("memory_pressure", "Memory pressure: 0 normal, 1 warn, 2 limit."),
            ],
            move || {
                let reading = monitor.upgrade()?.observe();
                Some(vec![
                    reading.used.rss_bytes as f64,
                    reading.used.heap_bytes as f64,
                    reading.used.allocator_resident_bytes as f64,
                    reading.thresholds.limit_bytes as f64,
                    reading.thresholds.warn_bytes as f64,
                    reading.thresholds.refuse_bytes as f64,
                    reading.pressure.gauge(),
                ])
            },
        );
    }

    /// Registers the memory check: warns at the warn level, fails (and fails readiness) at the
    /// limit level.
    pub fn register_checks(self: &Arc<Self>, health: &crate::health::Health) {
        let monitor = self.clone();
        health.register(
            crate::health::Check::new("memory", move || {
                let reading = monitor.observe();
                async move { finding(&reading) }
            })
            .readiness("the daemon is at its memory limit and refuses new turns"),
        );
    }

    /// Refuses, while the daemon runs, a change of `[memory]` that lowers the refuse threshold
    /// below what the daemon uses: every turn would be refused at once. Other changes (and
    /// `[memory]` changes that keep or raise the threshold) pass even at the limit, so that
    /// pressure never keeps the owner from changing anything else. (A file that starts the
    /// daemon over its limit is the owner's choice; status and `/ready` then say so.)
    pub fn register_live_check(self: &Arc<Self>, live: &crate::config::LiveConfig) {
        let monitor = Arc::downgrade(self);
        live.on_check("memory", move |new| {
            let memory = &new.config.memory;
            let thresholds = Thresholds::of(memory);
            let Some(monitor) = monitor.upgrade() else { return Ok(()) };
            let now = Thresholds::of(&monitor.config.get().config.memory);
            let stricter = thresholds.limit_bytes != 0
                && (now.limit_bytes == 0 || thresholds.refuse_bytes < now.refuse_bytes);
            if !stricter {
                return Ok(());
            }
            // Measure after returning free pages, so that pages a past burst left behind never
            // count against the new limit.
            release();
            let used = MemoryUse::now();
            if thresholds.level(Pressure::Normal, used.rss_bytes) < Pressure::Limit {
                return Ok(());
            }
            let mib = |bytes: u64| bytes.div_ceil(1024 * 1024);
            let needed = (u128::from(used.rss_bytes) * 100).div_ceil(u128::from(memory.pressure_percent.max(1)));
            Err(format!(
                "memory.limit_mib = {} at memory.pressure_percent = {} puts the refuse threshold below the {} MiB blufiod uses now, so every turn would be refused; set memory.limit_mib to at least {}, or 0 for no limit",
                memory.limit_mib,
                memory.pressure_percent,
                mib(used.rss_bytes),
                mib(u64::try_from(needed).unwrap_or(u64::MAX)) + 1
            ))
        });
    }
}

/// The health finding of a reading.
fn finding(reading: &Reading) -> crate::health::Finding {
    let mib = |bytes: u64| bytes / (1024 * 1024);
    let thresholds = &reading.thresholds;
    if thresholds.limit_bytes == 0 {
        return crate::health::Finding::ok(format!("{} MiB resident, no limit", mib(reading.used.rss_bytes)));
    }
    let detail = format!(
        "{} MiB resident of a {} MiB limit (warn at {} MiB, refuse at {} MiB); {} for {} s",
        mib(reading.used.rss_bytes),
        mib(thresholds.limit_bytes),
        mib(thresholds.warn_bytes),
        mib(thresholds.refuse_bytes),
        reading.pressure.as_str(),
        reading.since.as_secs()
    );
    match reading.pressure {
        Pressure::Limit => crate::health::Finding::fail(
            detail,
            "new turns are refused until memory falls; raise memory.limit_mib if this persists",
        ),
        Pressure::Warn => {
            crate::health::Finding::warn(detail, "caches are being shed; raise memory.limit_mib if this persists")
        }
        Pressure::Normal => crate::health::Finding::ok(detail),
    }
}

/// Measures every [`WATCH_TICK`] until `token` is cancelled, so that transitions (and shedding)
/// happen even when no turn arrives.
pub async fn watch(
    monitor: Arc<Monitor>,
    token: tokio_util::sync::CancellationToken,
) -> Result<(), std::convert::Infallible> {
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(WATCH_TICK) => {}
        }
        monitor.observe();
    }
}

/// jemalloc's options, read before `main` (the `malloc_conf` symbol of the prefixed build;
/// `_RJEM_MALLOC_CONF` in the environment still overrides them, for measuring others). Chosen
/// with `cargo xtask bench memory --turns 20000` on the release build (docs/benchmarks.md,
/// 2026-11-30), against jemalloc's defaults:
///
/// - `narenas:1` (default: 4 per CPU, 8 here): idle RSS 16.0 against 16.6 MiB, the peak with 100
///   open signed streams 28.0 against 29.2 MiB, after 20,000 turns 26.7 against 29.0 MiB and no
///   growth from 2,000 to 20,000 turns (-0.06 against +0.69 MiB), 7 threads against 10, and the
///   same turn rate (462 against 455 turns/s): blufiod's few threads do not contend for one arena.
///   `narenas:2` measured in between (16.2, 28.3, 27.8 MiB; +0.82 MiB).
/// - jemalloc's default thread cache and decay stay: `tcache_max:4096` kept 1.5 MiB less after
///   the turns (25.2 MiB) and `dirty_decay_ms:1000,muzzy_decay_ms:0` 2.3 MiB less (24.4 MiB),
///   but they ran 389 and 371 turns/s against 462: a footprint the warn level sheds anyway is
///   not worth a fifth of the throughput.
/// - `background_thread:true`: pages freed after a burst go back to the system on jemalloc's
///   decay schedule even when the daemon then idles; without it purging runs only inside
///   allocation calls, and an idle daemon keeps the pages of its last burst.
#[allow(unsafe_code, non_upper_case_globals)] // reason: jemalloc reads this C symbol by name
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> = {
    const OPTIONS: &std::ffi::CStr = c"narenas:1,background_thread:true";
    // SAFETY: a NUL-terminated string with static lifetime, read by jemalloc as `const char *`.
    Some(unsafe { &*OPTIONS.as_ptr() })
};

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

/// Resident set size from `/proc/self/statm` (second field, in pages).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page_size).ok()?)
}

/// jemalloc's allocated and resident byte counts (refreshed by advancing its statistics epoch).
fn allocator_bytes() -> Option<(u64, u64)> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    let allocated = u64::try_from(tikv_jemalloc_ctl::stats::allocated::read().ok()?).ok()?;
    let resident = u64::try_from(tikv_jemalloc_ctl::stats::resident::read().ok()?).ok()?;
    Some((allocated, resident))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(limit_mib: u64) -> MemoryConfig {
        MemoryConfig {
            limit_mib,
            warn_percent: 75,
            pressure_percent: 90,
        }
    }

    #[test]
    fn release_returns_freed_pages() {
        // The resident set is the whole test process's, and other tests allocate and free beside
        // this one (a vault test's 19 MiB of Argon2, for example): a try that saw them move is
        // repeated, and one clean try out of five must show the pages come and go.
        let mut tries = Vec::new();
        for _ in 0..5 {
            let before = rss_bytes().unwrap();
            let mut blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1024 * 1024]).collect();
            blocks.iter_mut().for_each(|block| block[0] = 2);
            let peak = rss_bytes().unwrap();
            drop(blocks);
            release();
            let after = rss_bytes().unwrap();
            if peak > before + 32 * 1024 * 1024 && after < peak - 32 * 1024 * 1024 {
                return;
            }
            tries.push((before, peak, after));
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("the blocks' pages did not come and go (before, peak, after): {tries:?}");
    }

    #[test]
    fn jemalloc_runs_with_the_chosen_options() {
        // (`arenas.narenas` counts one more: jemalloc's own arena for huge allocations.)
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 1);
        assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
    }

    #[test]
    fn measures_this_process() {
        let used = MemoryUse::now();
        assert!(
            used.rss_bytes > 1024 * 1024,
            "a test process uses more than 1 MiB: {used:?}"
        );
        assert!(used.heap_bytes > 0, "jemalloc is the allocator: {used:?}");
        assert!(used.allocator_resident_bytes >= used.heap_bytes / 2, "{used:?}");
    }

    #[test]
    fn levels_enter_at_their_threshold_and_leave_below_the_margin() {
        const MIB: u64 = 1024 * 1024;
        let thresholds = Thresholds::of(&config(100));
        assert_eq!(thresholds.warn_bytes, 75 * MIB);
        assert_eq!(thresholds.refuse_bytes, 90 * MIB);
        use Pressure::{Limit, Normal, Warn};
        // Margins: 5 % of 75 MiB is 3.75 MiB, of 90 MiB 4.5 MiB.
        for (from, rss_kib, to) in [
            (Normal, 74 * 1024, Normal),
            (Normal, 75 * 1024, Warn),
            (Normal, 95 * 1024, Limit),
            (Warn, 89 * 1024, Warn),
            (Warn, 72 * 1024, Warn),
            (Warn, 71 * 1024, Normal),
            (Warn, 90 * 1024, Limit),
            (Limit, 86 * 1024, Limit),
            (Limit, 85 * 1024 + 512, Limit),
            (Limit, 85 * 1024, Warn),
            (Limit, 72 * 1024, Warn),
            (Limit, 71 * 1024, Normal),
        ] {
            assert_eq!(
                thresholds.level(from, rss_kib * 1024),
                to,
                "from {from:?} at {rss_kib} KiB"
            );
        }
        // A threshold set far below the limit keeps a margin of its own size, never the whole
        // threshold: the level can still be left.
        let low = Thresholds::of(&MemoryConfig {
            limit_mib: 8192,
            warn_percent: 75,
            pressure_percent: 1,
        });
        assert_eq!(low.level(Limit, 32 * MIB), Normal);
        let unlimited = Thresholds::of(&config(0));
        assert_eq!(unlimited.level(Limit, u64::MAX), Normal, "no limit, no pressure");
    }

    #[test]
    fn a_caller_asking_more_often_than_the_interval_still_sees_fresh_measurements() {
        let handle = ConfigHandle::new(crate::config::Loaded::for_tests(crate::config::Config {
            memory: config(0),
            ..crate::config::Config::default()
        }));
        let monitor = Monitor::new(handle, EventBus::new());
        let first = monitor.observe().used.rss_bytes;
        let blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1024 * 1024]).collect();
        let mut seen = first;
        let deadline = Instant::now() + 4 * MEASURE_INTERVAL;
        while Instant::now() < deadline {
            seen = monitor.observe().used.rss_bytes;
            std::thread::sleep(MEASURE_INTERVAL / 3);
        }
        assert!(
            seen > first + 32 * 1024 * 1024,
            "64 MiB touched since the first measurement: {first} -> {seen}"
        );
        drop(blocks);
    }

    #[tokio::test]
    async fn a_monitor_sheds_refuses_and_announces_each_transition_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let with_limit = |limit_mib| {
            crate::config::Loaded::for_tests(crate::config::Config {
                memory: config(limit_mib),
                ..crate::config::Config::default()
            })
        };
        let handle = ConfigHandle::new(with_limit(1));
        let bus = EventBus::new();
        let mut events = bus.subscribe();
        let monitor = Monitor::new(handle.clone(), bus.clone());
        let shed = Arc::new(AtomicUsize::new(0));
        let counted = shed.clone();
        monitor.on_shed("test-cache", move || {
            counted.fetch_add(1, Ordering::Relaxed);
            3
        });
        // A test process is far above 90 % of 1 MiB.
        let refused = monitor.admit().unwrap_err();
        assert_eq!(refused.limit_mib, 1);
        assert!(refused.rss_mib >= 1, "{refused:?}");
        assert_eq!(shed.load(Ordering::Relaxed), 1, "entering warn sheds");
        let reading = monitor.observe();
        assert_eq!(reading.pressure, Pressure::Limit);
        assert_eq!(shed.load(Ordering::Relaxed), 1, "at most one shedding per interval");
        let event = events.next().await.unwrap();
        assert!(
            matches!(*event, Event::MemoryPressureChanged { level: "limit", rss_bytes } if rss_bytes > 0),
            "{event:?}"
        );
        assert_eq!(finding(&reading).level, crate::health::Level::Fail);

        handle.set_for_tests(with_limit(0));
        monitor.admit().expect("no limit admits");
        let event = events.next().await.unwrap();
        assert!(
            matches!(*event, Event::MemoryPressureChanged { level: "normal", .. }),
            "{event:?}"
        );
        monitor.observe();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), events.next())
                .await
                .is_err(),
            "a level that holds is not announced again"
        );
    }
}
