//! What every command's output is made of: the [`Render`] trait that each command's view
//! implements, once for `--json` and once for people, and the presentation helpers the commands
//! share (styles, table layout, humanized numbers and dates, the JSON shapes several commands
//! use). Rendering builds strings and never writes or talks to the daemon, so it is unit-tested
//! without a socket; `main`'s `Printer` writes what it builds.
//!
//! The `--json` shapes are documented in `docs/cli-json.md`, included below: that file is the
//! one copy, so the docs and these sources cannot drift apart. Each command's shapes live in its
//! module under `commands/`, next to its human output.
#![doc = include_str!("../../docs/cli-json.md")]

use std::ffi::OsStr;

use blufio_proto::control::v1::{CostStatus, TokenUsage};
use serde::Serialize;

/// A command's answer, ready to print either way. `--json` and human output are two renderings
/// of one view, so a command builds its view once and `Printer::emit` picks the rendering.
pub trait Render {
    /// The `--json` document, in the shape that `docs/cli-json.md` documents.
    fn json(&self) -> impl Serialize;

    /// Human-readable output, decorated with `style`.
    fn human(&self, style: Style) -> Human;
}

/// How human-readable output is decorated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour and bold/dim escapes.
    pub color: bool,
    /// Pad columns so they line up; otherwise separate them plainly.
    pub align: bool,
}

impl Style {
    /// Decides the style from `--plain`, whether the stream is a terminal, and `NO_COLOR` (any
    /// non-empty value turns colour off, per <https://no-color.org>).
    pub fn detect(plain: bool, is_terminal: bool, no_color: Option<&OsStr>) -> Style {
        let no_color = no_color.is_some_and(|value| !value.is_empty());
        Style {
            color: !plain && is_terminal && !no_color,
            align: !plain,
        }
    }

    /// Undecorated output, for tests and for streams that are not terminals.
    #[cfg(test)]
    pub const PLAIN: Style = Style {
        color: false,
        align: false,
    };

    /// Wraps `text` in the escapes for `paint` when colour is on.
    pub fn paint(self, paint: Paint, text: &str) -> String {
        let code = match paint {
            Paint::None => return text.to_owned(),
            Paint::Bold => "1",
            Paint::Dim => "2",
            Paint::Red => "31",
            Paint::Yellow => "33",
        };
        if self.color && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// A text decoration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    None,
    Bold,
    Dim,
    Red,
    Yellow,
}

/// Human-readable output of one command: what goes to stdout, and the warning and error lines
/// (without their `warning: `/`error: ` prefix) that `main` writes to stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Human {
    pub stdout: String,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// Serializes one `--json` document: pretty-printed, with a trailing newline.
pub fn json_document(value: &impl Serialize) -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

// ---------------------------------------------------------------------------------------------
// humanizing

/// A duration as its two most significant units: "45s", "3m 12s", "2h 5m", "4d 1h".
pub fn humanize_duration(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    if seconds < MINUTE {
        format!("{seconds}s")
    } else if seconds < HOUR {
        format!("{}m {}s", seconds / MINUTE, seconds % MINUTE)
    } else if seconds < DAY {
        format!("{}h {}m", seconds / HOUR, seconds % HOUR / MINUTE)
    } else {
        format!("{}d {}h", seconds / DAY, seconds % DAY / HOUR)
    }
}

/// A byte count in binary units with one decimal: "512 B", "1.5 KiB", "12.0 MiB".
pub fn humanize_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss, reason = "display only; one decimal is shown")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Dollars and cents ("$3.40"), with as many more decimals (up to six, a micro-dollar) as an
/// amount under a cent needs, so that a small cap or spend never reads as "$0.00": "$0.0025".
pub fn usd_amount(usd: f64) -> String {
    let cents = format!("{usd:.2}");
    let exact = cents.parse::<f64>().is_ok_and(|rounded| (rounded - usd).abs() < 5e-7);
    if exact || usd.abs() >= 100.0 {
        return format!("${cents}");
    }
    let fine = format!("{usd:.6}");
    let trimmed = fine.trim_end_matches('0');
    let decimals = trimmed.split_once('.').map_or(0, |(_, decimals)| decimals.len());
    if decimals < 2 {
        format!("${cents}")
    } else {
        format!("${trimmed}")
    }
}

/// Dollars with four decimals, for single turns and table rows where cents are too coarse.
pub fn usd_precise(usd: f64) -> String {
    format!("${usd:.4}")
}

/// A token count: "950", "12.3k", "4.5M", "1.2G".
pub fn humanize_count(count: u64) -> String {
    #[allow(clippy::cast_precision_loss, reason = "display only; one decimal is shown")]
    let value = count as f64;
    if count < 1000 {
        count.to_string()
    } else if count < 1_000_000 {
        format!("{:.1}k", value / 1e3)
    } else if count < 1_000_000_000 {
        format!("{:.1}M", value / 1e6)
    } else {
        format!("{:.1}G", value / 1e9)
    }
}

/// How long ago `then` was, seen at `now` (both Unix seconds): "just now", "45s ago", "3m ago",
/// "5h ago", "12d ago", and the UTC date for anything older than 30 days.
pub fn humanize_age(now: i64, then: i64) -> String {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    let ago = now.saturating_sub(then);
    // A timestamp slightly in the future is clock skew between the daemon and us, not news.
    if ago < 10 {
        "just now".to_owned()
    } else if ago < MINUTE {
        format!("{ago}s ago")
    } else if ago < HOUR {
        format!("{}m ago", ago / MINUTE)
    } else if ago < DAY {
        format!("{}h ago", ago / HOUR)
    } else if ago < 30 * DAY {
        format!("{}d ago", ago / DAY)
    } else {
        let (year, month, day) = civil_from_days(then.div_euclid(DAY));
        format!("{year:04}-{month:02}-{day:02}")
    }
}

/// Unix seconds as "2026-11-28 08:05 UTC".
pub fn format_utc(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        seconds_of_day / 3600,
        seconds_of_day % 3600 / 60
    )
}

/// Unix seconds as a compact ISO 8601 UTC stamp for file names: "20261128T080500Z".
pub fn utc_stamp(unix_seconds: i64) -> String {
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(unix_seconds.div_euclid(86_400));
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds_of_day / 3600,
        seconds_of_day % 3600 / 60,
        seconds_of_day % 60
    )
}

/// Seconds with one decimal under a minute ("0.4s", "12.5s"), else as [`humanize_duration`].
pub fn humanize_seconds(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{:.1}s", seconds.max(0.0))
    } else {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "positive, display only"
        )]
        humanize_duration(seconds as u64)
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01, after Howard
/// Hinnant's `civil_from_days`; it saves a date-time dependency for two columns.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// At most `width` characters of `text`, ending in "…" when cut.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `text` with runs of whitespace (newlines included) folded to single spaces.
pub fn one_line(text: &str) -> String {
    printable(&text.split_whitespace().collect::<Vec<_>>().join(" "), false)
}

/// The first line of `text`, at most `width` characters, marked "…" when there is more.
pub fn first_line(text: &str, width: usize) -> String {
    let trimmed = text.trim();
    let first = trimmed.lines().next().unwrap_or("");
    if first.len() < trimmed.len() {
        truncate(&format!("{first} …"), width)
    } else {
        truncate(first, width)
    }
}

/// JSON text re-serialized without whitespace; other text folded to one line.
pub fn compact_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text).map_or_else(|_| one_line(text), |value| value.to_string())
}

// ---------------------------------------------------------------------------------------------
// layout

/// One table cell: text that may contain escapes, and its visible width.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The text, with escapes when painted.
    pub text: String,
    /// How many columns the text takes on screen.
    pub width: usize,
}

impl Cell {
    /// A cell of undecorated text (control characters shown, never sent to the terminal).
    pub fn plain(text: &str) -> Cell {
        let text = printable(text, false);
        Cell {
            width: text.chars().count(),
            text,
        }
    }

    /// A cell of text decorated with `paint` (when `style` has colour).
    pub fn painted(style: Style, paint: Paint, text: &str) -> Cell {
        let text = printable(text, false);
        Cell {
            width: text.chars().count(),
            text: style.paint(paint, &text),
        }
    }

    /// Appends `text`, decorated with `paint`.
    pub fn push(&mut self, style: Style, paint: Paint, text: &str) {
        let text = printable(text, false);
        self.text.push_str(&style.paint(paint, &text));
        self.width += text.chars().count();
    }
}

/// `text` made safe to print on a terminal: text that came from the daemon, a gateway or a model
/// (a session title, a model name, an answer) could otherwise carry escape sequences that retitle
/// the window, clear the screen or write the clipboard, or newlines that forge lines. Control
/// characters are shown in caret notation (`^[` for ESC) and C1 controls as `�`; newlines (and
/// tabs) are kept only when `multiline`, else they become spaces.
pub fn printable(text: &str, multiline: bool) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' if multiline => shown.push(c),
            '\n' | '\t' | '\r' => shown.push(' '),
            '\u{7f}' => shown.push_str("^?"),
            c if u32::from(c) < 0x20 => {
                shown.push('^');
                shown.push(char::from_u32(u32::from(c) + 0x40).unwrap_or('?'));
            }
            '\u{80}'..='\u{9f}' => shown.push('\u{fffd}'),
            c => shown.push(c),
        }
    }
    shown
}

/// Rows of cells as columns: padded with two spaces between them when aligning, separated by a
/// tab otherwise. Trailing blanks are dropped.
pub fn render_table(style: Style, rows: &[Vec<Cell>]) -> String {
    let n_columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; n_columns];
    for row in rows {
        for (column_idx, cell) in row.iter().enumerate() {
            widths[column_idx] = widths[column_idx].max(cell.width);
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column_idx, cell) in row.iter().enumerate() {
            let is_last = column_idx + 1 == row.len();
            line.push_str(&cell.text);
            if is_last {
                break;
            }
            if style.align {
                let padding = widths[column_idx] - cell.width + 2;
                line.extend(std::iter::repeat_n(' ', padding));
            } else {
                line.push('\t');
            }
        }
        if style.align {
            line.truncate(line.trim_end_matches(' ').len());
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `label: value` lines, with the values lined up when aligning.
pub fn render_pairs(style: Style, rows: &[(String, Cell)]) -> String {
    let label_width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let mut line = format!("{label}:");
        if value.width > 0 {
            if style.align {
                let padding = label_width - label.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', padding));
            } else {
                line.push(' ');
            }
            line.push_str(&value.text);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `text`, or none when it is empty: the JSON shapes' `null` for an absent string.
pub fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

// ---------------------------------------------------------------------------------------------
// JSON shapes used by several commands (the stable contract documented at the top of this file)

/// The spend against the caps, in `status` and `usage`.
#[derive(Debug, Serialize)]
pub struct CostJson {
    today_usd: f64,
    month_usd: f64,
    daily_cap_usd: f64,
    monthly_cap_usd: f64,
    reserved_usd: f64,
}

impl From<&CostStatus> for CostJson {
    fn from(cost: &CostStatus) -> Self {
        CostJson {
            today_usd: cost.today_usd,
            month_usd: cost.month_usd,
            daily_cap_usd: cost.daily_cap_usd,
            monthly_cap_usd: cost.monthly_cap_usd,
            reserved_usd: cost.reserved_usd,
        }
    }
}

/// Tokens of a turn, a day or a model, in `chat` and `usage`.
#[derive(Debug, Serialize)]
pub struct UsageJson {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl From<Option<&TokenUsage>> for UsageJson {
    fn from(usage: Option<&TokenUsage>) -> Self {
        let usage = usage.copied().unwrap_or_default();
        UsageJson {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_creation_input_tokens: usage.cache_creation_input_tokens,
            cache_read_input_tokens: usage.cache_read_input_tokens,
        }
    }
}

/// JSON text from the daemon as a value; should it ever not parse, keep the text rather than fail
/// the whole command.
pub fn json_or_text(text: &str) -> serde_json::Value {
    if text.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// Styles, a clock and samples for the rendering tests of every command.
#[cfg(test)]
pub mod testing {
    use blufio_proto::control::v1::{GatewayStatus, TokenUsage, TurnCompleted};

    use super::Style;

    /// Aligned output without colour, comparable byte for byte.
    pub const ALIGNED: Style = Style {
        color: false,
        align: true,
    };
    /// Aligned output with colour.
    pub const COLOR: Style = Style {
        color: true,
        align: true,
    };

    /// The tests' clock: 2026-11-28 08:00 UTC.
    pub const NOW: i64 = 1_795_852_800;

    /// A gateway on a wildcard address, with a pin and a problem.
    pub fn sample_gateway() -> GatewayStatus {
        GatewayStatus {
            listen: "0.0.0.0:8443".into(),
            scheme: "https".into(),
            tls_fingerprint_sha256: "AB:CD:EF".into(),
            active_devices: 0,
            problem: "no device is registered".into(),
        }
    }

    /// A completed turn with usage, cost and model.
    pub fn sample_completed() -> TurnCompleted {
        TurnCompleted {
            message_id: "m-out".into(),
            usage: Some(TokenUsage {
                input_tokens: 1200,
                output_tokens: 80,
                cache_creation_input_tokens: 10,
                cache_read_input_tokens: 1024,
            }),
            cost_usd: 0.012_34,
            provider_calls: 2,
            stop_reason: "end_turn".into(),
            model: "claude-sonnet-4-5".into(),
        }
    }

    /// `text` without its ANSI escapes.
    pub fn strip_ansi(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use blufio_proto::control::v1::ReloadConfigResponse;
    use serde_json::json;

    use super::testing::{ALIGNED, COLOR, NOW};
    use super::*;
    use crate::commands::config::ConfigReload;

    #[test]
    fn durations_use_two_units() {
        assert_eq!(humanize_duration(0), "0s");
        assert_eq!(humanize_duration(59), "59s");
        assert_eq!(humanize_duration(60), "1m 0s");
        assert_eq!(humanize_duration(192), "3m 12s");
        assert_eq!(humanize_duration(3600 + 5 * 60 + 7), "1h 5m");
        assert_eq!(humanize_duration(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(1023), "1023 B");
        assert_eq!(humanize_bytes(1024), "1.0 KiB");
        assert_eq!(humanize_bytes(1536), "1.5 KiB");
        assert_eq!(humanize_bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(humanize_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(humanize_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn style_follows_plain_terminal_and_no_color() {
        let tty = Style::detect(false, true, None);
        assert!(tty.color && tty.align);
        assert!(!Style::detect(false, false, None).color, "a pipe gets no colour");
        assert!(!Style::detect(false, true, Some(OsStr::new("1"))).color);
        assert!(
            Style::detect(false, true, Some(OsStr::new(""))).color,
            "an empty NO_COLOR does not count"
        );
        assert_eq!(Style::detect(true, true, None), Style::PLAIN);
    }

    #[test]
    fn paint_only_with_colour() {
        assert_eq!(COLOR.paint(Paint::Red, "x"), "\x1b[31mx\x1b[0m");
        assert_eq!(ALIGNED.paint(Paint::Red, "x"), "x");
        assert_eq!(COLOR.paint(Paint::None, "x"), "x");
    }

    #[test]
    fn json_document_is_one_line_terminated_document() {
        let reload = ReloadConfigResponse {
            applied: vec!["log.level".into()],
            restart_required: vec![],
        };
        let text = json_document(&ConfigReload(&reload).json()).expect("serializes");
        assert!(text.ends_with("}\n") && !text.ends_with("\n\n"));
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("parses back");
        assert_eq!(parsed, json!({"applied": ["log.level"], "restart_required": []}));
    }

    #[test]
    fn ages_and_dates() {
        assert_eq!(humanize_age(NOW, NOW), "just now");
        assert_eq!(humanize_age(NOW, NOW + 30), "just now", "clock skew");
        assert_eq!(humanize_age(NOW, NOW - 45), "45s ago");
        assert_eq!(humanize_age(NOW, NOW - 3 * 60 - 59), "3m ago");
        assert_eq!(humanize_age(NOW, NOW - 5 * 3600), "5h ago");
        assert_eq!(humanize_age(NOW, NOW - 12 * 86_400), "12d ago");
        assert_eq!(humanize_age(NOW, 1_764_000_000), "2025-11-24");
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59 UTC");
        assert_eq!(format_utc(NOW), "2026-11-28 08:00 UTC");
        assert_eq!(utc_stamp(NOW + 5 * 60 + 7), "20261128T080507Z");
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(humanize_seconds(0.44), "0.4s");
        assert_eq!(humanize_seconds(59.94), "59.9s");
        assert_eq!(humanize_seconds(192.7), "3m 12s");
    }

    #[test]
    fn counts_money_and_text_helpers() {
        assert_eq!(humanize_count(999), "999");
        assert_eq!(humanize_count(12_345), "12.3k");
        assert_eq!(humanize_count(1_500_000), "1.5M");
        assert_eq!(humanize_count(2_000_000_000), "2.0G");
        assert_eq!(printable("a\u{1b}]0;x\u{7}b", false), "a^[]0;x^Gb");
        assert_eq!(printable("one\ntwo\r", false), "one two ");
        assert_eq!(printable("one\ntwo", true), "one\ntwo");
        assert_eq!(printable("\u{9b}2J\u{7f}", false), "\u{fffd}2J^?");
        assert_eq!(Cell::plain("\u{1b}[2J").width, 5, "^[[2J, as shown");
        assert_eq!(usd_precise(0.012_34), "$0.0123");
        assert_eq!(usd_amount(3.4), "$3.40");
        assert_eq!(usd_amount(0.0), "$0.00");
        assert_eq!(usd_amount(0.0025), "$0.0025");
        assert_eq!(usd_amount(0.000001), "$0.000001");
        assert_eq!(usd_amount(0.123_456_789), "$0.123457");
        assert_eq!(usd_amount(1234.5678), "$1234.57");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("héllo", 3), "hé…", "characters, not bytes");
        assert_eq!(one_line(" a\n b\tc "), "a b c");
        assert_eq!(first_line("one\ntwo", 100), "one …");
        assert_eq!(first_line("  only  ", 100), "only");
        assert_eq!(compact_json("{ \"a\" : [1, 2] }"), "{\"a\":[1,2]}");
        assert_eq!(compact_json("not\njson"), "not json");
    }
}

/// Writes one line to stderr; a closed stderr (`blufioctl ... 2>&1 | head -1`) is not worth a
/// panic, so the line is dropped.
pub fn eprint_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
