//! The systemd watchdog, fed by proof of progress rather than by a timer.
//!
//! Every half `WATCHDOG_USEC` the watchdog runs each liveness probe (the async runtime schedules
//! a task, the database writer answers, the control socket serves a health check) under a
//! deadline of that same half period. Only when every probe passes does it send `WATCHDOG=1`; a
//! stalled loop therefore stops the pings and systemd restarts the daemon. It never restarts or
//! repairs anything itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::health::Finding;

/// A boxed, sendable future: what a probe returns.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One liveness check.
pub struct Probe {
    /// Short name used in logs and status, for example `storage`.
    pub name: &'static str,
    /// Starts one check; the future resolves when the checked loop has answered.
    pub check: Box<dyn Fn() -> ProbeFuture + Send + Sync>,
}

impl Probe {
    /// A probe from a name and a closure that returns a future.
    pub fn new<F, Fut>(name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            check: Box::new(move || Box::pin(check())),
        }
    }
}

/// What the watchdog last saw, for `blufioctl status`.
#[derive(Debug, Clone, Default)]
pub struct WatchdogStatus {
    inner: Arc<Mutex<StatusInner>>,
}

#[derive(Debug, Default)]
struct StatusInner {
    interval: Option<Duration>,
    last_ping: Option<Instant>,
    last_failure: Option<String>,
}

impl WatchdogStatus {
    /// A one-line description.
    pub fn describe(&self) -> String {
        let inner = self.inner.lock().expect("watchdog status lock poisoned");
        let Some(interval) = inner.interval else {
            return "disabled (no WATCHDOG_USEC from systemd)".to_owned();
        };
        let last = match inner.last_ping {
            Some(at) => format!("last ping {:.1}s ago", at.elapsed().as_secs_f64()),
            None => "no ping yet".to_owned(),
        };
        match &inner.last_failure {
            Some(failure) => format!("probing every {interval:?}, {last}, last failure: {failure}"),
            None => format!("probing every {interval:?}, {last}"),
        }
    }
}

impl WatchdogStatus {
    /// The doctor's view: fed in time, starved (systemd restarts the daemon once a ping is two
    /// intervals late), or absent where systemd supervises the daemon without one.
    pub fn finding(&self, under_systemd: bool) -> Finding {
        let inner = self.inner.lock().expect("watchdog status lock poisoned");
        let Some(interval) = inner.interval else {
            return if under_systemd {
                Finding::warn(
                    "systemd supervises blufiod without a watchdog (no WatchdogSec=), so a hung daemon is never restarted",
                    "use the shipped unit, which sets WatchdogSec=; `systemctl cat blufiod` shows what runs",
                )
            } else {
                Finding::ok("not under systemd: no watchdog to feed")
            };
        };
        let timeout = interval * 2;
        let why = inner
            .last_failure
            .clone()
            .unwrap_or_else(|| "a liveness check is not passing".to_owned());
        match inner.last_ping {
            Some(at) if at.elapsed() <= timeout => Finding::ok(format!(
                "systemd's watchdog is fed every {interval:?}; last ping {:.1} s ago",
                at.elapsed().as_secs_f64()
            )),
            Some(at) => Finding::fail(
                format!(
                    "no watchdog ping for {:.1} s: systemd restarts blufiod after {timeout:?} ({why})",
                    at.elapsed().as_secs_f64()
                ),
                "see the log for the stuck part; the database's disk and locks come first",
            ),
            None => Finding::fail(
                format!("no watchdog ping yet ({why})"),
                "see the log for the stuck part; the database's disk and locks come first",
            ),
        }
    }
}

/// How one watchdog cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cycle {
    /// Every probe passed: ping systemd.
    Passed,
    /// A probe failed or stalled: the ping is withheld.
    Missed,
}

/// Runs the watchdog until `token` is cancelled: every `interval`, all probes must pass within
/// `interval`; `end` hears how each cycle ended and pings systemd on [`Cycle::Passed`].
pub async fn run(
    interval: Duration,
    probes: Vec<Probe>,
    end: impl Fn(Cycle),
    status: WatchdogStatus,
    token: CancellationToken,
) {
    status.inner.lock().expect("watchdog status lock poisoned").interval = Some(interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let deadline = tokio::time::Instant::now() + interval;
        let mut failure = None;
        for probe in &probes {
            let outcome = tokio::select! {
                () = token.cancelled() => return,
                outcome = tokio::time::timeout_at(deadline, (probe.check)()) => outcome,
            };
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failure = Some(format!("{} failed: {error}", probe.name));
                    break;
                }
                Err(_) => {
                    failure = Some(format!("{} made no progress within {interval:?}", probe.name));
                    break;
                }
            }
        }
        let mut inner = status.inner.lock().expect("watchdog status lock poisoned");
        match failure {
            None => {
                end(Cycle::Passed);
                inner.last_ping = Some(Instant::now());
            }
            Some(failure) => {
                tracing::warn!(%failure, "liveness probe failed; withholding WATCHDOG=1");
                end(Cycle::Missed);
                inner.last_failure = Some(failure);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    async fn pings_within(probes: Vec<Probe>, window: Duration) -> (usize, WatchdogStatus) {
        let pings = Arc::new(AtomicUsize::new(0));
        let status = WatchdogStatus::default();
        let token = CancellationToken::new();
        let counter = pings.clone();
        let task = tokio::spawn(run(
            Duration::from_millis(20),
            probes,
            move |cycle| {
                if cycle == Cycle::Passed {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            },
            status.clone(),
            token.clone(),
        ));
        tokio::time::sleep(window).await;
        token.cancel();
        task.await.unwrap();
        (pings.load(Ordering::SeqCst), status)
    }

    #[tokio::test]
    async fn the_doctor_sees_a_fed_a_starved_and_a_missing_watchdog() {
        use crate::health::Level;
        let absent = WatchdogStatus::default();
        assert_eq!(absent.finding(false).level, Level::Ok);
        assert_eq!(absent.finding(true).level, Level::Warn);

        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        let probes = vec![Probe::new("storage", move || {
            let stalled = flag.load(Ordering::SeqCst);
            async move {
                if stalled {
                    Err("the writer is stuck".to_owned())
                } else {
                    Ok(())
                }
            }
        })];
        let status = WatchdogStatus::default();
        let token = CancellationToken::new();
        let task = tokio::spawn(run(
            Duration::from_millis(20),
            probes,
            |_| {},
            status.clone(),
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(70)).await;
        let fed = status.finding(true);
        assert_eq!(fed.level, Level::Ok, "{fed:?}");
        assert!(fed.detail.contains("fed every 20ms"), "{fed:?}");
        stalled.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let starved = status.finding(true);
        assert_eq!(starved.level, Level::Fail, "{starved:?}");
        assert!(
            starved.detail.contains("storage failed: the writer is stuck"),
            "{starved:?}"
        );
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_probes_feed_the_watchdog() {
        let probes = vec![Probe::new("ok", || async { Ok(()) })];
        let (pings, status) = pings_within(probes, Duration::from_millis(205)).await;
        assert!((10..=11).contains(&pings), "pings: {pings}");
        assert!(status.describe().contains("last ping"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_loop_stops_the_pings() {
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        let probes = vec![
            Probe::new("ok", || async { Ok(()) }),
            Probe::new("loop", move || {
                let stalled = flag.load(Ordering::SeqCst);
                async move {
                    if stalled {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                }
            }),
        ];
        let pings = Arc::new(AtomicUsize::new(0));
        let counter = pings.clone();
        let status = WatchdogStatus::default();
        let token = CancellationToken::new();
        let task = tokio::spawn(run(
            Duration::from_millis(20),
            probes,
            move |cycle| {
                if cycle == Cycle::Passed {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            },
            status.clone(),
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = pings.load(Ordering::SeqCst);
        assert!(before >= 4, "pings while healthy: {before}");
        stalled.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let at_stall = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            pings.load(Ordering::SeqCst),
            at_stall,
            "no ping may be sent while a loop is stalled"
        );
        assert!(
            status.describe().contains("loop made no progress"),
            "{}",
            status.describe()
        );
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_probe_stops_the_pings() {
        let probes = vec![Probe::new("storage", || async { Err("disk I/O error".to_owned()) })];
        let (pings, status) = pings_within(probes, Duration::from_millis(100)).await;
        assert_eq!(pings, 0);
        assert!(status.describe().contains("storage failed: disk I/O error"));
    }
}
