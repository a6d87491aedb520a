//! Prometheus metrics: one registry for the daemon, exposed as text on the gateway's `/metrics`.
//!
//! Label values come from fixed sets (route templates, status classes, check names), never from
//! request data, so the number of series is bounded. This module only counts; it never decides.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    CounterVec, Encoder as _, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The daemon's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
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
}

impl Metrics {
    /// A registry with every metric, and the process collector (RSS, CPU, file descriptors).
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("blufio".to_owned()), None).expect("a valid prefix");
        let http_requests = IntCounterVec::new(
            Opts::new("gateway_requests_total", "Gateway requests by route and HTTP status."),
            &["route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Gateway request handling time by route.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            &["route"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "gateway_auth_failures_total",
                "Refused gateway requests by the check that failed.",
            ),
            &["check"],
        )
        .expect("valid metric");
        let open_connections =
            IntGauge::new("gateway_open_connections", "Gateway connections open now.").expect("valid metric");
        let events = IntCounterVec::new(Opts::new("events_total", "Lifecycle events by name."), &["event"])
            .expect("valid metric");
        let events_dropped = IntCounter::new(
            "events_dropped_total",
            "Lifecycle events a subscriber lost because it fell behind.",
        )
        .expect("valid metric");
        let grpc_requests = IntCounterVec::new(
            Opts::new("grpc_requests_total", "Control-socket calls by method and gRPC status."),
            &["method", "code"],
        )
        .expect("valid metric");
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "grpc_request_duration_seconds",
                "Control-socket call durations by method; a stream lasts until its end.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            &["method"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "tokens_total",
                "Tokens by model and type (input, output, cache_read, cache_write).",
            ),
            &["model", "type"],
        )
        .expect("valid metric");
        let cost_usd = CounterVec::new(
            Opts::new(
                "cost_usd_total",
                "Spend by model in US dollars, as the ledger records it.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let provider_requests = IntCounterVec::new(
            Opts::new(
                "provider_requests_total",
                "Provider calls by provider, model and outcome (ok, error).",
            ),
            &["provider", "model", "outcome"],
        )
        .expect("valid metric");
        let response_latency = HistogramVec::new(
            HistogramOpts::new(
                "response_latency_seconds",
                "Provider call time, from sending it to its last event, by model.",
            )
            .buckets(vec![0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]),
            &["model"],
        )
        .expect("valid metric");
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
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self {
            registry,
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
        }
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

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
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
            text.contains("process_resident_memory_bytes"),
            "the process collector is registered: {text}"
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
