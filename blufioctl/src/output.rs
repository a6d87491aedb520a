//! Everything `blufioctl` prints: human-readable text (aligned, optionally coloured) and the
//! stable `--json` documents. Rendering builds strings and never writes or talks to the daemon,
//! so it is unit-tested here without a socket.
//!
//! # JSON output
//!
//! With `--json` every data-printing command writes exactly one JSON document (pretty-printed,
//! followed by a newline) to stdout, and nothing else to stdout. Errors still go to stderr as
//! `error: ...` lines and the exit code says what happened. The shapes below are stable: fields
//! may be added, but none are renamed, removed or change type. Every key listed is always
//! present; `null` marks an absent value.
//!
//! ## `blufioctl status --json`
//!
//! ```json
//! {
//!   "state": "ready",
//!   "version": "0.1.0",
//!   "pid": 4242,
//!   "uptime_seconds": 192,
//!   "config_path": "/etc/blufio/blufiod.toml",
//!   "config_file_present": true,
//!   "database_path": "/var/lib/blufio/blufio.db",
//!   "database_size_bytes": 1048576,
//!   "socket_path": "/run/blufio/blufiod.sock",
//!   "state_dir": "/var/lib/blufio",
//!   "previous_run_unclean": false,
//!   "subsystems": [{ "name": "control", "status": "listening on /run/blufio/blufiod.sock" }],
//!   "sessions": { "active_sessions": 2, "turns_in_flight": 1 },
//!   "memory": { "rss_bytes": 52428800, "allocated_bytes": 31457280, "limit_bytes": 536870912 },
//!   "cost": { "today_usd": 0.12, "month_usd": 3.4, "daily_cap_usd": 1.0, "monthly_cap_usd": 0.0 },
//!   "caller_access": "full"
//! }
//! ```
//!
//! - `state`: one of `"unspecified"`, `"starting"`, `"ready"`, `"reloading"`, `"stopping"`, or
//!   `"unknown"` for a state this client does not know.
//! - `sessions`, `memory` and `cost` are `null` until the daemon has the subsystem that fills them.
//! - `memory.limit_bytes`, `cost.daily_cap_usd` and `cost.monthly_cap_usd` are `0` for "no limit".
//! - `caller_access`: `"full"` or `"read-only"`.
//!
//! ## `blufioctl config get [KEY] --json`
//!
//! ```json
//! {
//!   "config_path": "/etc/blufio/blufiod.toml",
//!   "entries": [
//!     {
//!       "key": "log.level",
//!       "value": "info",
//!       "source": "default",
//!       "secret": false,
//!       "restart_required": false,
//!       "unset": false,
//!       "pending_restart": false
//!     }
//!   ]
//! }
//! ```
//!
//! - `entries` is sorted by key; with `KEY` it holds exactly that one entry.
//! - `value` is the value as JSON (string, number, boolean, array or object); a set secret is the
//!   string `"********"`; an unset key is `null` (and `unset` is `true`).
//! - `source`: `"default"`, `"file"` or `"env"`.
//! - `restart_required`: a change to this key only takes effect after a restart of blufiod.
//! - `pending_restart`: the running daemon still uses an older value of this key until it
//!   restarts (the file was changed but the key cannot be applied live).
//!
//! ## `blufioctl config set KEY VALUE --json`
//!
//! ```json
//! {
//!   "config_path": "/etc/blufio/blufiod.toml",
//!   "entry": { "key": "log.level", "value": "debug", "source": "file", "secret": false,
//!              "restart_required": false, "unset": false, "pending_restart": false },
//!   "applied_live": true,
//!   "restart_required": [],
//!   "overridden_by_env": null
//! }
//! ```
//!
//! - `entry` has the shape of a `config get` entry (or is `null` if the daemon sent none).
//! - `restart_required`: keys whose change needs a restart of blufiod to take effect.
//! - `overridden_by_env`: the environment variable that overrides the key, so the value written
//!   to the file is not in effect; `null` when none does.
//!
//! ## `blufioctl config validate [FILE] --json`
//!
//! ```json
//! { "valid": false, "file": "./blufiod.toml", "errors": ["log.level: unknown variant `loud`"] }
//! ```
//!
//! - `file`: the FILE argument as given, or `null` when the daemon validated its own file.
//! - `errors` is empty when `valid` is `true`. The exit code is 1 when `valid` is `false`.
//!
//! ## `blufioctl config reload --json`
//!
//! ```json
//! { "applied": ["log.level"], "restart_required": ["control.socket"] }
//! ```
//!
//! - `applied`: keys whose new values are now in effect.
//! - `restart_required`: keys that changed but need a restart of blufiod to take effect.

use std::ffi::OsStr;
use std::fmt::Write as _;

use blufio_proto::control::v1::{
    ConfigEntry, CostStatus, DaemonState, GetConfigResponse, GetStatusResponse, MemoryStatus, ReloadConfigResponse,
    SessionsStatus, SetConfigResponse, SubsystemStatus, ValidateConfigResponse,
};
use serde::Serialize;

/// The command to suggest when a change needs a restart.
const RESTART_HINT: &str = "restart blufiod to apply (systemctl restart blufiod)";

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
// status

/// `status --json`.
pub fn status_json(status: &GetStatusResponse) -> StatusJson<'_> {
    StatusJson {
        state: state_name(status.state),
        version: &status.version,
        pid: status.pid,
        uptime_seconds: status.uptime_seconds,
        config_path: &status.config_path,
        config_file_present: status.config_file_present,
        database_path: &status.database_path,
        database_size_bytes: status.database_size_bytes,
        socket_path: &status.socket_path,
        state_dir: &status.state_dir,
        previous_run_unclean: status.previous_run_unclean,
        subsystems: status.subsystems.iter().map(SubsystemJson::from).collect(),
        sessions: status.sessions.as_ref().map(SessionsJson::from),
        memory: status.memory.as_ref().map(MemoryJson::from),
        cost: status.cost.as_ref().map(CostJson::from),
        caller_access: &status.caller_access,
    }
}

/// `status` as aligned `key: value` lines.
pub fn status_human(status: &GetStatusResponse, style: Style) -> Human {
    let mut rows: Vec<(String, Cell)> = Vec::new();
    let state = state_name(status.state);
    let state_paint = match status.state() {
        DaemonState::Ready => Paint::Bold,
        DaemonState::Unspecified => Paint::Red,
        DaemonState::Starting | DaemonState::Reloading | DaemonState::Stopping => Paint::Yellow,
    };
    rows.push(("state".into(), Cell::painted(style, state_paint, state)));
    rows.push(("version".into(), Cell::plain(&status.version)));
    rows.push(("pid".into(), Cell::plain(&status.pid.to_string())));
    rows.push(("uptime".into(), Cell::plain(&humanize_duration(status.uptime_seconds))));

    let mut config = Cell::plain(&status.config_path);
    if !status.config_file_present {
        config.push(style, Paint::Dim, " (not present, using defaults)");
    }
    rows.push(("config".into(), config));

    let mut database = Cell::plain(&status.database_path);
    database.push(
        style,
        Paint::None,
        &format!(" ({})", humanize_bytes(status.database_size_bytes)),
    );
    rows.push(("database".into(), database));
    rows.push(("socket".into(), Cell::plain(&status.socket_path)));
    rows.push(("state dir".into(), Cell::plain(&status.state_dir)));
    if status.previous_run_unclean {
        rows.push((
            "previous run".into(),
            Cell::painted(style, Paint::Yellow, "did not shut down cleanly (see the journal)"),
        ));
    }

    if status.subsystems.is_empty() {
        rows.push(("subsystems".into(), Cell::painted(style, Paint::Dim, "none")));
    } else {
        rows.push(("subsystems".into(), Cell::plain("")));
        for subsystem in &status.subsystems {
            rows.push((format!("  {}", subsystem.name), Cell::plain(&subsystem.status)));
        }
    }
    if let Some(sessions) = &status.sessions {
        rows.push(("sessions".into(), Cell::plain(&describe_sessions(sessions))));
    }
    if let Some(memory) = &status.memory {
        rows.push(("memory".into(), Cell::plain(&describe_memory(memory))));
    }
    if let Some(cost) = &status.cost {
        rows.push(("cost".into(), Cell::plain(&describe_cost(cost))));
    }
    rows.push(("access".into(), Cell::plain(&status.caller_access)));

    Human {
        stdout: render_pairs(style, &rows),
        ..Human::default()
    }
}

/// The lower-case name of a `DaemonState` value, as used in JSON and human output.
pub fn state_name(state: i32) -> &'static str {
    match DaemonState::try_from(state) {
        Ok(DaemonState::Unspecified) => "unspecified",
        Ok(DaemonState::Starting) => "starting",
        Ok(DaemonState::Ready) => "ready",
        Ok(DaemonState::Reloading) => "reloading",
        Ok(DaemonState::Stopping) => "stopping",
        Err(_) => "unknown",
    }
}

fn describe_sessions(sessions: &SessionsStatus) -> String {
    let turns = if sessions.turns_in_flight == 1 { "turn" } else { "turns" };
    format!(
        "{} active, {} {turns} in flight",
        sessions.active_sessions, sessions.turns_in_flight
    )
}

fn describe_memory(memory: &MemoryStatus) -> String {
    let limit = if memory.limit_bytes == 0 {
        "no limit".to_owned()
    } else {
        format!("limit {}", humanize_bytes(memory.limit_bytes))
    };
    format!(
        "{} resident, {} allocated, {limit}",
        humanize_bytes(memory.rss_bytes),
        humanize_bytes(memory.allocated_bytes)
    )
}

fn describe_cost(cost: &CostStatus) -> String {
    fn cap(usd: f64) -> String {
        if usd > 0.0 {
            format!("cap {}", usd_amount(usd))
        } else {
            "no cap".to_owned()
        }
    }
    format!(
        "{} today ({}), {} this month ({})",
        usd_amount(cost.today_usd),
        cap(cost.daily_cap_usd),
        usd_amount(cost.month_usd),
        cap(cost.monthly_cap_usd)
    )
}

fn usd_amount(usd: f64) -> String {
    format!("${usd:.2}")
}

// ---------------------------------------------------------------------------------------------
// config get

/// `config get --json`, for one key or all of them.
pub fn config_get_json(config: &GetConfigResponse) -> ConfigGetJson<'_> {
    ConfigGetJson {
        config_path: &config.config_path,
        entries: config.entries.iter().map(EntryJson::from).collect(),
    }
}

/// `config get` as a table: a restart marker, KEY, VALUE and SOURCE.
pub fn config_get_human(config: &GetConfigResponse, style: Style) -> Human {
    let any_restart_required = config.entries.iter().any(|entry| entry.restart_required);
    // The marker column is dropped from aligned output when it would be empty; plain output keeps
    // it so that its columns are always the same four.
    let with_marker = any_restart_required || !style.align;
    let mut rows = vec![vec![
        Cell::plain(""),
        Cell::painted(style, Paint::Bold, "KEY"),
        Cell::painted(style, Paint::Bold, "VALUE"),
        Cell::painted(style, Paint::Bold, "SOURCE"),
    ]];
    for entry in &config.entries {
        let marker = if entry.restart_required { "*" } else { "" };
        let value = if entry.unset {
            Cell::painted(style, Paint::Dim, "(unset)")
        } else if entry.secret {
            Cell::painted(style, Paint::Dim, &entry.value)
        } else {
            Cell::plain(&entry.value)
        };
        // SOURCE is the last column, so a note there never disturbs the alignment.
        let mut source = Cell::plain(&entry.source);
        if entry.pending_restart {
            source.push(style, Paint::Yellow, " (restart pending)");
        }
        rows.push(vec![
            Cell::painted(style, Paint::Yellow, marker),
            Cell::plain(&entry.key),
            value,
            source,
        ]);
    }
    if !with_marker {
        for row in &mut rows {
            row.remove(0);
        }
    }

    let mut stdout = render_table(style, &rows);
    if any_restart_required {
        let note = "* takes effect only after a restart of blufiod";
        let _ = writeln!(stdout, "{}", style.paint(Paint::Dim, note));
    }
    let _ = writeln!(
        stdout,
        "{}",
        style.paint(Paint::Dim, &format!("config file: {}", config.config_path))
    );
    Human {
        stdout,
        ..Human::default()
    }
}

// ---------------------------------------------------------------------------------------------
// config set

/// `config set --json`.
pub fn config_set_json(set: &SetConfigResponse) -> ConfigSetJson<'_> {
    ConfigSetJson {
        config_path: &set.config_path,
        entry: set.entry.as_ref().map(EntryJson::from),
        applied_live: set.applied_live,
        restart_required: &set.restart_required,
        overridden_by_env: non_empty(&set.overridden_by_env),
    }
}

/// `config set`: what was written where, and whether it is in effect. `key` and `value` are what
/// the user asked for, used when the daemon's response carries no entry.
pub fn config_set_human(set: &SetConfigResponse, key: &str, value: &str, style: Style) -> Human {
    let (key, value) = match &set.entry {
        Some(entry) => (entry.key.as_str(), entry.value.as_str()),
        None => (key, value),
    };
    let mut human = Human::default();
    let _ = writeln!(
        human.stdout,
        "set {} = {value} in {}",
        style.paint(Paint::Bold, key),
        set.config_path
    );
    if set.applied_live {
        let _ = writeln!(human.stdout, "applied live");
    } else {
        let _ = writeln!(human.stdout, "{}", style.paint(Paint::Yellow, RESTART_HINT));
    }
    if let Some(variable) = non_empty(&set.overridden_by_env) {
        human.warnings.push(format!(
            "{variable} overrides {key} in the environment, so the value in the file is not in effect while it is set"
        ));
    }
    human
}

// ---------------------------------------------------------------------------------------------
// config validate

/// `config validate --json`; `file` is the FILE argument, if any.
pub fn config_validate_json<'a>(validation: &'a ValidateConfigResponse, file: Option<&'a str>) -> ValidateJson<'a> {
    ValidateJson {
        valid: validation.valid,
        file,
        errors: &validation.errors,
    }
}

/// `config validate`: a line on stdout when valid, the problems as error lines otherwise.
pub fn config_validate_human(validation: &ValidateConfigResponse, file: Option<&str>, style: Style) -> Human {
    let subject = match file {
        Some(file) => file.to_owned(),
        None => "the daemon's configuration".to_owned(),
    };
    let mut human = Human::default();
    if validation.valid {
        let _ = writeln!(human.stdout, "{subject} is {}", style.paint(Paint::Bold, "valid"));
    } else if validation.errors.is_empty() {
        human.errors.push(format!("{subject} is invalid"));
    } else {
        human.errors.extend(validation.errors.iter().cloned());
    }
    human
}

// ---------------------------------------------------------------------------------------------
// config reload

/// `config reload --json`.
pub fn config_reload_json(reload: &ReloadConfigResponse) -> ReloadJson<'_> {
    ReloadJson {
        applied: &reload.applied,
        restart_required: &reload.restart_required,
    }
}

/// `config reload`: which keys took effect and which wait for a restart.
pub fn config_reload_human(reload: &ReloadConfigResponse, style: Style) -> Human {
    let mut human = Human::default();
    if reload.applied.is_empty() && reload.restart_required.is_empty() {
        let _ = writeln!(human.stdout, "configuration reloaded; nothing changed");
        return human;
    }
    let _ = writeln!(human.stdout, "configuration reloaded");
    if !reload.applied.is_empty() {
        let _ = writeln!(human.stdout, "applied live: {}", reload.applied.join(", "));
    }
    if !reload.restart_required.is_empty() {
        let _ = writeln!(human.stdout, "needs a restart: {}", reload.restart_required.join(", "));
        let _ = writeln!(human.stdout, "{}", style.paint(Paint::Yellow, RESTART_HINT));
    }
    human
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

// ---------------------------------------------------------------------------------------------
// layout

/// One table cell: text that may contain escapes, and its visible width.
#[derive(Debug, Clone)]
struct Cell {
    text: String,
    width: usize,
}

impl Cell {
    fn plain(text: &str) -> Cell {
        Cell {
            text: text.to_owned(),
            width: text.chars().count(),
        }
    }

    fn painted(style: Style, paint: Paint, text: &str) -> Cell {
        Cell {
            text: style.paint(paint, text),
            width: text.chars().count(),
        }
    }

    fn push(&mut self, style: Style, paint: Paint, text: &str) {
        self.text.push_str(&style.paint(paint, text));
        self.width += text.chars().count();
    }
}

/// Rows of cells as columns: padded with two spaces between them when aligning, separated by a
/// tab otherwise. Trailing blanks are dropped.
fn render_table(style: Style, rows: &[Vec<Cell>]) -> String {
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
fn render_pairs(style: Style, rows: &[(String, Cell)]) -> String {
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

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

// ---------------------------------------------------------------------------------------------
// JSON shapes (the stable contract documented at the top of this file)

#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    state: &'static str,
    version: &'a str,
    pid: u32,
    uptime_seconds: u64,
    config_path: &'a str,
    config_file_present: bool,
    database_path: &'a str,
    database_size_bytes: u64,
    socket_path: &'a str,
    state_dir: &'a str,
    previous_run_unclean: bool,
    subsystems: Vec<SubsystemJson<'a>>,
    sessions: Option<SessionsJson>,
    memory: Option<MemoryJson>,
    cost: Option<CostJson>,
    caller_access: &'a str,
}

#[derive(Debug, Serialize)]
struct SubsystemJson<'a> {
    name: &'a str,
    status: &'a str,
}

impl<'a> From<&'a SubsystemStatus> for SubsystemJson<'a> {
    fn from(subsystem: &'a SubsystemStatus) -> Self {
        SubsystemJson {
            name: &subsystem.name,
            status: &subsystem.status,
        }
    }
}

#[derive(Debug, Serialize)]
struct SessionsJson {
    active_sessions: u64,
    turns_in_flight: u64,
}

impl From<&SessionsStatus> for SessionsJson {
    fn from(sessions: &SessionsStatus) -> Self {
        SessionsJson {
            active_sessions: sessions.active_sessions,
            turns_in_flight: sessions.turns_in_flight,
        }
    }
}

#[derive(Debug, Serialize)]
struct MemoryJson {
    rss_bytes: u64,
    allocated_bytes: u64,
    limit_bytes: u64,
}

impl From<&MemoryStatus> for MemoryJson {
    fn from(memory: &MemoryStatus) -> Self {
        MemoryJson {
            rss_bytes: memory.rss_bytes,
            allocated_bytes: memory.allocated_bytes,
            limit_bytes: memory.limit_bytes,
        }
    }
}

#[derive(Debug, Serialize)]
struct CostJson {
    today_usd: f64,
    month_usd: f64,
    daily_cap_usd: f64,
    monthly_cap_usd: f64,
}

impl From<&CostStatus> for CostJson {
    fn from(cost: &CostStatus) -> Self {
        CostJson {
            today_usd: cost.today_usd,
            month_usd: cost.month_usd,
            daily_cap_usd: cost.daily_cap_usd,
            monthly_cap_usd: cost.monthly_cap_usd,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConfigGetJson<'a> {
    config_path: &'a str,
    entries: Vec<EntryJson<'a>>,
}

#[derive(Debug, Serialize)]
struct EntryJson<'a> {
    key: &'a str,
    value: serde_json::Value,
    source: &'a str,
    secret: bool,
    restart_required: bool,
    unset: bool,
    pending_restart: bool,
}

impl<'a> From<&'a ConfigEntry> for EntryJson<'a> {
    fn from(entry: &'a ConfigEntry) -> Self {
        let value = if entry.unset || entry.value_json.is_empty() {
            serde_json::Value::Null
        } else {
            // The daemon sends valid JSON; should it ever not, keep the text rather than fail
            // the whole command.
            serde_json::from_str(&entry.value_json)
                .unwrap_or_else(|_| serde_json::Value::String(entry.value_json.clone()))
        };
        EntryJson {
            key: &entry.key,
            value,
            source: &entry.source,
            secret: entry.secret,
            restart_required: entry.restart_required,
            unset: entry.unset,
            pending_restart: entry.pending_restart,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConfigSetJson<'a> {
    config_path: &'a str,
    entry: Option<EntryJson<'a>>,
    applied_live: bool,
    restart_required: &'a [String],
    overridden_by_env: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ValidateJson<'a> {
    valid: bool,
    file: Option<&'a str>,
    errors: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct ReloadJson<'a> {
    applied: &'a [String],
    restart_required: &'a [String],
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ALIGNED: Style = Style {
        color: false,
        align: true,
    };
    const COLOR: Style = Style {
        color: true,
        align: true,
    };

    fn entry(key: &str, value: &str, value_json: &str, source: &str) -> ConfigEntry {
        ConfigEntry {
            key: key.into(),
            value: value.into(),
            value_json: value_json.into(),
            source: source.into(),
            ..ConfigEntry::default()
        }
    }

    fn sample_config() -> GetConfigResponse {
        GetConfigResponse {
            config_path: "/etc/blufio/blufiod.toml".into(),
            entries: vec![
                ConfigEntry {
                    restart_required: true,
                    pending_restart: true,
                    ..entry(
                        "control.socket",
                        "\"/run/blufio/blufiod.sock\"",
                        "\"/run/blufio/blufiod.sock\"",
                        "default",
                    )
                },
                entry("log.level", "\"debug\"", "\"debug\"", "file"),
                ConfigEntry {
                    unset: true,
                    ..entry("notify.webhook", "", "", "default")
                },
                ConfigEntry {
                    secret: true,
                    ..entry("provider.api_key", "\"********\"", "\"********\"", "env")
                },
                entry("agent.max_turns", "30", "30", "file"),
            ],
        }
    }

    fn sample_status() -> GetStatusResponse {
        GetStatusResponse {
            state: DaemonState::Ready as i32,
            version: "0.1.0".into(),
            pid: 4242,
            uptime_seconds: 192,
            config_path: "/etc/blufio/blufiod.toml".into(),
            config_file_present: false,
            database_path: "/var/lib/blufio/blufio.db".into(),
            database_size_bytes: 1536,
            socket_path: "/run/blufio/blufiod.sock".into(),
            state_dir: "/var/lib/blufio".into(),
            subsystems: vec![
                SubsystemStatus {
                    name: "control".into(),
                    status: "listening".into(),
                },
                SubsystemStatus {
                    name: "watchdog".into(),
                    status: "pinging every 10s".into(),
                },
            ],
            sessions: None,
            memory: Some(MemoryStatus {
                rss_bytes: 50 * 1024 * 1024,
                allocated_bytes: 30 * 1024 * 1024,
                limit_bytes: 0,
            }),
            cost: None,
            previous_run_unclean: true,
            caller_access: "read-only".into(),
        }
    }

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
    fn config_table_is_aligned() {
        let human = config_get_human(&sample_config(), ALIGNED);
        // A string continuation would eat the leading blanks of the header, so join lines.
        let expected = [
            "   KEY               VALUE                       SOURCE",
            "*  control.socket    \"/run/blufio/blufiod.sock\"  default (restart pending)",
            "   log.level         \"debug\"                     file",
            "   notify.webhook    (unset)                     default",
            "   provider.api_key  \"********\"                  env",
            "   agent.max_turns   30                          file",
            "* takes effect only after a restart of blufiod",
            "config file: /etc/blufio/blufiod.toml",
            "",
        ]
        .join("\n");
        assert_eq!(human.stdout, expected);
        assert!(human.warnings.is_empty() && human.errors.is_empty());
    }

    #[test]
    fn config_table_without_restart_keys_has_no_marker_column() {
        let config = GetConfigResponse {
            config_path: "/etc/blufio/blufiod.toml".into(),
            entries: vec![entry("log.level", "\"debug\"", "\"debug\"", "file")],
        };
        let aligned = config_get_human(&config, ALIGNED).stdout;
        assert_eq!(
            aligned,
            "KEY        VALUE    SOURCE\nlog.level  \"debug\"  file\nconfig file: /etc/blufio/blufiod.toml\n"
        );
        let plain = config_get_human(&config, Style::PLAIN).stdout;
        assert!(plain.starts_with("\tKEY\tVALUE\tSOURCE\n\tlog.level\t"), "{plain:?}");
    }

    #[test]
    fn config_table_plain_uses_tabs() {
        let human = config_get_human(&sample_config(), Style::PLAIN);
        let lines: Vec<&str> = human.stdout.lines().collect();
        assert_eq!(lines[0], "\tKEY\tVALUE\tSOURCE");
        assert_eq!(
            lines[1],
            "*\tcontrol.socket\t\"/run/blufio/blufiod.sock\"\tdefault (restart pending)"
        );
        assert_eq!(lines[3], "\tnotify.webhook\t(unset)\tdefault");
    }

    #[test]
    fn colour_does_not_break_alignment() {
        let plain = config_get_human(&sample_config(), ALIGNED).stdout;
        let coloured = config_get_human(&sample_config(), COLOR).stdout;
        assert!(coloured.contains('\x1b'));
        assert_eq!(strip_ansi(&coloured), plain);
    }

    #[test]
    fn config_json_shape() {
        let config = sample_config();
        let value = serde_json::to_value(config_get_json(&config)).expect("serializes");
        assert_eq!(
            value,
            json!({
                "config_path": "/etc/blufio/blufiod.toml",
                "entries": [
                    {"key": "control.socket", "value": "/run/blufio/blufiod.sock",
                     "source": "default", "secret": false, "restart_required": true, "unset": false,
                     "pending_restart": true},
                    {"key": "log.level", "value": "debug",
                     "source": "file", "secret": false, "restart_required": false, "unset": false, "pending_restart": false},
                    {"key": "notify.webhook", "value": null,
                     "source": "default", "secret": false, "restart_required": false, "unset": true, "pending_restart": false},
                    {"key": "provider.api_key", "value": "********",
                     "source": "env", "secret": true, "restart_required": false, "unset": false, "pending_restart": false},
                    {"key": "agent.max_turns", "value": 30,
                     "source": "file", "secret": false, "restart_required": false, "unset": false, "pending_restart": false},
                ]
            })
        );
    }

    #[test]
    fn json_document_is_one_line_terminated_document() {
        let text = json_document(&config_reload_json(&ReloadConfigResponse {
            applied: vec!["log.level".into()],
            restart_required: vec![],
        }))
        .expect("serializes");
        assert!(text.ends_with("}\n") && !text.ends_with("\n\n"));
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("parses back");
        assert_eq!(parsed, json!({"applied": ["log.level"], "restart_required": []}));
    }

    #[test]
    fn status_json_shape() {
        let status = sample_status();
        let value = serde_json::to_value(status_json(&status)).expect("serializes");
        assert_eq!(
            value,
            json!({
                "state": "ready",
                "version": "0.1.0",
                "pid": 4242,
                "uptime_seconds": 192,
                "config_path": "/etc/blufio/blufiod.toml",
                "config_file_present": false,
                "database_path": "/var/lib/blufio/blufio.db",
                "database_size_bytes": 1536,
                "socket_path": "/run/blufio/blufiod.sock",
                "state_dir": "/var/lib/blufio",
                "previous_run_unclean": true,
                "subsystems": [
                    {"name": "control", "status": "listening"},
                    {"name": "watchdog", "status": "pinging every 10s"}
                ],
                "sessions": null,
                "memory": {"rss_bytes": 52428800, "allocated_bytes": 31457280, "limit_bytes": 0},
                "cost": null,
                "caller_access": "read-only"
            })
        );
    }

    #[test]
    fn status_human_lines() {
        let human = status_human(&sample_status(), ALIGNED);
        let expected = "\
state:         ready
version:       0.1.0
pid:           4242
uptime:        3m 12s
config:        /etc/blufio/blufiod.toml (not present, using defaults)
database:      /var/lib/blufio/blufio.db (1.5 KiB)
socket:        /run/blufio/blufiod.sock
state dir:     /var/lib/blufio
previous run:  did not shut down cleanly (see the journal)
subsystems:
  control:     listening
  watchdog:    pinging every 10s
memory:        50.0 MiB resident, 30.0 MiB allocated, no limit
access:        read-only
";
        assert_eq!(human.stdout, expected);
        assert!(!human.stdout.contains("sessions"), "absent sections stay out");
        assert!(!human.stdout.contains("cost"));
    }

    #[test]
    fn status_human_plain_and_optional_sections() {
        let status = GetStatusResponse {
            config_file_present: true,
            previous_run_unclean: false,
            sessions: Some(SessionsStatus {
                active_sessions: 2,
                turns_in_flight: 1,
            }),
            cost: Some(CostStatus {
                today_usd: 0.125,
                month_usd: 3.4,
                daily_cap_usd: 1.0,
                monthly_cap_usd: 0.0,
            }),
            subsystems: vec![],
            state: 99,
            ..sample_status()
        };
        let stdout = status_human(&status, Style::PLAIN).stdout;
        assert!(stdout.starts_with("state: unknown\nversion: 0.1.0\n"), "{stdout}");
        assert!(stdout.contains("\nconfig: /etc/blufio/blufiod.toml\n"), "{stdout}");
        assert!(!stdout.contains("previous run"));
        assert!(stdout.contains("\nsubsystems: none\n"));
        assert!(stdout.contains("\nsessions: 2 active, 1 turn in flight\n"));
        assert!(stdout.contains("\ncost: $0.12 today (cap $1.00), $3.40 this month (no cap)\n"));
    }

    #[test]
    fn set_reports_restart_and_env_override() {
        let set = SetConfigResponse {
            config_path: "/etc/blufio/blufiod.toml".into(),
            entry: Some(ConfigEntry {
                restart_required: true,
                ..entry("control.socket", "\"/tmp/x.sock\"", "\"/tmp/x.sock\"", "file")
            }),
            applied_live: false,
            restart_required: vec!["control.socket".into()],
            overridden_by_env: "BLUFIO_CONTROL__SOCKET".into(),
        };
        let human = config_set_human(&set, "control.socket", "/tmp/x.sock", ALIGNED);
        assert_eq!(
            human.stdout,
            "set control.socket = \"/tmp/x.sock\" in /etc/blufio/blufiod.toml\n\
             restart blufiod to apply (systemctl restart blufiod)\n"
        );
        assert_eq!(human.warnings.len(), 1);
        assert!(human.warnings[0].starts_with("BLUFIO_CONTROL__SOCKET overrides control.socket"));

        let value = serde_json::to_value(config_set_json(&set)).expect("serializes");
        assert_eq!(value["overridden_by_env"], "BLUFIO_CONTROL__SOCKET");
        assert_eq!(value["entry"]["value"], "/tmp/x.sock");
        assert_eq!(value["restart_required"], json!(["control.socket"]));

        let live = SetConfigResponse {
            applied_live: true,
            overridden_by_env: String::new(),
            entry: None,
            ..set
        };
        let human = config_set_human(&live, "log.level", "debug", ALIGNED);
        assert_eq!(
            human.stdout,
            "set log.level = debug in /etc/blufio/blufiod.toml\napplied live\n"
        );
        assert!(human.warnings.is_empty());
        let value = serde_json::to_value(config_set_json(&live)).expect("serializes");
        assert_eq!(value["overridden_by_env"], serde_json::Value::Null);
        assert_eq!(value["entry"], serde_json::Value::Null);
    }

    #[test]
    fn validate_reports_each_error() {
        let invalid = ValidateConfigResponse {
            valid: false,
            errors: vec!["log.level: unknown variant".into(), "line 3: bad".into()],
        };
        let human = config_validate_human(&invalid, Some("x.toml"), ALIGNED);
        assert!(human.stdout.is_empty());
        assert_eq!(human.errors, invalid.errors);
        let value = serde_json::to_value(config_validate_json(&invalid, None)).expect("serializes");
        assert_eq!(
            value,
            json!({"valid": false, "file": null, "errors": ["log.level: unknown variant", "line 3: bad"]})
        );

        let valid = ValidateConfigResponse {
            valid: true,
            errors: vec![],
        };
        let human = config_validate_human(&valid, Some("x.toml"), ALIGNED);
        assert_eq!(human.stdout, "x.toml is valid\n");
        assert!(human.errors.is_empty());
    }

    #[test]
    fn reload_lists_keys() {
        let reload = ReloadConfigResponse {
            applied: vec!["log.level".into(), "agent.max_turns".into()],
            restart_required: vec!["control.socket".into()],
        };
        let stdout = config_reload_human(&reload, ALIGNED).stdout;
        assert_eq!(
            stdout,
            "configuration reloaded\n\
             applied live: log.level, agent.max_turns\n\
             needs a restart: control.socket\n\
             restart blufiod to apply (systemctl restart blufiod)\n"
        );
        let nothing = config_reload_human(&ReloadConfigResponse::default(), ALIGNED).stdout;
        assert_eq!(nothing, "configuration reloaded; nothing changed\n");
    }

    fn strip_ansi(text: &str) -> String {
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
