//! `blufioctl doctor`: the daemon's health checks, one line each, with what to do about the ones
//! that are not ok. The checks themselves live in blufiod's health registry (`RunChecks`).

use blufio_proto::control::v1::{CheckLevel, CheckResult};
use serde::Serialize;

use super::Context;
use crate::cli::DoctorArgs;
use crate::output::{Cell, Human, Paint, Render, Style, one_line, render_table};
use crate::{Failure, Outcome};

/// Runs the checks; any failed check makes the exit code 1.
pub async fn run(context: &Context<'_>, args: DoctorArgs) -> Result<Outcome, Failure> {
    let DoctorArgs { deep, only, output } = args;
    let response = context.connect().await?.run_checks(deep, only).await?;
    let report = Report {
        checks: &response.checks,
    };
    context.printer.emit(&report, output.json)?;
    Ok(if report.count(CheckLevel::Fail) > 0 {
        Outcome::Invalid
    } else {
        Outcome::Success
    })
}

/// What the daemon's checks found.
struct Report<'a> {
    checks: &'a [CheckResult],
}

impl Report<'_> {
    fn count(&self, level: CheckLevel) -> usize {
        self.checks.iter().filter(|check| check.level() == level).count()
    }
}

/// A level as `doctor` names it.
fn level_name(level: CheckLevel) -> &'static str {
    match level {
        CheckLevel::Ok => "ok",
        CheckLevel::Warn => "warn",
        CheckLevel::Fail => "fail",
        // A daemon newer than this client; shown, never taken for ok.
        CheckLevel::Unspecified => "unknown",
    }
}

/// `doctor --json`.
#[derive(Serialize)]
struct ReportJson<'a> {
    checks: Vec<CheckJson<'a>>,
    ok: usize,
    warn: usize,
    fail: usize,
}

#[derive(Serialize)]
struct CheckJson<'a> {
    name: &'a str,
    level: &'static str,
    detail: &'a str,
    hint: Option<&'a str>,
    duration_seconds: f64,
    deep: bool,
}

impl Render for Report<'_> {
    fn json(&self) -> impl Serialize {
        ReportJson {
            checks: self
                .checks
                .iter()
                .map(|check| CheckJson {
                    name: &check.name,
                    level: level_name(check.level()),
                    detail: &check.detail,
                    hint: (!check.hint.is_empty()).then_some(check.hint.as_str()),
                    duration_seconds: check.duration_seconds,
                    deep: check.deep,
                })
                .collect(),
            ok: self.count(CheckLevel::Ok),
            warn: self.count(CheckLevel::Warn),
            fail: self.count(CheckLevel::Fail),
        }
    }

    /// One line per check: level, name, duration, what it saw and (when there is one) the fix;
    /// then the counts.
    fn human(&self, style: Style) -> Human {
        let rows: Vec<Vec<Cell>> = self
            .checks
            .iter()
            .map(|check| {
                let level = check.level();
                let paint = match level {
                    CheckLevel::Ok => Paint::None,
                    CheckLevel::Warn => Paint::Yellow,
                    CheckLevel::Fail | CheckLevel::Unspecified => Paint::Red,
                };
                let mut said = one_line(&check.detail);
                if !check.hint.is_empty() {
                    said.push_str(" (fix: ");
                    said.push_str(&one_line(&check.hint));
                    said.push(')');
                }
                vec![
                    Cell::painted(style, paint, level_name(level)),
                    Cell::plain(&check.name),
                    Cell::plain(&format!("{:.0} ms", check.duration_seconds * 1000.0)),
                    Cell::plain(&said),
                ]
            })
            .collect();
        let mut stdout = render_table(style, &rows);
        let (ok, warn, fail) = (
            self.count(CheckLevel::Ok),
            self.count(CheckLevel::Warn),
            self.count(CheckLevel::Fail),
        );
        stdout.push_str(&format!("{ok} ok, {warn} to look at, {fail} failed\n"));
        Human {
            stdout,
            ..Human::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, level: CheckLevel, detail: &str, hint: &str) -> CheckResult {
        CheckResult {
            name: name.to_owned(),
            level: level.into(),
            detail: detail.to_owned(),
            hint: hint.to_owned(),
            duration_seconds: 0.0123,
            deep: name == "integrity",
        }
    }

    #[test]
    fn one_line_per_check_with_the_fix_and_json_with_counts() {
        let checks = [
            check("storage", CheckLevel::Ok, "the writer and a reader answer", ""),
            check(
                "vault",
                CheckLevel::Warn,
                "the key sits beside\nthe data",
                "use a credential",
            ),
            check(
                "integrity",
                CheckLevel::Fail,
                "damaged: \x1b[31mpage 4",
                "restore a backup",
            ),
        ];
        let report = Report { checks: &checks };
        let human = report.human(Style::PLAIN);
        assert_eq!(
            human.stdout,
            "ok\tstorage\t12 ms\tthe writer and a reader answer\n\
             warn\tvault\t12 ms\tthe key sits beside the data (fix: use a credential)\n\
             fail\tintegrity\t12 ms\tdamaged: ^[[31mpage 4 (fix: restore a backup)\n\
             1 ok, 1 to look at, 1 failed\n"
        );
        let json = serde_json::to_value(report.json()).unwrap();
        assert_eq!(json["fail"], 1);
        assert_eq!(json["warn"], 1);
        assert_eq!(json["checks"][0]["hint"], serde_json::Value::Null);
        assert_eq!(json["checks"][1]["level"], "warn");
        assert_eq!(json["checks"][2]["deep"], true);
        assert_eq!(json["checks"][2]["hint"], "restore a backup");
    }
}
