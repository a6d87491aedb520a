//! Prometheus metrics: one registry for the daemon, exposed as text on the gateway's `/metrics`.
//!
//! Label values come from fixed sets (route templates, status classes, check names), never from
//! request data, so the number of series is bounded. This module only counts; it never decides.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    CounterVec, Encoder as _, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The daemon's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The daemon's own metrics, named `blufio_*`.
    registry: Registry,
    /// The standard `process_*` metrics, under their standard names (no prefix), so that
    /// dashboards and alerts written for any exporter work.
    process: Registry,
    /// Gateway requests by route template and status code.
    pub http_requests: IntCounterVec,
    /// Gateway request durations by route template.
    pub http_duration: HistogramVec,
    /// Refused gateway requests by the check that failed.
    pub auth_failures: IntCounterVec,
    /// Gateway connections open now.
    pub open_connections: IntGauge,
    /// Lifecycle events by name.
    pub events: IntCounterVec,
    /// Events subscribers lost by falling behind.
    pub events_dropped: IntCounter,
    /// Control-socket calls by method and gRPC status.
    pub grpc_requests: IntCounterVec,
    /// Control-socket call durations by method (a stream lasts until its end).
    pub grpc_duration: HistogramVec,
    /// Tokens by model (the configured one) and type: input, output, cache_read, cache_write.
    pub tokens: IntCounterVec,
    /// Spend by model, US dollars.
    pub cost_usd: CounterVec,
    /// Provider calls by provider kind, model and outcome (ok, error).
    pub provider_requests: IntCounterVec,
    /// Time from sending a provider call to its last event, by model.
    pub response_latency: HistogramVec,
    /// Time from sending a provider call to the first piece of its answer, by model.
    pub time_to_first_token: HistogramVec,
    /// Provider attempts retried before the answer started, by provider kind and model.
    pub provider_retries: IntCounterVec,
    /// Refused or failed turns by error kind.
    pub errors: IntCounterVec,
    /// Messages by direction (inbound: accepted from the owner; outbound: answers completed) and
    /// channel (control, gateway).
    pub messages: IntCounterVec,
    /// Tool calls by tool (a known name or `unknown`) and outcome (ok, error, not_run).
    pub tool_calls: IntCounterVec,
    /// Turns by where their history came from: `kept` (the session's messages held in memory
    /// since its last turn), `read` (the database) or `new` (a new session's own messages).
    pub turn_histories: IntCounterVec,
    /// Watchdog cycles whose probes all passed and that sent `WATCHDOG=1`.
    pub watchdog_pings: IntCounter,
    /// Watchdog cycles where a probe failed and the ping was withheld.
    pub watchdog_missed: IntCounter,
    /// When the daemon started, seconds since the Unix epoch.
    pub start_time: Gauge,
}

/// Buckets for LLM-scale latencies: a quarter second to five minutes.
const LLM_BUCKETS: [f64; 11] = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// Buckets for the daemon's own request handling, a millisecond to two minutes (streams).
const REQUEST_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

/// A counter vector; the names and labels are this module's constants, so it cannot fail.
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// A histogram vector over `buckets`.
fn histogram_vec(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric")
}

impl Metrics {
    /// A registry with every metric, and the process collector (RSS, CPU, file descriptors).
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("blufio".to_owned()), None).expect("a valid prefix");
        let http_requests = counter_vec(
            "gateway_requests_total",
            "Gateway requests by route and HTTP status.",
            &["route", "status"],
        );
        let http_duration = histogram_vec(
            "gateway_request_duration_seconds",
            "Gateway request handling time by route.",
            &REQUEST_BUCKETS,
            &["route"],
        );
        let auth_failures = counter_vec(
            "gateway_auth_failures_total",
            "Refused gateway requests by the check that failed.",
            &["check"],
        );
        let open_connections =
            IntGauge::new("gateway_open_connections", "Gateway connections open now.").expect("valid metric");
        let events = counter_vec("events_total", "Lifecycle events by name.", &["event"]);
        let events_dropped = IntCounter::new(
            "events_dropped_total",
            "Lifecycle events a subscriber lost because it fell behind.",
        )
        .expect("valid metric");
        let grpc_requests = counter_vec(
            "grpc_requests_total",
            "Control-socket calls by method and gRPC status.",
            &["method", "code"],
        );
        let grpc_duration = histogram_vec(
            "grpc_request_duration_seconds",
            "Control-socket call durations by method; a stream lasts until its end.",
            &REQUEST_BUCKETS,
            &["method"],
        );
        let tokens = counter_vec(
            "tokens_total",
            "Tokens by model and type (input, output, cache_read, cache_write).",
            &["model", "type"],
        );
        let cost_usd = CounterVec::new(
            Opts::new(
                "cost_usd_total",
                "Spend by model in US dollars, as the ledger records it.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let provider_requests = counter_vec(
            "provider_requests_total",
            "Provider calls by provider, model and outcome (ok, error).",
            &["provider", "model", "outcome"],
        );
        let response_latency = histogram_vec(
            "response_latency_seconds",
            "Provider call time, from sending it to its last event, by model.",
            &LLM_BUCKETS,
            &["model"],
        );
        let time_to_first_token = histogram_vec(
            "time_to_first_token_seconds",
            "Time from sending a provider call to the first piece of its answer, by model.",
            &LLM_BUCKETS,
            &["model"],
        );
        let provider_retries = counter_vec(
            "provider_retries_total",
            "Provider attempts retried before the answer started, by provider and model.",
            &["provider", "model"],
        );
        let errors = counter_vec("errors_total", "Refused or failed turns by error kind.", &["kind"]);
        let messages = counter_vec(
            "messages_total",
            "Messages by direction (inbound, outbound) and channel (control, gateway).",
            &["direction", "channel"],
        );
        let tool_calls = counter_vec(
            "tool_calls_total",
            "Tool calls by tool and outcome (ok, error, not_run).",
            &["tool", "outcome"],
        );
        let turn_histories = counter_vec(
            "turn_histories_total",
            "Turns by where their history came from (kept in memory, read from the database, new session).",
            &["source"],
        );
        let watchdog_pings = IntCounter::new(
            "watchdog_pings_total",
            "Watchdog cycles whose liveness probes all passed and that pinged systemd.",
        )
        .expect("valid metric");
        let watchdog_missed = IntCounter::new(
            "watchdog_missed_total",
            "Watchdog cycles where a liveness probe failed and the ping to systemd was withheld.",
        )
        .expect("valid metric");
        let start_time = Gauge::new(
            "start_time_seconds",
            "When blufiod started, in seconds since the Unix epoch.",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "The running build: version and commit (value 1)."),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), crate::lifecycle::COMMIT])
            .set(1);
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(auth_failures.clone()),
            Box::new(open_connections.clone()),
            Box::new(events.clone()),
            Box::new(events_dropped.clone()),
            Box::new(grpc_requests.clone()),
            Box::new(grpc_duration.clone()),
            Box::new(tokens.clone()),
            Box::new(cost_usd.clone()),
            Box::new(provider_requests.clone()),
            Box::new(response_latency.clone()),
            Box::new(time_to_first_token.clone()),
            Box::new(provider_retries.clone()),
            Box::new(errors.clone()),
            Box::new(messages.clone()),
            Box::new(tool_calls.clone()),
            Box::new(turn_histories.clone()),
            Box::new(watchdog_pings.clone()),
            Box::new(watchdog_missed.clone()),
            Box::new(start_time.clone()),
            Box::new(build_info),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        let process = Registry::new();
        process
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("one process collector");
        Self {
            registry,
            process,
            http_requests,
            http_duration,
            auth_failures,
            open_connections,
            events,
            events_dropped,
            grpc_requests,
            grpc_duration,
            tokens,
            cost_usd,
            provider_requests,
            response_latency,
            time_to_first_token,
            provider_retries,
            errors,
            messages,
            tool_calls,
            turn_histories,
            watchdog_pings,
            watchdog_missed,
            start_time,
        }
    }

    /// Registers a counter for a subsystem that keeps its own (`name` without the `blufio_`
    /// prefix, ending in `_total`).
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let counter = IntCounter::new(name, help).expect("valid metric");
        self.registry
            .register(Box::new(counter.clone()))
            .expect("metric names are unique");
        counter
    }

    /// Registers a counter with labels, for a subsystem that counts on its own.
    pub fn counter_by(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let counters = counter_vec(name, help, labels);
        self.registry
            .register(Box::new(counters.clone()))
            .expect("metric names are unique");
        counters
    }

    /// Registers gauges whose values `read` gives at scrape time, in the order of `gauges`
    /// (name, help). For figures another subsystem already keeps (spend, queue lengths): the
    /// subsystem registers them itself, and `read` returns `None` once it is gone.
    pub fn register_scraped(
        &self,
        gauges: &[(&str, &str)],
        read: impl Fn() -> Option<Vec<f64>> + Send + Sync + 'static,
    ) {
        let gauges = gauges
            .iter()
            .map(|(name, help)| Gauge::new(*name, *help).expect("valid metric"))
            .collect();
        self.registry
            .register(Box::new(Scraped {
                gauges,
                read: Box::new(read),
            }))
            .expect("metric names are unique");
    }

    /// Registers a gauge with one label whose series `read` gives at scrape time, as (label
    /// value, value) pairs: series absent from a scrape disappear. Label values must come from a
    /// fixed set.
    pub fn register_scraped_by(
        &self,
        (name, help): (&str, &str),
        label: &str,
        read: impl Fn() -> Option<Vec<(&'static str, f64)>> + Send + Sync + 'static,
    ) {
        let gauges = GaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
        self.registry
            .register(Box::new(ScrapedBy {
                gauges,
                read: Box::new(read),
            }))
            .expect("metric names are unique");
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&[self.registry.gather(), self.process.gather()].concat(), &mut buffer)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// Gauges set from their owner's figures at each scrape.
struct Scraped {
    gauges: Vec<Gauge>,
    read: Box<dyn Fn() -> Option<Vec<f64>> + Send + Sync>,
}

impl Collector for Scraped {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.iter().flat_map(Collector::desc).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(values) = (self.read)() else {
            return Vec::new();
        };
        self.gauges
            .iter()
            .zip(values)
            .flat_map(|(gauge, value)| {
                gauge.set(value);
                gauge.collect()
            })
            .collect()
    }
}

/// Reads the series of a [`ScrapedBy`] gauge: (label value, value) pairs, `None` once the owner
/// is gone.
type ReadSeries = Box<dyn Fn() -> Option<Vec<(&'static str, f64)>> + Send + Sync>;

/// A labelled gauge set from its owner's figures at each scrape.
struct ScrapedBy {
    gauges: GaugeVec,
    read: ReadSeries,
}

impl Collector for ScrapedBy {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(series) = (self.read)() else {
            return Vec::new();
        };
        self.gauges.reset();
        for (label, value) in series {
            self.gauges.with_label_values(&[label]).set(value);
        }
        self.gauges.collect()
    }
}

/// Counts every lifecycle event by name, and the events subscribers lost, until `token` is
/// cancelled or the bus is gone.
pub async fn count_events(
    metrics: std::sync::Arc<Metrics>,
    bus: std::sync::Arc<crate::events::EventBus>,
    mut events: crate::events::Subscription,
    token: tokio_util::sync::CancellationToken,
) -> Result<(), std::convert::Infallible> {
    loop {
        let event = tokio::select! {
            () = token.cancelled() => return Ok(()),
            event = events.next() => event,
        };
        let Some(event) = event else { return Ok(()) };
        metrics.events.with_label_values(&[event.name()]).inc();
        let dropped = bus.dropped();
        let counted = metrics.events_dropped.get();
        if dropped > counted {
            metrics.events_dropped.inc_by(dropped - counted);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_values() {
        let metrics = Metrics::new();
        metrics.http_requests.with_label_values(&["/health", "200"]).inc();
        metrics.auth_failures.with_label_values(&["signature"]).inc_by(2);
        let spend = std::sync::Arc::new(std::sync::Mutex::new(0.25));
        let read = spend.clone();
        metrics.register_scraped(&[("spend_today_usd", "Spend today in US dollars.")], move || {
            Some(vec![*read.lock().unwrap()])
        });
        let text = metrics.render();
        assert!(text.contains("# TYPE blufio_gateway_requests_total counter"), "{text}");
        assert!(
            text.contains("blufio_gateway_requests_total{route=\"/health\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("blufio_gateway_auth_failures_total{check=\"signature\"} 2"),
            "{text}"
        );
        assert!(text.contains("blufio_spend_today_usd 0.25"), "{text}");
        *spend.lock().unwrap() = 1.5;
        assert!(
            metrics.render().contains("blufio_spend_today_usd 1.5"),
            "scraped gauges are read at each scrape"
        );
        assert!(
            text.contains("\nprocess_resident_memory_bytes "),
            "the process collector is registered under the standard names: {text}"
        );
    }

    #[tokio::test]
    async fn events_are_counted_by_name() {
        let metrics = std::sync::Arc::new(Metrics::new());
        let bus = crate::events::EventBus::new();
        let token = tokio_util::sync::CancellationToken::new();
        let counter = tokio::spawn(count_events(
            metrics.clone(),
            bus.clone(),
            bus.subscribe(),
            token.clone(),
        ));
        bus.publish(crate::events::Event::Ready);
        bus.publish(crate::events::Event::Reloaded { ok: true });
        bus.publish(crate::events::Event::Reloaded { ok: false });
        while metrics.events.with_label_values(&["reloaded"]).get() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.events.with_label_values(&["ready"]).get(), 1);
        token.cancel();
        counter.await.unwrap().unwrap();
    }
}
