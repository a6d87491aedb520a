//! The monitoring shipped in `packaging/`: the Prometheus alert rules load without warnings and
//! pass their `promtool` unit tests, every alert has a test that fires it and one that keeps it
//! silent, and the rules, their tests and the Grafana dashboard name only metrics the daemon
//! exposes, so none of them can drift from the daemon's names unnoticed.

use blufio_testkit as support;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use support::describe;
use support::exposition::{FAMILIES, HISTOGRAMS};

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/alerts.yml");
const ALERTS_TEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/alerts_test.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana/blufio.json");

/// Runs promtool; its absence fails the test rather than skipping it.
fn promtool(args: &[&str]) -> Output {
    Command::new("promtool").args(args).output().unwrap_or_else(|error| {
        panic!(
            "cannot run promtool ({error}): install the Debian package `prometheus` \
             (cargo xtask test and .ci/run install it)"
        )
    })
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
}

/// Whether a scraped series name is one the daemon exposes.
fn is_exposed(name: &str) -> bool {
    (FAMILIES.contains(&name) && !HISTOGRAMS.contains(&name))
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| HISTOGRAMS.contains(&base)))
}

/// The whole identifiers in `text` that start with `blufio_` (without `:`, which only recording
/// rules use, so that prose such as "blufio_build_info: the version" reads as the metric).
fn metric_names(text: &str) -> BTreeSet<&str> {
    let is_identifier = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices("blufio_")
        .filter(|(start, _)| !text[..*start].ends_with(is_identifier))
        .map(|(start, _)| {
            let end = text[start..]
                .find(|c: char| !is_identifier(c))
                .map_or(text.len(), |n| start + n);
            &text[start..end]
        })
        .collect()
}

/// The names in `text` that the daemon does not expose.
fn unknown_metrics(text: &str) -> Vec<&str> {
    metric_names(text)
        .into_iter()
        .filter(|name| !is_exposed(name))
        .collect()
}

/// The alert names a rules file defines (`- alert: Name` lines).
fn alert_names(rules: &str) -> BTreeSet<&str> {
    rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert:"))
        .map(|name| name.trim().trim_matches(['"', '\'']))
        .collect()
}

/// One `alert_rule_test` case of a promtool test file: the alert it names and whether it expects
/// that alert to fire (a non-empty `exp_alerts`).
#[derive(Debug)]
struct Case<'a> {
    alertname: &'a str,
    fires: bool,
}

/// The alert cases of a promtool test file written in block style, as alerts_test.yml is: the
/// file is cut at every list item other than an expected alert (`- exp_labels:` or
/// `- exp_annotations:`), and each piece with an `alertname:` is one case.
fn alert_cases(tests: &str) -> Vec<Case<'_>> {
    let mut pieces: Vec<Vec<&str>> = vec![Vec::new()];
    for line in tests.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let expected_alert = line.starts_with("- exp_labels:") || line.starts_with("- exp_annotations:");
        if line.starts_with("- ") && !expected_alert {
            pieces.push(Vec::new());
        }
        pieces.last_mut().unwrap().push(line);
    }
    pieces
        .iter()
        .filter_map(|piece| {
            let alertname = piece.iter().find_map(|line| {
                let value = line.strip_prefix("- ").unwrap_or(line).strip_prefix("alertname:")?;
                value.split_whitespace().next()
            })?;
            let fires = piece
                .iter()
                .any(|line| line.starts_with("- exp_labels:") || line.starts_with("- exp_annotations:"));
            Some(Case { alertname, fires })
        })
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_check_without_warnings() {
    let check = promtool(&["check", "rules", "--lint=all", "--lint-fatal", ALERTS]);
    assert!(
        check.status.success(),
        "promtool check rules failed: {}",
        describe(&check)
    );
    // Lint findings go to stderr, and without --lint-fatal promtool would still exit 0.
    assert!(
        check.stderr.is_empty(),
        "promtool check rules warned: {}",
        describe(&check)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("SUCCESS"),
        "promtool check rules did not report SUCCESS: {}",
        describe(&check)
    );
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let test = promtool(&["test", "rules", ALERTS_TEST]);
    assert!(
        test.status.success(),
        "promtool test rules failed (an alert fired when it must not, did not fire when it \
         must, or its labels or text differ from alerts_test.yml): {}",
        describe(&test)
    );
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_silent() {
    let rules = read(ALERTS);
    let tests = read(ALERTS_TEST);
    let alerts = alert_names(&rules);
    let cases = alert_cases(&tests);
    assert!(!alerts.is_empty(), "no `- alert:` line found in {ALERTS}");
    assert!(!cases.is_empty(), "no `alertname:` case found in {ALERTS_TEST}");

    for alert in &alerts {
        assert!(
            cases.iter().any(|case| case.alertname == *alert && case.fires),
            "{alert} has no case in alerts_test.yml with a non-empty exp_alerts that proves it fires"
        );
        assert!(
            cases.iter().any(|case| case.alertname == *alert && !case.fires),
            "{alert} has no case in alerts_test.yml with `exp_alerts: []` that proves it stays silent"
        );
    }
    // A case naming an alert that does not exist passes promtool vacuously when it expects silence.
    for case in &cases {
        assert!(
            alerts.contains(case.alertname),
            "alerts_test.yml tests {}, which alerts.yml does not define (defined: {alerts:?})",
            case.alertname
        );
    }
}

#[test]
fn the_alert_rules_and_their_tests_name_only_metrics_the_daemon_exposes() {
    for path in [ALERTS, ALERTS_TEST] {
        let text = read(path);
        assert!(!metric_names(&text).is_empty(), "no blufio_ metric found in {path}");
        let unknown = unknown_metrics(&text);
        assert!(
            unknown.is_empty(),
            "{path} names metrics the daemon does not expose: {unknown:?} (the daemon's metrics are \
             blufio_testkit::exposition::FAMILIES)"
        );
    }
}

/// Every panel of a dashboard, with those nested in collapsed rows.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every string in a JSON document.
fn strings(value: &serde_json::Value) -> Vec<&str> {
    match value {
        serde_json::Value::String(text) => vec![text.as_str()],
        serde_json::Value::Array(items) => items.iter().flat_map(strings).collect(),
        serde_json::Value::Object(fields) => fields.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_grafana_dashboard_parses_and_names_only_metrics_the_daemon_exposes() {
    let text = read(DASHBOARD);
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{DASHBOARD} is not valid JSON: {error}"));

    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|variable| variable["name"].as_str())
        .collect();
    for variable in ["DS_PROMETHEUS", "job", "instance"] {
        assert!(
            variables.contains(variable),
            "the dashboard lost its `{variable}` variable: {variables:?}"
        );
    }

    let panels = panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"].as_u64();
        assert!(
            id.is_some_and(|id| ids.insert(id)),
            "panel {title:?} has no id or shares one"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title:?} does not use the dashboard's data source variable"
        );
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "panel {title:?} has a target without expr");
            assert!(
                expr.contains("instance=~\"$instance\""),
                "panel {title:?} ignores the instance variable: {expr}"
            );
            let unknown = unknown_metrics(expr);
            assert!(
                unknown.is_empty(),
                "panel {title:?} queries metrics the daemon does not expose: {unknown:?} in {expr} \
                 (the daemon's metrics are blufio_testkit::exposition::FAMILIES)"
            );
            exprs += 1;
        }
    }
    assert!(exprs > 0, "the dashboard has no queries");

    // Variables, annotations and descriptions too.
    let unknown: BTreeSet<&str> = strings(&dashboard).into_iter().flat_map(unknown_metrics).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics the daemon does not expose: {unknown:?}"
    );
}

#[test]
fn the_metric_scan_sees_whole_names_and_histogram_series() {
    let expr = "histogram_quantile(0.9, rate(blufio_response_latency_seconds_bucket[5m])) \
                / xblufio_other + blufio_tokens_totals{job=\"blufio\"}";
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["blufio_response_latency_seconds_bucket", "blufio_tokens_totals"]
    );
    assert_eq!(unknown_metrics(expr), ["blufio_tokens_totals"]);
    assert!(
        !is_exposed("blufio_response_latency_seconds"),
        "a histogram is scraped as its series"
    );
    assert!(!is_exposed("blufio_tokens_count"), "only histograms have _count series");
}

#[test]
fn the_case_scan_tells_firing_from_silent_cases() {
    let tests = "\
tests:
  - name: one
    interval: 1m
    input_series:
      - series: 'up{job=\"blufio\"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 1m
        alertname: Quiet
        exp_alerts: []
      - eval_time: 5m
        alertname: Loud  # fires
        exp_alerts:
          - exp_labels:
              severity: critical
          - exp_annotations:
              summary: x
  - name: two
    alert_rule_test:
      - alertname: Late
        eval_time: 5m
        exp_alerts: []
";
    let cases: Vec<(&str, bool)> = alert_cases(tests)
        .iter()
        .map(|case| (case.alertname, case.fires))
        .collect();
    assert_eq!(cases, [("Quiet", false), ("Loud", true), ("Late", false)]);
}
