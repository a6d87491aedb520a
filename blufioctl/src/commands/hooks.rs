//! `blufioctl hooks list|test`: the owner's programs that blufiod runs at lifecycle points and on
//! alerts (`ListHooks`, `TestHook`).

use blufio_proto::control::v1::{HookInfo, HookRun, ListHooksResponse, TestHookResponse};
use blufio_proto::httpsig::unix_now;
use serde::Serialize;

use super::Context;
use crate::cli::HooksCommand;
use crate::output::{Cell, Human, Paint, Render, Style, humanize_age, humanize_seconds, render_table};
use crate::{Failure, Outcome};

/// Runs one `hooks` subcommand.
pub async fn run(context: &Context<'_>, command: HooksCommand) -> Result<Outcome, Failure> {
    match command {
        HooksCommand::List(output) => {
            let response = context.connect().await?.list_hooks().await?;
            context.printer.emit(
                &HookList {
                    response: &response,
                    now: unix_now(),
                },
                output.json,
            )?;
            Ok(Outcome::Success)
        }
        HooksCommand::Test { name, output } => {
            let response = context.connect().await?.test_hook(name).await?;
            context.printer.emit(&TestReport { response: &response }, output.json)?;
            Ok(if response.runs.iter().all(|run| run.outcome == "ok") {
                Outcome::Success
            } else {
                Outcome::Invalid
            })
        }
    }
}

/// `hooks list`.
struct HookList<'a> {
    response: &'a ListHooksResponse,
    now: i64,
}

#[derive(Serialize)]
struct HookListJson<'a> {
    hooks: Vec<HookJson<'a>>,
    timeout_seconds: u64,
    max_concurrent: u32,
}

#[derive(Serialize)]
struct HookJson<'a> {
    name: &'a str,
    commands: Vec<&'a [String]>,
    last_run: Option<RunJson<'a>>,
}

#[derive(Serialize)]
struct RunJson<'a> {
    program: &'a str,
    started_at: i64,
    duration_seconds: f64,
    outcome: &'a str,
    exit_code: Option<i32>,
    detail: &'a str,
}

fn run_json(run: &HookRun) -> RunJson<'_> {
    RunJson {
        program: &run.program,
        started_at: run.started_at,
        duration_seconds: run.duration_seconds,
        outcome: &run.outcome,
        exit_code: run.exited.then_some(run.exit_code),
        detail: &run.detail,
    }
}

fn outcome_paint(outcome: &str) -> Paint {
    match outcome {
        "ok" => Paint::None,
        "dropped" | "cancelled" => Paint::Yellow,
        _ => Paint::Red,
    }
}

/// A command as the owner would type it (arguments with spaces quoted).
fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                format!("{arg:?}")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Render for HookList<'_> {
    fn json(&self) -> impl Serialize {
        HookListJson {
            hooks: self
                .response
                .hooks
                .iter()
                .map(|hook| HookJson {
                    name: &hook.name,
                    commands: hook.commands.iter().map(|command| command.argv.as_slice()).collect(),
                    last_run: hook.last_run.as_ref().map(run_json),
                })
                .collect(),
            timeout_seconds: self.response.timeout_seconds,
            max_concurrent: self.response.max_concurrent,
        }
    }

    /// One line per command of each configured hook, with the hook's last run; then the hooks
    /// that have no command.
    fn human(&self, style: Style) -> Human {
        let mut rows = Vec::new();
        let mut unset = Vec::new();
        for HookInfo {
            name,
            commands,
            last_run,
        } in &self.response.hooks
        {
            if commands.is_empty() {
                unset.push(name.as_str());
                continue;
            }
            let last = match last_run {
                None => Cell::plain("not run yet"),
                Some(run) => Cell::painted(
                    style,
                    outcome_paint(&run.outcome),
                    &format!(
                        "{} {} ({}, {})",
                        run.outcome,
                        humanize_age(self.now, run.started_at),
                        run.detail,
                        humanize_seconds(run.duration_seconds)
                    ),
                ),
            };
            let mut last = Some(last);
            for (index, command) in commands.iter().enumerate() {
                let hook = if index == 0 { name.as_str() } else { "" };
                let mut row = vec![Cell::plain(hook), Cell::plain(&shown(&command.argv))];
                // The hook's last run, on its first line.
                row.extend(last.take());
                rows.push(row);
            }
        }
        let mut stdout = if rows.is_empty() {
            "no hooks are set; [hooks] in the config file sets them (see blufiod.example.toml)\n".to_owned()
        } else {
            render_table(style, &rows)
        };
        if !unset.is_empty() && !rows.is_empty() {
            stdout.push_str(&format!("not set: {}\n", unset.join(", ")));
        }
        stdout.push_str(&format!(
            "each command may run {} s; at most {} run at once\n",
            self.response.timeout_seconds, self.response.max_concurrent
        ));
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// `hooks test`.
struct TestReport<'a> {
    response: &'a TestHookResponse,
}

#[derive(Serialize)]
struct TestJson<'a> {
    runs: Vec<RunJson<'a>>,
    ok: bool,
}

impl Render for TestReport<'_> {
    fn json(&self) -> impl Serialize {
        TestJson {
            runs: self.response.runs.iter().map(run_json).collect(),
            ok: self.response.runs.iter().all(|run| run.outcome == "ok"),
        }
    }

    fn human(&self, style: Style) -> Human {
        let rows: Vec<Vec<Cell>> = self
            .response
            .runs
            .iter()
            .map(|run| {
                vec![
                    Cell::painted(style, outcome_paint(&run.outcome), &run.outcome),
                    Cell::plain(&run.program),
                    Cell::plain(&humanize_seconds(run.duration_seconds)),
                    Cell::plain(&run.detail),
                ]
            })
            .collect();
        let mut stdout = render_table(style, &rows);
        stdout.push_str("their output is in the daemon's log: blufioctl logs\n");
        Human {
            stdout,
            ..Human::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use blufio_proto::control::v1::HookCommand;

    use super::*;

    fn run(outcome: &str, exit_code: Option<i32>) -> HookRun {
        HookRun {
            program: "/usr/bin/curl".to_owned(),
            started_at: 1_000,
            duration_seconds: 0.25,
            outcome: outcome.to_owned(),
            exited: exit_code.is_some(),
            exit_code: exit_code.unwrap_or_default(),
            detail: exit_code.map_or_else(|| "killed after 30 s".to_owned(), |code| format!("exit status {code}")),
        }
    }

    #[test]
    fn list_shows_each_command_with_the_last_run_and_the_unset_hooks() {
        let response = ListHooksResponse {
            hooks: vec![
                HookInfo {
                    name: "on_backup".to_owned(),
                    commands: vec![
                        HookCommand {
                            argv: vec!["/usr/bin/rsync".to_owned(), "a b".to_owned()],
                        },
                        HookCommand {
                            argv: vec!["/usr/bin/logger".to_owned()],
                        },
                    ],
                    last_run: Some(run("failed", Some(3))),
                },
                HookInfo {
                    name: "pre_start".to_owned(),
                    commands: Vec::new(),
                    last_run: None,
                },
            ],
            timeout_seconds: 30,
            max_concurrent: 4,
        };
        let list = HookList {
            response: &response,
            now: 1_060,
        };
        let human = list.human(Style::PLAIN).stdout;
        assert_eq!(
            human,
            "on_backup\t/usr/bin/rsync \"a b\"\tfailed 1m ago (exit status 3, 0.2s)\n\
             \t/usr/bin/logger\n\
             not set: pre_start\n\
             each command may run 30 s; at most 4 run at once\n"
        );
        let json = serde_json::to_value(list.json()).unwrap();
        assert_eq!(json["hooks"][0]["commands"][0][1], "a b");
        assert_eq!(json["hooks"][0]["last_run"]["exit_code"], 3);
        assert_eq!(json["hooks"][1]["last_run"], serde_json::Value::Null);
        assert_eq!(json["max_concurrent"], 4);
    }

    #[test]
    fn a_test_report_says_how_each_command_ended() {
        let response = TestHookResponse {
            runs: vec![run("ok", Some(0)), run("timeout", None)],
        };
        let report = TestReport { response: &response };
        let json = serde_json::to_value(report.json()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["runs"][1]["exit_code"], serde_json::Value::Null);
        assert!(
            report
                .human(Style::PLAIN)
                .stdout
                .contains("timeout\t/usr/bin/curl\t0.2s\tkilled after 30 s\n")
        );
    }
}
