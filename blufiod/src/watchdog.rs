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

/// What the watchdog knows at one moment, for the doctor's `watchdog` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogSnapshot {
    /// The probing interval (half of systemd's `WATCHDOG_USEC`), when systemd asked for pings.
    pub interval: Option<Duration>,
    /// How long ago the last ping went out.
    pub since_last_ping: Option<Duration>,
    /// The last probe failure.
    pub last_failure: Option<String>,
}

impl WatchdogStatus {
    /// What the watchdog knows now.
    pub fn snapshot(&self) -> WatchdogSnapshot {
        let inner = self.inner.lock().expect("watchdog status lock poisoned");
        WatchdogSnapshot {
            interval: inner.interval,
            since_last_ping: inner.last_ping.map(|at| at.elapsed()),
            last_failure: inner.last_failure.clone(),
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
    async fn the_snapshot_has_the_last_ping_and_the_failing_probe() {
        assert_eq!(
            WatchdogStatus::default().snapshot(),
            WatchdogSnapshot {
                interval: None,
                since_last_ping: None,
                last_failure: None
            }
        );
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
        let fed = status.snapshot();
        assert_eq!(fed.interval, Some(Duration::from_millis(20)));
        assert!(fed.since_last_ping.is_some(), "a ping was recorded: {fed:?}");
        stalled.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let starved = status.snapshot();
        assert!(
            starved
                .since_last_ping
                .is_some_and(|age| age > Duration::from_millis(100)),
            "{starved:?}"
        );
        assert_eq!(
            starved.last_failure.as_deref(),
            Some("storage failed: the writer is stuck")
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
