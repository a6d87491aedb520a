//! Lifecycle events: a bounded broadcast that subsystems publish what happened on, and that
//! hooks, metrics and logs subscribe to.
//!
//! Publishing never waits: the channel keeps the last [`CAPACITY`] events, and a subscriber that
//! falls further behind loses the oldest ones it has not read; they are counted in
//! [`EventBus::dropped`] and the subscriber carries on with the newest. So a slow or stuck
//! subscriber can never block the daemon or grow its memory. Events carry no secrets and no
//! message text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

/// Events kept for subscribers that have not read them yet.
pub const CAPACITY: usize = 256;

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Startup began (after the configuration loaded).
    Starting,
    /// Every listener is bound and the daemon serves (`READY=1`).
    Ready,
    /// A reload began.
    Reloading,
    /// A reload ended; `ok` is false when the file was invalid and nothing changed.
    Reloaded {
        /// Whether the new configuration is in effect.
        ok: bool,
    },
    /// Shutdown began.
    Stopping,
    /// A turn completed.
    TurnFinished {
        /// Its session.
        session_id: String,
        /// The model that answered.
        model: String,
        /// What it cost, in micro-dollars.
        cost_micros: i64,
    },
    /// A turn failed after it was accepted.
    TurnFailed {
        /// Its session.
        session_id: String,
        /// A stable name for the kind of failure.
        kind: &'static str,
    },
    /// A budget cap refused a turn.
    BudgetExhausted {
        /// `daily` or `monthly`.
        period: &'static str,
    },
    /// The memory pressure level changed.
    MemoryPressureChanged {
        /// The new level: `normal`, `warn` or `limit`.
        level: &'static str,
        /// The resident set when it was seen.
        rss_bytes: u64,
    },
    /// A device was registered.
    DeviceAdded {
        /// Its name.
        name: String,
        /// Its key fingerprint.
        keyid: String,
    },
    /// A device was revoked.
    DeviceRevoked {
        /// Its name.
        name: String,
        /// Its key fingerprint.
        keyid: String,
    },
    /// A backup was written (scheduled) or streamed (requested).
    BackupFinished {
        /// Where, for a scheduled one; `None` when streamed to a client.
        path: Option<std::path::PathBuf>,
        /// The archive's size.
        bytes: u64,
    },
    /// A backup failed.
    BackupFailed {
        /// Why, as one line.
        error: String,
    },
    /// A restore changed the database.
    /// The provider stopped answering (a turn failed on it after its retries); published once,
    /// until a turn succeeds again.
    ProviderDown {
        /// `anthropic` or `openai`.
        provider: &'static str,
        /// What failed.
        error: String,
    },
    Restored {
        /// When the restored archive was made (Unix seconds).
        created_at: i64,
        /// Where the replaced database is kept.
        safety_copy: std::path::PathBuf,
    },
}

impl Event {
    /// A stable name, for hooks (`BLUFIO_EVENT`) and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Reloading => "reloading",
            Self::Reloaded { .. } => "reloaded",
            Self::Stopping => "stopping",
            Self::TurnFinished { .. } => "turn_finished",
            Self::TurnFailed { .. } => "turn_failed",
            Self::BudgetExhausted { .. } => "budget_exhausted",
            Self::MemoryPressureChanged { .. } => "memory_pressure_changed",
            Self::DeviceAdded { .. } => "device_added",
            Self::DeviceRevoked { .. } => "device_revoked",
            Self::BackupFinished { .. } => "backup_finished",
            Self::BackupFailed { .. } => "backup_failed",
            Self::ProviderDown { .. } => "provider_down",
            Self::Restored { .. } => "restored",
        }
    }
}

/// The bus. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    dropped: AtomicU64,
}

impl EventBus {
    /// A bus keeping [`CAPACITY`] events.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            sender: broadcast::Sender::new(CAPACITY),
            dropped: AtomicU64::new(0),
        })
    }

    /// Publishes `event` to every current subscriber, without waiting.
    pub fn publish(&self, event: Event) {
        tracing::debug!(event = event.name(), "event");
        // No subscriber is not an error: nobody asked.
        let _ = self.sender.send(Arc::new(event));
    }

    /// A new subscription, seeing events published from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            bus: self.clone(),
        }
    }

    /// Events lost by subscribers that fell behind, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One subscriber's view of the bus.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
    bus: Arc<EventBus>,
}

impl Subscription {
    /// The next event; events this subscriber fell behind on are skipped and counted. `None`
    /// once the bus is gone.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.bus.dropped.fetch_add(missed, Ordering::Relaxed);
                    tracing::warn!(missed, "an event subscriber fell behind; events were dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_in_order() {
        let bus = EventBus::new();
        let mut first = bus.subscribe();
        bus.publish(Event::Starting);
        let mut second = bus.subscribe();
        bus.publish(Event::Ready);
        assert_eq!(*first.next().await.unwrap(), Event::Starting);
        assert_eq!(*first.next().await.unwrap(), Event::Ready);
        assert_eq!(
            *second.next().await.unwrap(),
            Event::Ready,
            "only events after subscribing"
        );
        assert_eq!(bus.dropped(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_events_counted_and_never_blocks() {
        let bus = EventBus::new();
        let mut slow = bus.subscribe();
        // Publishing far more than the capacity returns at once: nothing waits for the reader.
        for n in 0..(CAPACITY + 10) {
            bus.publish(Event::Reloaded { ok: n % 2 == 0 });
        }
        bus.publish(Event::Stopping);
        let mut seen = 0;
        while let Some(event) = slow.next().await {
            seen += 1;
            if *event == Event::Stopping {
                break;
            }
        }
        assert_eq!(seen, CAPACITY, "the newest CAPACITY events are kept");
        assert_eq!(bus.dropped(), 11);
    }
}
