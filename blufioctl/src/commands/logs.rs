//! `blufioctl logs`: the daemon's recent log lines from its in-memory ring (`ReadLogs`), and,
//! with `-f`, each new one as it is logged.

use std::io::Write as _;

use blufio_proto::control::v1::{LogLevel, LogLine};
use serde::Serialize;

use super::Context;
use crate::cli::{LogLevelArg, LogsArgs};
use crate::client::ClientError;
use crate::output::{Paint, Style, printable};
use crate::{Failure, Outcome};

/// Prints the lines; follows until the daemon stops, the reader of stdout goes away, or Ctrl-C.
pub async fn run(context: &Context<'_>, args: LogsArgs) -> Result<Outcome, Failure> {
    let LogsArgs {
        lines,
        follow,
        level,
        json,
    } = args;
    let level = match level {
        LogLevelArg::Error => LogLevel::Error,
        LogLevelArg::Warn => LogLevel::Warn,
        LogLevelArg::Info => LogLevel::Info,
        LogLevelArg::Debug => LogLevel::Debug,
        LogLevelArg::Trace => LogLevel::Trace,
    };
    let mut stream = context.connect().await?.read_logs(lines, level, follow).await?;
    let style = context.printer.stdout_style;
    let read = async {
        while let Some(line) = stream.next().await? {
            if line.missed > 0 {
                context.printer.warning(&format!(
                    "{} lines missed here: this reader fell behind the daemon's log",
                    line.missed
                ));
            }
            let text = if json {
                json_line(&line)
            } else {
                human_line(style, &line)
            };
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
                Ok(()) => {}
                // `blufioctl logs -f | head`: the reader is done, and so is this command.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(error) => {
                    return Err(Failure::from(
                        anyhow::Error::new(error).context("cannot write to stdout"),
                    ));
                }
            }
        }
        Ok::<(), Failure>(())
    };
    if follow {
        read.await?;
    } else {
        tokio::time::timeout(context.call_timeout, read)
            .await
            .map_err(|_| ClientError::Timeout {
                socket: context.socket.clone(),
                after: context.call_timeout,
            })??;
    }
    Ok(Outcome::Success)
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
        // A daemon newer than this client.
        LogLevel::Unspecified => "unknown",
    }
}

/// `2026-11-30T21:06:19.123Z  INFO blufiod::daemon: message key=value`, with the level coloured
/// on a terminal. The text is made printable: it can carry names that callers chose.
fn human_line(style: Style, line: &LogLine) -> String {
    let level = line.level();
    let paint = match level {
        LogLevel::Error => Paint::Red,
        LogLevel::Warn => Paint::Yellow,
        LogLevel::Debug | LogLevel::Trace => Paint::Dim,
        LogLevel::Info | LogLevel::Unspecified => Paint::None,
    };
    let name = format!("{:>5}", level_name(level).to_uppercase());
    format!(
        "{} {} {}\n",
        utc_millis(line.unix_ms),
        style.paint(paint, &name),
        printable(&line.text, false)
    )
}

/// One `logs --json` line.
#[derive(Serialize)]
struct LineJson<'a> {
    seq: u64,
    time: String,
    unix_ms: i64,
    level: &'static str,
    text: &'a str,
    missed: u64,
}

fn json_line(line: &LogLine) -> String {
    let mut text = serde_json::to_string(&LineJson {
        seq: line.seq,
        time: utc_millis(line.unix_ms),
        unix_ms: line.unix_ms,
        level: level_name(line.level()),
        text: &line.text,
        missed: line.missed,
    })
    .expect("a log line serializes");
    text.push('\n');
    text
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds: "2026-11-30T21:06:19.123Z".
fn utc_millis(unix_ms: i64) -> String {
    let seconds = unix_ms.div_euclid(1000);
    let date = crate::output::format_utc(seconds);
    // format_utc gives "2026-11-30 21:06 UTC"; the seconds and milliseconds are added here.
    let (day, minute) = date.split_once(' ').unwrap_or((&date, ""));
    let minute = minute.trim_end_matches(" UTC");
    format!(
        "{day}T{minute}:{:02}.{:03}Z",
        seconds.rem_euclid(60),
        unix_ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: LogLevel, text: &str) -> LogLine {
        LogLine {
            seq: 7,
            unix_ms: 1_796_072_779_123,
            level: level.into(),
            text: text.to_owned(),
            missed: 0,
        }
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(utc_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_millis(1_796_072_779_123), "2026-11-30T21:06:19.123Z");
        assert_eq!(utc_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_human_line_is_one_printable_line() {
        let plain = Style {
            color: false,
            align: false,
        };
        assert_eq!(
            human_line(plain, &line(LogLevel::Warn, "blufiod::gateway: refused\n\u{1b}[2Jname")),
            "2026-11-30T21:06:19.123Z  WARN blufiod::gateway: refused ^[[2Jname\n"
        );
        let coloured = Style {
            color: true,
            align: true,
        };
        assert!(human_line(coloured, &line(LogLevel::Error, "x")).contains("\u{1b}[31mERROR\u{1b}[0m"));
    }

    #[test]
    fn a_json_line_is_one_object() {
        let text = json_line(&line(LogLevel::Debug, "blufiod: a \"quoted\"\nline"));
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["level"], "debug");
        assert_eq!(value["seq"], 7);
        assert_eq!(value["time"], "2026-11-30T21:06:19.123Z");
        assert_eq!(value["text"], "blufiod: a \"quoted\"\nline");
        assert_eq!(value["missed"], 0);
    }
}
