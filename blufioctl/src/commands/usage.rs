//! `blufioctl usage`: spend against the budget caps, and tokens and cost per day, model and
//! session.

use std::fmt::Write as _;

use blufio_proto::control::v1::{GetUsageResponse, TokenUsage};
use serde::Serialize;

use super::Context;
use crate::cli::JsonArgs;
use crate::output::{
    Cell, CostJson, Human, Paint, Render, Style, UsageJson, humanize_count, non_empty, one_line, render_pairs,
    render_table, truncate, usd_amount, usd_precise,
};
use crate::{Failure, Outcome};

/// Runs `usage` for the last `days` days.
pub async fn run(context: &Context<'_>, days: u32, args: JsonArgs) -> Result<Outcome, Failure> {
    let usage = context.connect().await?.get_usage(days).await?;
    context.printer.emit(&Usage { usage: &usage, days }, args.json)?;
    Ok(Outcome::Success)
}

/// The daemon's answer to `usage`; `days` is the period asked for.
pub struct Usage<'a> {
    pub usage: &'a GetUsageResponse,
    pub days: u32,
}

impl Render for Usage<'_> {
    /// `usage --json`.
    fn json(&self) -> impl Serialize {
        let usage = self.usage;
        UsageReportJson {
            cost: usage.cost.as_ref().map(CostJson::from),
            days: usage
                .days
                .iter()
                .map(|day| DayJson {
                    day: &day.day,
                    calls: day.calls,
                    usage: UsageJson::from(day.usage.as_ref()),
                    cost_usd: day.cost_usd,
                })
                .collect(),
            models: usage
                .models
                .iter()
                .map(|model| ModelJson {
                    provider: &model.provider,
                    model: &model.model,
                    calls: model.calls,
                    usage: UsageJson::from(model.usage.as_ref()),
                    cost_usd: model.cost_usd,
                })
                .collect(),
            sessions: usage
                .sessions
                .iter()
                .map(|session| SessionUsageJson {
                    session_id: non_empty(&session.session_id),
                    title: &session.title,
                    deleted: session.deleted,
                    calls: session.calls,
                    cost_usd: session.cost_usd,
                })
                .collect(),
        }
    }

    /// `usage`: spend against the caps, then tables per day, per model and the top sessions.
    fn human(&self, style: Style) -> Human {
        let Usage { usage, days } = *self;
        let mut stdout = String::new();
        if let Some(cost) = &usage.cost {
            let rows = vec![
                (
                    "today".to_owned(),
                    spend_cell(style, cost.today_usd, cost.daily_cap_usd),
                ),
                (
                    "this month".to_owned(),
                    spend_cell(style, cost.month_usd, cost.monthly_cap_usd),
                ),
                (
                    "reserved".to_owned(),
                    Cell::plain(&format!("{} by calls in flight", usd_amount(cost.reserved_usd))),
                ),
            ];
            stdout.push_str(&render_pairs(style, &rows));
        }
        let period = if days == 1 {
            "today".to_owned()
        } else {
            format!("the last {days} days")
        };
        if usage.days.is_empty() {
            if !stdout.is_empty() {
                stdout.push('\n');
            }
            let _ = writeln!(stdout, "no provider calls in {period}");
            return Human {
                stdout,
                ..Human::default()
            };
        }

        let heading = |stdout: &mut String, text: &str| {
            if !stdout.is_empty() {
                stdout.push('\n');
            }
            let _ = writeln!(stdout, "{}", style.paint(Paint::Bold, text));
        };

        heading(&mut stdout, &format!("per day, {period} (UTC)"));
        let mut rows = vec![token_header(style, "DAY")];
        let mut total = (0_u64, TokenUsage::default(), 0.0);
        for day in &usage.days {
            let tokens = day.usage.unwrap_or_default();
            rows.push(token_row(&day.day, day.calls, &tokens, day.cost_usd));
            // Saturating: the numbers may come from a gateway, and must not wrap.
            total.0 = total.0.saturating_add(day.calls);
            total.1.input_tokens = total.1.input_tokens.saturating_add(tokens.input_tokens);
            total.1.output_tokens = total.1.output_tokens.saturating_add(tokens.output_tokens);
            total.1.cache_creation_input_tokens = total
                .1
                .cache_creation_input_tokens
                .saturating_add(tokens.cache_creation_input_tokens);
            total.1.cache_read_input_tokens = total
                .1
                .cache_read_input_tokens
                .saturating_add(tokens.cache_read_input_tokens);
            total.2 += day.cost_usd;
        }
        if usage.days.len() > 1 {
            let mut row = token_row("total", total.0, &total.1, total.2);
            for cell in &mut row {
                *cell = Cell::painted(style, Paint::Bold, &cell.text);
            }
            rows.push(row);
        }
        stdout.push_str(&render_table(style, &rows));

        if !usage.models.is_empty() {
            heading(&mut stdout, "per model");
            let mut rows = vec![token_header(style, "MODEL")];
            for model in &usage.models {
                let name = if model.provider.is_empty() {
                    model.model.clone()
                } else {
                    format!("{}/{}", model.provider, model.model)
                };
                rows.push(token_row(
                    &name,
                    model.calls,
                    &model.usage.unwrap_or_default(),
                    model.cost_usd,
                ));
            }
            stdout.push_str(&render_table(style, &rows));
        }

        if !usage.sessions.is_empty() {
            heading(&mut stdout, "top sessions");
            let mut rows = vec![
                ["SESSION", "CALLS", "COST", "TITLE"]
                    .iter()
                    .map(|title| Cell::painted(style, Paint::Bold, title))
                    .collect::<Vec<_>>(),
            ];
            for session in usage.sessions.iter().take(TOP_SESSIONS) {
                let title = if session.deleted || session.session_id.is_empty() {
                    Cell::painted(style, Paint::Dim, "(deleted)")
                } else {
                    Cell::plain(&truncate(&one_line(&session.title), USAGE_TITLE_WIDTH))
                };
                rows.push(vec![
                    Cell::plain(&session.session_id),
                    Cell::plain(&session.calls.to_string()),
                    Cell::plain(&usd_precise(session.cost_usd)),
                    title,
                ]);
            }
            stdout.push_str(&render_table(style, &rows));
        }
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// Sessions shown by `usage` (the JSON has all the daemon sent).
const TOP_SESSIONS: usize = 10;
/// Characters of a session title shown by `usage`.
const USAGE_TITLE_WIDTH: usize = 48;

/// "$0.42 of $1.00 (42%)", yellow from 80% of the cap and red at it; "$3.40 (no cap)".
fn spend_cell(style: Style, spent_usd: f64, cap_usd: f64) -> Cell {
    if cap_usd <= 0.0 {
        return Cell::plain(&format!("{} (no cap)", usd_amount(spent_usd)));
    }
    let ratio = spent_usd / cap_usd;
    let paint = if ratio >= 1.0 {
        Paint::Red
    } else if ratio >= 0.8 {
        Paint::Yellow
    } else {
        Paint::None
    };
    let text = format!(
        "{} of {} ({:.0}%)",
        usd_amount(spent_usd),
        usd_amount(cap_usd),
        ratio * 100.0
    );
    Cell::painted(style, paint, &text)
}

fn token_header(style: Style, first: &str) -> Vec<Cell> {
    [first, "CALLS", "IN", "OUT", "CACHE W/R", "COST"]
        .iter()
        .map(|title| Cell::painted(style, Paint::Bold, title))
        .collect()
}

fn token_row(name: &str, calls: u64, tokens: &TokenUsage, cost_usd: f64) -> Vec<Cell> {
    vec![
        Cell::plain(name),
        Cell::plain(&calls.to_string()),
        Cell::plain(&humanize_count(tokens.input_tokens)),
        Cell::plain(&humanize_count(tokens.output_tokens)),
        Cell::plain(&format!(
            "{}/{}",
            humanize_count(tokens.cache_creation_input_tokens),
            humanize_count(tokens.cache_read_input_tokens)
        )),
        Cell::plain(&usd_precise(cost_usd)),
    ]
}

#[derive(Debug, Serialize)]
struct UsageReportJson<'a> {
    cost: Option<CostJson>,
    days: Vec<DayJson<'a>>,
    models: Vec<ModelJson<'a>>,
    sessions: Vec<SessionUsageJson<'a>>,
}

#[derive(Debug, Serialize)]
struct DayJson<'a> {
    day: &'a str,
    calls: u64,
    usage: UsageJson,
    cost_usd: f64,
}

#[derive(Debug, Serialize)]
struct ModelJson<'a> {
    provider: &'a str,
    model: &'a str,
    calls: u64,
    usage: UsageJson,
    cost_usd: f64,
}

#[derive(Debug, Serialize)]
struct SessionUsageJson<'a> {
    session_id: Option<&'a str>,
    title: &'a str,
    deleted: bool,
    calls: u64,
    cost_usd: f64,
}

#[cfg(test)]
mod tests {
    use blufio_proto::control::v1::{CostStatus, DayUsage, ModelUsage, SessionUsage};
    use serde_json::json;

    use super::*;
    use crate::output::testing::{ALIGNED, COLOR, strip_ansi};

    fn sample_usage() -> GetUsageResponse {
        let tokens = TokenUsage {
            input_tokens: 12_345,
            output_tokens: 678,
            cache_creation_input_tokens: 1_500_000,
            cache_read_input_tokens: 20_000,
        };
        GetUsageResponse {
            days: vec![
                DayUsage {
                    day: "2026-11-27".into(),
                    cost_usd: 0.5,
                    usage: Some(tokens),
                    calls: 12,
                },
                DayUsage {
                    day: "2026-11-28".into(),
                    cost_usd: 0.25,
                    usage: Some(TokenUsage::default()),
                    calls: 3,
                },
            ],
            models: vec![ModelUsage {
                provider: "anthropic".into(),
                model: "claude-sonnet-4-5".into(),
                cost_usd: 0.75,
                usage: Some(tokens),
                calls: 15,
            }],
            sessions: vec![
                SessionUsage {
                    session_id: "s1".into(),
                    title: "Weather\nin Paris".into(),
                    cost_usd: 0.7,
                    calls: 14,
                    deleted: false,
                },
                SessionUsage {
                    session_id: "s-gone".into(),
                    title: String::new(),
                    cost_usd: 0.05,
                    calls: 1,
                    deleted: true,
                },
            ],
            cost: Some(CostStatus {
                today_usd: 0.9,
                month_usd: 3.5,
                daily_cap_usd: 1.0,
                monthly_cap_usd: 0.0,
                reserved_usd: 0.02,
            }),
        }
    }

    /// `usage` for the last `days` days, as printed.
    fn usage_text(usage: &GetUsageResponse, days: u32, style: Style) -> String {
        Usage { usage, days }.human(style).stdout
    }

    /// `usage --json` as a value.
    fn usage_value(usage: &GetUsageResponse) -> serde_json::Value {
        serde_json::to_value(Usage { usage, days: 30 }.json()).expect("serializes")
    }

    #[test]
    fn usage_tables() {
        let stdout = usage_text(&sample_usage(), 30, ALIGNED);
        let expected = "\
today:       $0.90 of $1.00 (90%)
this month:  $3.50 (no cap)
reserved:    $0.02 by calls in flight

per day, the last 30 days (UTC)
DAY         CALLS  IN     OUT  CACHE W/R   COST
2026-11-27  12     12.3k  678  1.5M/20.0k  $0.5000
2026-11-28  3      0      0    0/0         $0.2500
total       15     12.3k  678  1.5M/20.0k  $0.7500

per model
MODEL                        CALLS  IN     OUT  CACHE W/R   COST
anthropic/claude-sonnet-4-5  15     12.3k  678  1.5M/20.0k  $0.7500

top sessions
SESSION  CALLS  COST     TITLE
s1       14     $0.7000  Weather in Paris
s-gone   1      $0.0500  (deleted)
";
        assert_eq!(stdout, expected);

        // Near the cap is yellow; colour never shifts the columns.
        let coloured = usage_text(&sample_usage(), 30, COLOR);
        assert!(coloured.contains("\x1b[33m$0.90 of $1.00 (90%)\x1b[0m"), "{coloured}");
        assert_eq!(strip_ansi(&coloured), stdout);

        let quiet = GetUsageResponse {
            days: vec![],
            cost: None,
            ..sample_usage()
        };
        assert_eq!(usage_text(&quiet, 7, ALIGNED), "no provider calls in the last 7 days\n");
    }

    #[test]
    fn usage_json_shape() {
        let usage = sample_usage();
        let value = usage_value(&usage);
        let tokens = json!({"input_tokens": 12_345, "output_tokens": 678,
                            "cache_creation_input_tokens": 1_500_000, "cache_read_input_tokens": 20_000});
        assert_eq!(
            value["days"][0],
            json!({"day": "2026-11-27", "calls": 12, "usage": tokens, "cost_usd": 0.5})
        );
        assert_eq!(
            value["models"],
            json!([{"provider": "anthropic", "model": "claude-sonnet-4-5", "calls": 15, "usage": tokens,
                    "cost_usd": 0.75}])
        );
        assert_eq!(
            value["sessions"],
            json!([{"session_id": "s1", "title": "Weather\nin Paris", "calls": 14, "cost_usd": 0.7, "deleted": false},
                   {"session_id": "s-gone", "title": "", "calls": 1, "cost_usd": 0.05, "deleted": true}])
        );
        assert_eq!(
            value["cost"],
            json!({"today_usd": 0.9, "month_usd": 3.5, "daily_cap_usd": 1.0, "monthly_cap_usd": 0.0,
                   "reserved_usd": 0.02})
        );
        let value = usage_value(&GetUsageResponse::default());
        assert_eq!(value, json!({"cost": null, "days": [], "models": [], "sessions": []}));
    }
}
