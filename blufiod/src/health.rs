//! The health registry: one list of named checks that every consumer reads. The watchdog runs
//! the liveness checks, `/ready` the readiness checks, `GetStatus` shows their summary, and
//! `doctor` (`RunChecks`) runs them all, the deep ones on request and one deep run at a time.
//! A subsystem adds a check in one place, here, at startup.
//!
//! A check answers ok, warn or fail with a one-line detail and a hint on how to fix it. It may
//! look, never change anything, and it must finish quickly: every run has a deadline, and a check
//! that misses it fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::watchdog::Probe;

/// How expensive a check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Cheap enough for every status call and `/ready`.
    Cheap,
    /// Only on request (`doctor --deep`).
    Deep,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// All is well.
    Ok,
    /// Works, but needs attention.
    Warn,
    /// Does not work.
    Fail,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The verdict.
    pub level: Level,
    /// One line: what was seen.
    pub detail: String,
    /// How to fix it, when there is something to fix.
    pub hint: Option<String>,
}

impl Finding {
    /// All is well.
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            level: Level::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    /// Works, but needs attention.
    pub fn warn(detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            level: Level::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    /// Something is wrong.
    pub fn fail(detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            level: Level::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The future a check returns.
pub type CheckFuture = Pin<Box<dyn Future<Output = Finding> + Send>>;

/// One registered check.
#[derive(Clone)]
pub struct Check {
    /// Short, stable name, for example `storage`.
    pub name: &'static str,
    /// How expensive it is.
    pub cost: Cost,
    /// Whether the watchdog needs it to pass before it feeds systemd.
    pub liveness: bool,
    /// When it is part of readiness: what `/ready` may tell an unauthenticated caller when it
    /// fails (no paths, no error text).
    pub readiness: Option<&'static str>,
    run: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Check")
            .field("name", &self.name)
            .field("cost", &self.cost)
            .field("liveness", &self.liveness)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A cheap check that is neither liveness nor readiness (yet).
    pub fn new<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Finding> + Send + 'static,
    {
        Self {
            name,
            cost: Cost::Cheap,
            liveness: false,
            readiness: None,
            run: Arc::new(move || Box::pin(run())),
        }
    }

    /// The watchdog needs it.
    pub fn liveness(mut self) -> Self {
        self.liveness = true;
        self
    }

    /// `/ready` needs it; `public` is what `/ready` says when it fails.
    pub fn readiness(mut self, public: &'static str) -> Self {
        self.readiness = Some(public);
        self
    }

    /// Only on request.
    pub fn deep(mut self) -> Self {
        self.cost = Cost::Deep;
        self
    }

    /// Runs the check at most once per `interval`: callers within it get the last finding,
    /// marked with its age, and concurrent callers share one run. For checks that cost
    /// somebody else something (a provider's API) or read the whole database, so that callers
    /// (read-only ones included) cannot make them run back to back.
    pub fn at_most_every(mut self, interval: Duration) -> Self {
        let run = self.run.clone();
        let last: Arc<tokio::sync::Mutex<Option<(Instant, Finding)>>> = Arc::default();
        self.run = Arc::new(move || {
            let (run, last) = (run.clone(), last.clone());
            Box::pin(async move {
                let mut last = last.lock().await;
                if let Some((at, finding)) = last.as_ref()
                    && at.elapsed() < interval
                {
                    let mut finding = finding.clone();
                    finding.detail = format!("{} (as of {} s ago)", finding.detail, at.elapsed().as_secs());
                    return finding;
                }
                let finding = run().await;
                *last = Some((Instant::now(), finding.clone()));
                finding
            })
        });
        self
    }
}

/// A finding with its check's name and how long the check took.
#[derive(Debug, Clone)]
pub struct Report {
    /// The check.
    pub name: &'static str,
    /// How expensive it is.
    pub cost: Cost,
    /// What `/ready` may say when this readiness check fails.
    pub public: Option<&'static str>,
    /// What it found.
    pub finding: Finding,
    /// How long it took.
    pub duration: Duration,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Health {
    checks: RwLock<Vec<Check>>,
    /// Held by a doctor run that includes deep checks: they read the whole database, so callers
    /// cannot stack them.
    deep_run: tokio::sync::Mutex<()>,
}

/// Time a cheap check may take in a status call or `/ready`.
pub const CHEAP_DEADLINE: Duration = Duration::from_secs(2);
/// Time each check may take in a doctor run: a provider's answer or a whole-database check may
/// take longer than a status call waits.
pub const DOCTOR_DEADLINE: Duration = Duration::from_secs(30);

/// Why a doctor run was refused.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `only` named a check that does not exist.
    #[error("run the checks: there is no check named {name:?}; the checks are {known}")]
    UnknownCheck {
        /// The name given.
        name: String,
        /// Every check's name, comma-separated.
        known: String,
    },
    /// Another run with deep checks is in progress.
    #[error("run the deep checks: another deep run is in progress; try again when it ends")]
    DeepBusy,
}

impl Health {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a check. Names are unique.
    pub fn register(&self, check: Check) {
        let mut checks = self.checks.write().unwrap_or_else(PoisonError::into_inner);
        assert!(
            checks.iter().all(|existing| existing.name != check.name),
            "health check {} registered twice",
            check.name
        );
        checks.push(check);
    }

    /// Runs the checks `select` picks, concurrently, each within `deadline`, in registration
    /// order.
    pub async fn run(&self, select: impl Fn(&Check) -> bool, deadline: Duration) -> Vec<Report> {
        let checks: Vec<Check> = self
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|check| select(check))
            .cloned()
            .collect();
        futures_util::future::join_all(checks.into_iter().map(|check| async move {
            let started = Instant::now();
            let finding = tokio::time::timeout(deadline, (check.run)()).await.unwrap_or_else(|_| {
                Finding::fail(
                    format!("no answer within {deadline:?}"),
                    "the part it checks is stuck or overloaded; see the log",
                )
            });
            Report {
                name: check.name,
                cost: check.cost,
                public: check.readiness,
                finding,
                duration: started.elapsed(),
            }
        }))
        .await
    }

    /// The doctor's run: every cheap check, and the deep ones too when `deep`; or, when `only`
    /// names checks, exactly those (a deep one named there runs without `deep`). Runs that
    /// include a deep check run one at a time.
    pub async fn doctor(&self, deep: bool, only: &[String]) -> Result<Vec<Report>, DoctorError> {
        let names: Vec<(&'static str, Cost)> = self
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|check| (check.name, check.cost))
            .collect();
        if let Some(unknown) = only.iter().find(|name| !names.iter().any(|(known, _)| known == name)) {
            return Err(DoctorError::UnknownCheck {
                name: unknown.clone(),
                known: names.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", "),
            });
        }
        let selected = |name: &str, cost: Cost| {
            if only.is_empty() {
                deep || cost == Cost::Cheap
            } else {
                only.iter().any(|wanted| wanted == name)
            }
        };
        let any_deep = names
            .iter()
            .any(|(name, cost)| *cost == Cost::Deep && selected(name, *cost));
        let _deep_run = if any_deep {
            Some(self.deep_run.try_lock().map_err(|_| DoctorError::DeepBusy)?)
        } else {
            None
        };
        Ok(self
            .run(|check| selected(check.name, check.cost), DOCTOR_DEADLINE)
            .await)
    }

    /// What `/ready` reports: the public line of every failing readiness check.
    pub async fn readiness_problems(&self) -> Vec<&'static str> {
        self.run(|check| check.readiness.is_some(), CHEAP_DEADLINE)
            .await
            .into_iter()
            .filter(|report| report.finding.level == Level::Fail)
            .filter_map(|report| report.public)
            .collect()
    }

    /// The liveness checks as watchdog probes.
    pub fn probes(self: &Arc<Self>) -> Vec<Probe> {
        self.checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|check| check.liveness)
            .map(|check| {
                let run = check.run.clone();
                Probe::new(check.name, move || {
                    let run = run.clone();
                    async move {
                        let finding = run().await;
                        match finding.level {
                            Level::Fail => Err(finding.detail),
                            Level::Ok | Level::Warn => Ok(()),
                        }
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn consumers_see_the_checks_they_need() {
        let health = Health::new();
        health.register(Check::new("fine", || async { Finding::ok("fine") }).liveness());
        health.register(
            Check::new("broken", || async { Finding::fail("the disk is gone", "mount it") })
                .readiness("the disk is not there"),
        );
        health.register(
            Check::new("slow", || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Finding::ok("late")
            })
            .deep(),
        );
        assert_eq!(health.readiness_problems().await, vec!["the disk is not there"]);
        let probes = health.probes();
        assert_eq!(probes.len(), 1);
        assert_eq!((probes[0].check)().await, Ok(()));
        let all = health.run(|_| true, Duration::from_millis(50)).await;
        let names: Vec<_> = all.iter().map(|report| report.name).collect();
        assert_eq!(names, ["fine", "broken", "slow"]);
        assert_eq!(all[2].finding.level, Level::Fail, "a check past its deadline fails");
        assert!(all[1].finding.hint.is_some());
    }

    fn names(reports: &[Report]) -> Vec<&'static str> {
        reports.iter().map(|report| report.name).collect()
    }

    #[tokio::test]
    async fn the_doctor_runs_cheap_checks_deep_ones_on_request_and_one_deep_run_at_a_time() {
        let health = Health::new();
        health.register(Check::new("quick", || async {
            Finding::warn("close to a cap", "raise it")
        }));
        let (release, released) = tokio::sync::watch::channel(false);
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let starting = started.clone();
        health.register(
            Check::new("whole", move || {
                let mut released = released.clone();
                starting.store(true, std::sync::atomic::Ordering::SeqCst);
                async move {
                    let _ = released.wait_for(|done| *done).await;
                    Finding::ok("intact")
                }
            })
            .deep(),
        );
        let _ = release.send(true);
        assert_eq!(names(&health.doctor(false, &[]).await.unwrap()), ["quick"]);
        let all = health.doctor(true, &[]).await.unwrap();
        assert_eq!(names(&all), ["quick", "whole"]);
        assert_eq!(all[1].cost, Cost::Deep);
        assert_eq!(
            names(&health.doctor(false, &["whole".to_owned()]).await.unwrap()),
            ["whole"]
        );
        let error = health
            .doctor(false, &["nope".to_owned()])
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"nope\"") && error.contains("quick, whole"), "{error}");

        // A deep run in progress refuses another, not a cheap one.
        let _ = release.send(false);
        started.store(false, std::sync::atomic::Ordering::SeqCst);
        let health = std::sync::Arc::new(health);
        let running = tokio::spawn({
            let health = health.clone();
            async move { health.doctor(true, &[]).await.map(|reports| reports.len()) }
        });
        // Wait until the first run's deep check has started (it holds the lock, parked on
        // `release`).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !started.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "the first deep run never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(health.doctor(true, &[]).await, Err(DoctorError::DeepBusy)));
        assert_eq!(names(&health.doctor(false, &[]).await.unwrap()), ["quick"]);
        let _ = release.send(true);
        assert_eq!(running.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_rate_limited_check_runs_once_per_interval_and_says_how_old_its_answer_is() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let health = Health::new();
        let counted = runs.clone();
        health.register(
            Check::new("remote", move || {
                let runs = counted.clone();
                async move {
                    let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    Finding::ok(format!("run {run}"))
                }
            })
            .at_most_every(Duration::from_secs(1)),
        );
        let first = health.doctor(false, &[]).await.unwrap();
        assert_eq!(first[0].finding.detail, "run 1");
        let (a, b) = tokio::join!(health.doctor(false, &[]), health.doctor(false, &[]));
        for reports in [a.unwrap(), b.unwrap()] {
            assert_eq!(reports[0].finding.detail, "run 1 (as of 0 s ago)");
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(health.doctor(false, &[]).await.unwrap()[0].finding.detail, "run 2");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
