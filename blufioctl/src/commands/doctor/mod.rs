//! `blufioctl doctor`: the daemon's health checks, one line each, with what to do about the ones
//! that are not ok. The checks themselves live in blufiod's health registry (`RunChecks`); with
//! the daemon down, [`offline`] checks what it can from the outside.

mod offline;

use blufio_proto::control::v1::{CheckLevel, CheckResult};
use serde::Serialize;

use super::Context;
use crate::cli::DoctorArgs;
use std::error::Error as _;

use crate::client::ClientError;
use crate::output::{Cell, Human, Paint, Render, Style, one_line, printable, render_table};
use crate::{Failure, Outcome};

/// Runs the checks; any failed check makes the exit code 1.
pub async fn run(context: &Context<'_>, args: DoctorArgs) -> Result<Outcome, Failure> {
    let DoctorArgs {
        deep,
        only,
        config,
        output,
    } = args;
    let answered = async { context.connect().await?.run_checks(deep, only).await };
    let response = match answered.await {
        Ok(response) => response,
        Err(error @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
            let why = match &error {
                ClientError::Timeout { after, .. } => format!("no answer within {} s", after.as_secs()),
                other => other.source().map_or_else(String::new, ToString::to_string),
            };
            let denied = matches!(&error, ClientError::Unreachable { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied);
            let offline = offline::run(&context.socket, &why, denied, config.as_deref()).await;
            let report = Report {
                checks: &offline.checks,
                reachable: false,
                journal: offline.journal.as_deref(),
            };
            context.printer.emit(&report, output.json)?;
            // The usual unreachable error and hint follow on stderr, with exit code 3.
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
    let report = Report {
        checks: &response.checks,
        reachable: true,
        journal: None,
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
    /// Whether these are the daemon's checks, or the offline ones.
    reachable: bool,
    /// With the daemon down: the last lines of its unit's journal, when readable.
    journal: Option<&'a [String]>,
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
    daemon_reachable: bool,
    journal: Option<&'a [String]>,
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
            daemon_reachable: self.reachable,
            journal: self.journal,
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
        if let Some(journal) = self.journal {
            stdout.push_str("\nthe last lines of blufiod.service's journal:\n");
            for line in journal {
                stdout.push_str(&format!("  {}\n", printable(line, false)));
            }
        }
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
        let report = Report {
            checks: &checks,
            reachable: true,
            journal: None,
        };
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
