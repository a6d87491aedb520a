//! The Prometheus text exposition as tests read it: samples by series, as the daemon writes them
//! (`name{label="value",...}`, labels in the daemon's order, which is sorted by name).

use std::collections::BTreeMap;

/// Every metric family blufiod ships, sorted. `blufiod/tests/metrics.rs` proves that real
/// traffic moves each and that the daemon exposes no other; the alert rules and the dashboard
/// may name only these (`blufiod/tests/prometheus_rules.rs`).
pub const FAMILIES: &[&str] = &[
    "blufio_active_sessions",
    "blufio_backup_failures_total",
    "blufio_backup_last_duration_seconds",
    "blufio_backup_last_size_bytes",
    "blufio_backup_last_success_timestamp_seconds",
    "blufio_budget_cap_usd",
    "blufio_budget_remaining_usd",
    "blufio_budget_reserved_usd",
    "blufio_budget_spent_usd",
    "blufio_build_info",
    "blufio_cost_usd_total",
    "blufio_errors_total",
    "blufio_events_dropped_total",
    "blufio_events_total",
    "blufio_gateway_auth_failures_total",
    "blufio_gateway_open_connections",
    "blufio_gateway_replay_cache_entries",
    "blufio_gateway_request_duration_seconds",
    "blufio_gateway_requests_total",
    "blufio_grpc_request_duration_seconds",
    "blufio_grpc_requests_total",
    "blufio_hook_runs_total",
    "blufio_memory_heap_bytes",
    "blufio_memory_limit_bytes",
    "blufio_memory_pressure",
    "blufio_memory_refuse_bytes",
    "blufio_memory_resident_bytes",
    "blufio_memory_rss_bytes",
    "blufio_memory_warn_bytes",
    "blufio_messages_total",
    "blufio_provider_requests_total",
    "blufio_provider_retries_total",
    "blufio_response_latency_seconds",
    "blufio_start_time_seconds",
    "blufio_time_to_first_token_seconds",
    "blufio_tokens_total",
    "blufio_tool_calls_total",
    "blufio_turn_histories_total",
    "blufio_turns_in_flight",
    "blufio_turns_queued",
    "blufio_watchdog_missed_total",
    "blufio_watchdog_pings_total",
];

/// The families of [`FAMILIES`] that are histograms (scraped as `_bucket`, `_sum`, `_count`).
pub const HISTOGRAMS: &[&str] = &[
    "blufio_gateway_request_duration_seconds",
    "blufio_grpc_request_duration_seconds",
    "blufio_response_latency_seconds",
    "blufio_time_to_first_token_seconds",
];

/// The samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(BTreeMap<String, f64>);

impl Samples {
    /// Parses the text format; comment lines are skipped.
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
                .map(|line| {
                    let (series, value) = line
                        .rsplit_once(' ')
                        .unwrap_or_else(|| panic!("a sample line is `series value`: {line:?}"));
                    let value = match value {
                        "+Inf" => f64::INFINITY,
                        "-Inf" => f64::NEG_INFINITY,
                        value => value
                            .parse()
                            .unwrap_or_else(|error| panic!("bad sample value in {line:?}: {error}")),
                    };
                    (series.to_owned(), value)
                })
                .collect(),
        )
    }

    /// The value of `series`, if the scrape had it.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// The value of `series`; panics, listing the series of the same metric, when it is absent.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or_else(|| {
            let name = series.split('{').next().unwrap_or(series);
            let similar: Vec<&String> = self.0.keys().filter(|key| key.starts_with(name)).collect();
            panic!("no series {series}; series of {name}: {similar:?}")
        })
    }

    /// The value of `series`, 0 when absent (a labelled counter before its first increment).
    pub fn count(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }

    /// Every series, in order.
    pub fn series(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(series, value)| (series.as_str(), *value))
    }
}

/// The metric family names a text exposition declares (`# TYPE name kind`).
pub fn families(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_series_and_families() {
        let text =
            "# HELP a_total A.\n# TYPE a_total counter\na_total{kind=\"x y\"} 3\nb 1.5\nc_bucket{le=\"+Inf\"} 2\n";
        let samples = Samples::parse(text);
        assert_eq!(samples.value("a_total{kind=\"x y\"}"), 3.0);
        assert_eq!(samples.value("b"), 1.5);
        assert_eq!(samples.count("missing"), 0.0);
        assert_eq!(samples.series().count(), 3);
        assert_eq!(families(text), vec!["a_total"]);
    }
}
