//! What a device may see of the daemon besides its sessions: `GET /v1/usage[?days=N]` (spend and
//! tokens per day, model and session, against the caps, as `blufioctl usage --json` shows them)
//! and `GET /v1/status` (the part of `blufioctl status --json` that names nothing of the host:
//! state, version, uptime, sessions, memory and cost; no paths, pid or subsystem lines).

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{Gateway, agent_problem, bad_request, json};
use crate::agent::budget::dollars;
use crate::agent::model::UsageTotals;
use crate::gateway::problem::{Body, Problem};

/// Days a report covers unless `days` says otherwise, and at most.
const DEFAULT_DAYS: u32 = 30;
const MAX_DAYS: u32 = 366;

/// `GET /v1/status`.
pub(super) async fn status(gateway: &Arc<Gateway>) -> Result<Response<Body>, Problem> {
    use crate::lifecycle::{Phase, VERSION};
    let agent = gateway.agent.status();
    let total_sessions = gateway
        .agent
        .count_sessions()
        .await
        .map_err(|error| agent_problem(&error))?;
    let config = gateway.config.get();
    let memory = gateway.memory.observe();
    let caps = &config.config.budget;
    let state = match gateway.lifecycle.phase() {
        Phase::Starting => "starting",
        Phase::Ready => "ready",
        Phase::Reloading => "reloading",
        Phase::Stopping => "stopping",
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "state": state,
            "version": VERSION,
            "uptime_seconds": gateway.lifecycle.uptime().as_secs(),
            "sessions": {
                "active_sessions": agent.active_sessions,
                "turns_in_flight": agent.turns_in_flight,
                "turns_queued": agent.turns_queued,
                "total_sessions": total_sessions,
                "provider": agent.provider,
                "model": agent.model,
                "provider_problem": agent.provider_problem,
                "provider_key_source": agent.provider_key_source,
            },
            "memory": {
                "rss_bytes": memory.used.rss_bytes,
                "allocated_bytes": memory.used.heap_bytes,
                "allocator_resident_bytes": memory.used.allocator_resident_bytes,
                "limit_bytes": memory.thresholds.limit_bytes,
                "warn_bytes": memory.thresholds.warn_bytes,
                "refuse_bytes": memory.thresholds.refuse_bytes,
                "pressure": memory.pressure.as_str(),
                "pressure_seconds": memory.since.as_secs(),
                "under_pressure": memory.pressure == crate::memory::Pressure::Limit,
            },
            "cost": {
                "today_usd": agent.budget.today_usd,
                "month_usd": agent.budget.month_usd,
                "daily_cap_usd": caps.daily_usd,
                "monthly_cap_usd": caps.monthly_usd,
                "reserved_usd": agent.budget.reserved_usd,
            },
        }),
    ))
}

/// `GET /v1/usage`.
pub(super) async fn report(gateway: &Arc<Gateway>, query: Option<&str>) -> Result<Response<Body>, Problem> {
    let mut days = DEFAULT_DAYS;
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("days", value) => {
                days = value
                    .parse()
                    .ok()
                    .filter(|days| (1..=MAX_DAYS).contains(days))
                    .ok_or_else(|| bad_request(format!("days must be a whole number from 1 to {MAX_DAYS}")))?;
            }
            (other, _) => {
                return Err(bad_request(format!(
                    "unknown query parameter {:?}; GET /v1/usage takes days",
                    crate::gateway::problem::shown(other)
                )));
            }
        }
    }
    let (report, budget) = gateway.agent.usage(days).await.map_err(|error| agent_problem(&error))?;
    let caps = gateway.config.get().config.budget.clone();
    let tokens = |totals: &UsageTotals| {
        serde_json::json!({
            "input_tokens": totals.usage.input_tokens,
            "output_tokens": totals.usage.output_tokens,
            "cache_creation_input_tokens": totals.usage.cache_creation_input_tokens,
            "cache_read_input_tokens": totals.usage.cache_read_input_tokens,
        })
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "days": report.days.iter().map(|(day, totals)| serde_json::json!({
                "day": day,
                "calls": totals.calls,
                "usage": tokens(totals),
                "cost_usd": dollars(totals.cost_micros),
            })).collect::<Vec<_>>(),
            "models": report.models.iter().map(|model| serde_json::json!({
                "provider": model.provider,
                "model": model.model,
                "calls": model.totals.calls,
                "usage": tokens(&model.totals),
                "cost_usd": dollars(model.totals.cost_micros),
            })).collect::<Vec<_>>(),
            "sessions": report.sessions.iter().map(|session| serde_json::json!({
                "session_id": session.session_id,
                "title": session.title,
                "calls": session.totals.calls,
                "cost_usd": dollars(session.totals.cost_micros),
                "deleted": session.deleted,
            })).collect::<Vec<_>>(),
            "cost": {
                "today_usd": budget.today_usd,
                "month_usd": budget.month_usd,
                "daily_cap_usd": caps.daily_usd,
                "monthly_cap_usd": caps.monthly_usd,
                "reserved_usd": budget.reserved_usd,
            },
        }),
    ))
}
