//! `blufioctl status`: the daemon's state, storage, subsystems and the caller's access.

use blufio_proto::control::v1::{
    BackupStatus, CostStatus, DaemonState, GatewayStatus, GetStatusResponse, MemoryStatus, SessionsStatus,
    SubsystemStatus,
};
use blufio_proto::httpsig::unix_now;
use serde::Serialize;

use super::Context;
use crate::cli::JsonArgs;
use crate::output::{
    Cell, CostJson, Human, Paint, Render, Style, humanize_age, humanize_bytes, humanize_duration, humanize_seconds,
    non_empty, render_pairs, usd_amount,
};
use crate::{Failure, Outcome};

/// Runs `status`.
pub async fn run(context: &Context<'_>, args: JsonArgs) -> Result<Outcome, Failure> {
    let status = context.connect().await?.get_status().await?;
    let view = Status {
        status: &status,
        now: unix_now(),
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

/// The daemon's answer to `status`; `now` is the current Unix time, for the ages.
pub struct Status<'a> {
    pub status: &'a GetStatusResponse,
    pub now: i64,
}

impl Render for Status<'_> {
    /// `status --json`.
    fn json(&self) -> impl Serialize {
        let status = self.status;
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
            gateway: status.gateway.as_ref().map(GatewayJson::from),
            backup: status.backup.as_ref().map(BackupJson::from),
        }
    }

    /// `status` as aligned `key: value` lines.
    fn human(&self, style: Style) -> Human {
        let Status { status, now } = *self;
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
        let mut warnings = Vec::new();
        if let Some(sessions) = &status.sessions {
            rows.push(("sessions".into(), Cell::plain(&describe_sessions(sessions))));
            if !sessions.provider.is_empty() || !sessions.model.is_empty() {
                let provider = [sessions.provider.as_str(), sessions.model.as_str()]
                    .into_iter()
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join(" / ");
                rows.push(("provider".into(), Cell::plain(&provider)));
                let key = non_empty(&sessions.provider_key_source)
                    .map_or_else(|| Cell::painted(style, Paint::Dim, "none"), Cell::plain);
                rows.push(("  key".into(), key));
            }
            if !sessions.provider_problem.is_empty() {
                warnings.push(sessions.provider_problem.clone());
            }
        }
        if let Some(memory) = &status.memory {
            rows.push(("memory".into(), Cell::plain(&describe_memory(memory))));
        }
        if let Some(cost) = &status.cost {
            rows.push(("cost".into(), Cell::plain(&describe_cost(cost))));
        }
        if let Some(gateway) = &status.gateway {
            rows.push(("gateway".into(), Cell::plain(&describe_gateway(gateway))));
            if !gateway.tls_fingerprint_sha256.is_empty() {
                rows.push(("  pin sha256".into(), Cell::plain(&gateway.tls_fingerprint_sha256)));
            }
            if !gateway.problem.is_empty() {
                warnings.push(format!("gateway: {}", gateway.problem));
            }
        }
        if let Some(backup) = &status.backup {
            push_backup_rows(&mut rows, style, backup, now);
        }
        rows.push(("access".into(), Cell::plain(&status.caller_access)));

        Human {
            stdout: render_pairs(style, &rows),
            warnings,
            ..Human::default()
        }
    }
}

/// What `remote status` shows: the part of a status the gateway gives (no paths, pid or
/// subsystems, which name the host).
pub struct RemoteStatus<'a>(pub &'a GetStatusResponse);

impl Render for RemoteStatus<'_> {
    /// `remote status --json`: the `status --json` fields the gateway gives.
    fn json(&self) -> impl Serialize {
        let status = self.0;
        serde_json::json!({
            "state": state_name(status.state),
            "version": status.version,
            "uptime_seconds": status.uptime_seconds,
            "sessions": status.sessions.as_ref().map(SessionsJson::from),
            "memory": status.memory.as_ref().map(MemoryJson::from),
            "cost": status.cost.as_ref().map(CostJson::from),
        })
    }

    fn human(&self, style: Style) -> Human {
        let status = self.0;
        let mut rows = vec![
            ("state".to_owned(), Cell::plain(state_name(status.state))),
            ("version".to_owned(), Cell::plain(&status.version)),
            (
                "uptime".to_owned(),
                Cell::plain(&humanize_duration(status.uptime_seconds)),
            ),
        ];
        let mut warnings = Vec::new();
        if let Some(sessions) = &status.sessions {
            rows.push(("sessions".into(), Cell::plain(&describe_sessions(sessions))));
            rows.push((
                "provider".into(),
                Cell::plain(&format!("{} / {}", sessions.provider, sessions.model)),
            ));
            if !sessions.provider_problem.is_empty() {
                warnings.push(sessions.provider_problem.clone());
            }
        }
        if let Some(memory) = &status.memory {
            rows.push(("memory".into(), Cell::plain(&describe_memory(memory))));
        }
        if let Some(cost) = &status.cost {
            rows.push(("cost".into(), Cell::plain(&describe_cost(cost))));
        }
        Human {
            stdout: render_pairs(style, &rows),
            warnings,
            ..Human::default()
        }
    }
}

/// The lower-case name of a `DaemonState` value, as used in JSON and human output.
fn state_name(state: i32) -> &'static str {
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
        "{} active, {} {turns} in flight, {} queued, {} total",
        sessions.active_sessions, sessions.turns_in_flight, sessions.turns_queued, sessions.total_sessions
    )
}

/// The backup schedule, the last backup, the last failure and a restore in progress.
fn push_backup_rows(rows: &mut Vec<(String, Cell)>, style: Style, backup: &BackupStatus, now: i64) {
    let schedule = non_empty(&backup.schedule).unwrap_or("off");
    rows.push(("backup".into(), Cell::plain(schedule)));
    let last = if backup.last_success_at == 0 {
        Cell::painted(style, Paint::Dim, "never")
    } else {
        Cell::plain(&format!(
            "{} ({} in {})",
            humanize_age(now, backup.last_success_at),
            humanize_bytes(backup.last_size_bytes),
            humanize_seconds(backup.last_duration_seconds)
        ))
    };
    rows.push(("  last".into(), last));
    if !backup.last_error.is_empty() {
        let mut failed = Cell::painted(style, Paint::Red, &backup.last_error);
        if backup.last_error_at != 0 {
            failed.push(
                style,
                Paint::None,
                &format!(" ({})", humanize_age(now, backup.last_error_at)),
            );
        }
        rows.push(("  last error".into(), failed));
    }
    if !backup.restore_phase.is_empty() {
        let mut phase = Cell::painted(style, Paint::Yellow, &backup.restore_phase);
        phase.push(
            style,
            Paint::Dim,
            " (a restore is running; new turns are refused until it ends)",
        );
        rows.push(("  restore".into(), phase));
    }
}

fn describe_gateway(gateway: &GatewayStatus) -> String {
    let devices = if gateway.active_devices == 1 {
        "device"
    } else {
        "devices"
    };
    format!(
        "{}://{}, {} active {devices}",
        gateway.scheme, gateway.listen, gateway.active_devices
    )
}

fn describe_memory(memory: &MemoryStatus) -> String {
    let used = format!(
        "{} resident, {} allocated ({} held by the allocator)",
        humanize_bytes(memory.rss_bytes),
        humanize_bytes(memory.allocated_bytes),
        humanize_bytes(memory.allocator_resident_bytes)
    );
    if memory.limit_bytes == 0 {
        return format!("{used}, no limit");
    }
    let level = match (memory.pressure.as_str(), memory.under_pressure) {
        ("limit", _) | ("", true) => "AT THE LIMIT: new turns are refused until memory falls (raise memory.limit_mib?)",
        ("warn", _) => "above warn: caches are shed (raise memory.limit_mib if this persists)",
        _ => "normal",
    };
    format!(
        "{used}, limit {} (warn at {}, refuse at {}); {level} for {}",
        humanize_bytes(memory.limit_bytes),
        humanize_bytes(memory.warn_bytes),
        humanize_bytes(memory.refuse_bytes),
        humanize_duration(memory.pressure_seconds)
    )
}

fn describe_cost(cost: &CostStatus) -> String {
    format!(
        "{} today {}, {} this month {}, {} reserved",
        usd_amount(cost.today_usd),
        of_cap(cost.daily_cap_usd),
        usd_amount(cost.month_usd),
        of_cap(cost.monthly_cap_usd),
        usd_amount(cost.reserved_usd)
    )
}

/// "of $1.00" for a cap, "(no cap)" for 0.
fn of_cap(cap_usd: f64) -> String {
    if cap_usd > 0.0 {
        format!("of {}", usd_amount(cap_usd))
    } else {
        "(no cap)".to_owned()
    }
}

#[derive(Debug, Serialize)]
struct StatusJson<'a> {
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
    sessions: Option<SessionsJson<'a>>,
    memory: Option<MemoryJson>,
    cost: Option<CostJson>,
    caller_access: &'a str,
    gateway: Option<GatewayJson<'a>>,
    backup: Option<BackupJson<'a>>,
}

#[derive(Debug, Serialize)]
struct BackupJson<'a> {
    schedule: &'a str,
    last_success_at: Option<i64>,
    last_size_bytes: Option<u64>,
    last_duration_seconds: Option<f64>,
    last_error: Option<&'a str>,
    last_error_at: Option<i64>,
    restore_phase: Option<&'a str>,
}

impl<'a> From<&'a BackupStatus> for BackupJson<'a> {
    fn from(backup: &'a BackupStatus) -> Self {
        let succeeded = backup.last_success_at != 0;
        BackupJson {
            schedule: non_empty(&backup.schedule).unwrap_or("off"),
            last_success_at: succeeded.then_some(backup.last_success_at),
            last_size_bytes: succeeded.then_some(backup.last_size_bytes),
            last_duration_seconds: succeeded.then_some(backup.last_duration_seconds),
            last_error: non_empty(&backup.last_error),
            last_error_at: (!backup.last_error.is_empty() && backup.last_error_at != 0).then_some(backup.last_error_at),
            restore_phase: non_empty(&backup.restore_phase),
        }
    }
}

#[derive(Debug, Serialize)]
struct GatewayJson<'a> {
    listen: &'a str,
    scheme: &'a str,
    tls_fingerprint_sha256: Option<&'a str>,
    active_devices: u64,
    problem: Option<&'a str>,
}

impl<'a> From<&'a GatewayStatus> for GatewayJson<'a> {
    fn from(gateway: &'a GatewayStatus) -> Self {
        GatewayJson {
            listen: &gateway.listen,
            scheme: &gateway.scheme,
            tls_fingerprint_sha256: non_empty(&gateway.tls_fingerprint_sha256),
            active_devices: gateway.active_devices,
            problem: non_empty(&gateway.problem),
        }
    }
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
struct SessionsJson<'a> {
    active_sessions: u64,
    turns_in_flight: u64,
    turns_queued: u64,
    total_sessions: u64,
    provider: &'a str,
    model: &'a str,
    provider_problem: Option<&'a str>,
    provider_key_source: Option<&'a str>,
}

impl<'a> From<&'a SessionsStatus> for SessionsJson<'a> {
    fn from(sessions: &'a SessionsStatus) -> Self {
        SessionsJson {
            active_sessions: sessions.active_sessions,
            turns_in_flight: sessions.turns_in_flight,
            turns_queued: sessions.turns_queued,
            total_sessions: sessions.total_sessions,
            provider: &sessions.provider,
            model: &sessions.model,
            provider_problem: non_empty(&sessions.provider_problem),
            provider_key_source: non_empty(&sessions.provider_key_source),
        }
    }
}

#[derive(Debug, Serialize)]
struct MemoryJson {
    rss_bytes: u64,
    allocated_bytes: u64,
    allocator_resident_bytes: u64,
    limit_bytes: u64,
    warn_bytes: u64,
    refuse_bytes: u64,
    pressure: String,
    pressure_seconds: u64,
    under_pressure: bool,
}

impl From<&MemoryStatus> for MemoryJson {
    fn from(memory: &MemoryStatus) -> Self {
        MemoryJson {
            rss_bytes: memory.rss_bytes,
            allocated_bytes: memory.allocated_bytes,
            allocator_resident_bytes: memory.allocator_resident_bytes,
            limit_bytes: memory.limit_bytes,
            warn_bytes: memory.warn_bytes,
            refuse_bytes: memory.refuse_bytes,
            pressure: memory.pressure.clone(),
            pressure_seconds: memory.pressure_seconds,
            under_pressure: memory.under_pressure,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::output::testing::{ALIGNED, NOW, sample_gateway};

    fn view(status: &GetStatusResponse) -> Status<'_> {
        Status { status, now: NOW }
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
                allocator_resident_bytes: 34 * 1024 * 1024,
                limit_bytes: 0,
                warn_bytes: 0,
                refuse_bytes: 0,
                pressure: "normal".into(),
                pressure_seconds: 192,
                under_pressure: false,
            }),
            cost: None,
            previous_run_unclean: true,
            caller_access: "read-only".into(),
            gateway: None,
            backup: None,
        }
    }

    #[test]
    fn status_json_shape() {
        let status = sample_status();
        let value = serde_json::to_value(view(&status).json()).expect("serializes");
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
                "memory": {"rss_bytes": 52428800, "allocated_bytes": 31457280, "allocator_resident_bytes": 35651584, "limit_bytes": 0, "warn_bytes": 0, "refuse_bytes": 0, "pressure": "normal", "pressure_seconds": 192, "under_pressure": false},
                "cost": null,
                "caller_access": "read-only",
                "gateway": null,
                "backup": null
            })
        );
    }

    #[test]
    fn status_human_lines() {
        let human = view(&sample_status()).human(ALIGNED);
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
memory:        50.0 MiB resident, 30.0 MiB allocated (34.0 MiB held by the allocator), no limit
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
                total_sessions: 15,
                turns_queued: 3,
                provider: "anthropic".into(),
                model: "claude-sonnet-4-5".into(),
                provider_problem: "no API key: set BLUFIO_PROVIDER__API_KEY".into(),
                provider_key_source: String::new(),
            }),
            cost: Some(CostStatus {
                today_usd: 0.125,
                month_usd: 3.4,
                daily_cap_usd: 1.0,
                monthly_cap_usd: 0.0,
                reserved_usd: 0.05,
            }),
            subsystems: vec![],
            state: 99,
            ..sample_status()
        };
        let stdout = view(&status).human(Style::PLAIN).stdout;
        assert!(stdout.starts_with("state: unknown\nversion: 0.1.0\n"), "{stdout}");
        assert!(stdout.contains("\nconfig: /etc/blufio/blufiod.toml\n"), "{stdout}");
        assert!(!stdout.contains("previous run"));
        assert!(stdout.contains("\nsubsystems: none\n"));
        assert!(stdout.contains("\nsessions: 2 active, 1 turn in flight, 3 queued, 15 total\n"));
        assert!(
            stdout.contains("\nprovider: anthropic / claude-sonnet-4-5\n  key: none\n"),
            "{stdout}"
        );
        assert!(stdout.contains("\ncost: $0.125 today of $1.00, $3.40 this month (no cap), $0.05 reserved\n"));
        let human = view(&status).human(Style::PLAIN);
        assert_eq!(human.warnings, ["no API key: set BLUFIO_PROVIDER__API_KEY"]);

        let value = serde_json::to_value(view(&status).json()).expect("serializes");
        assert_eq!(
            value["sessions"],
            json!({"active_sessions": 2, "turns_in_flight": 1, "turns_queued": 3, "total_sessions": 15,
                   "provider": "anthropic", "model": "claude-sonnet-4-5",
                   "provider_problem": "no API key: set BLUFIO_PROVIDER__API_KEY", "provider_key_source": null})
        );
        assert_eq!(
            value["cost"],
            json!({"today_usd": 0.125, "month_usd": 3.4, "daily_cap_usd": 1.0, "monthly_cap_usd": 0.0,
                   "reserved_usd": 0.05})
        );
        let healthy = GetStatusResponse {
            sessions: Some(SessionsStatus {
                provider: "anthropic".into(),
                provider_key_source: "vault secret `anthropic`".into(),
                ..SessionsStatus::default()
            }),
            ..sample_status()
        };
        let human = view(&healthy).human(ALIGNED);
        assert!(human.warnings.is_empty());
        assert!(
            human
                .stdout
                .contains("\nprovider:      anthropic\n  key:         vault secret `anthropic`\n"),
            "{}",
            human.stdout
        );
        let value = serde_json::to_value(view(&healthy).json()).expect("serializes");
        assert_eq!(value["sessions"]["provider_problem"], serde_json::Value::Null);
        assert_eq!(value["sessions"]["provider_key_source"], "vault secret `anthropic`");
    }

    #[test]
    fn status_shows_the_gateway_and_its_problem() {
        let status = GetStatusResponse {
            gateway: Some(sample_gateway()),
            ..sample_status()
        };
        let human = view(&status).human(ALIGNED);
        assert!(
            human
                .stdout
                .contains("\ngateway:       https://0.0.0.0:8443, 0 active devices\n  pin sha256:  AB:CD:EF\n"),
            "{}",
            human.stdout
        );
        assert_eq!(human.warnings, ["gateway: no device is registered"]);
        let value = serde_json::to_value(view(&status).json()).expect("serializes");
        assert_eq!(
            value["gateway"],
            json!({"listen": "0.0.0.0:8443", "scheme": "https", "tls_fingerprint_sha256": "AB:CD:EF",
                   "active_devices": 0, "problem": "no device is registered"})
        );

        let plain_http = GetStatusResponse {
            gateway: Some(GatewayStatus {
                listen: "127.0.0.1:8080".into(),
                scheme: "http".into(),
                tls_fingerprint_sha256: String::new(),
                active_devices: 1,
                problem: String::new(),
            }),
            ..sample_status()
        };
        let human = view(&plain_http).human(Style::PLAIN);
        assert!(
            human
                .stdout
                .contains("\ngateway: http://127.0.0.1:8080, 1 active device\n"),
            "{}",
            human.stdout
        );
        assert!(!human.stdout.contains("pin sha256"), "{}", human.stdout);
        assert!(human.warnings.is_empty());
        let value = serde_json::to_value(view(&plain_http).json()).expect("serializes");
        assert_eq!(value["gateway"]["tls_fingerprint_sha256"], serde_json::Value::Null);
        assert_eq!(value["gateway"]["problem"], serde_json::Value::Null);
    }

    #[test]
    fn status_shows_backups_and_a_restore() {
        let status = GetStatusResponse {
            backup: Some(BackupStatus {
                schedule: "every 24 h into /var/lib/blufio/backups, keeping 7".into(),
                last_success_at: NOW - 5 * 3600,
                last_size_bytes: 3 * 1024 * 1024,
                last_duration_seconds: 1.25,
                last_error: "cannot take the snapshot in /var/lib/blufio: the disk is full".into(),
                last_error_at: NOW - 3600,
                restore_phase: "waiting for turns".into(),
            }),
            ..sample_status()
        };
        let human = view(&status).human(ALIGNED);
        let expected = "\
backup:        every 24 h into /var/lib/blufio/backups, keeping 7
  last:        5h ago (3.0 MiB in 1.2s)
  last error:  cannot take the snapshot in /var/lib/blufio: the disk is full (1h ago)
  restore:     waiting for turns (a restore is running; new turns are refused until it ends)
access:        read-only
";
        assert!(human.stdout.ends_with(expected), "{}", human.stdout);
        assert_eq!(
            serde_json::to_value(view(&status).json()).expect("serializes")["backup"],
            json!({"schedule": "every 24 h into /var/lib/blufio/backups, keeping 7",
                   "last_success_at": NOW - 5 * 3600, "last_size_bytes": 3 * 1024 * 1024,
                   "last_duration_seconds": 1.25,
                   "last_error": "cannot take the snapshot in /var/lib/blufio: the disk is full",
                   "last_error_at": NOW - 3600, "restore_phase": "waiting for turns"})
        );

        let never = GetStatusResponse {
            backup: Some(BackupStatus {
                schedule: "off".into(),
                ..BackupStatus::default()
            }),
            ..sample_status()
        };
        let stdout = view(&never).human(Style::PLAIN).stdout;
        assert!(stdout.contains("\nbackup: off\n  last: never\naccess: "), "{stdout}");
        assert_eq!(
            serde_json::to_value(view(&never).json()).expect("serializes")["backup"],
            json!({"schedule": "off", "last_success_at": null, "last_size_bytes": null,
                   "last_duration_seconds": null, "last_error": null, "last_error_at": null,
                   "restore_phase": null})
        );
    }
}
