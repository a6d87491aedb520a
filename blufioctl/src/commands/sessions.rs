//! `blufioctl sessions list|show|delete`: the chat sessions stored by the daemon. Their views are
//! also what `remote ... sessions` prints.

use std::fmt::Write as _;

use blufio_proto::control::v1::{
    ChatMessage, GetSessionResponse, ListSessionsResponse, RenameSessionResponse, Session,
};
use blufio_proto::httpsig::unix_now;
use serde::Serialize;

use super::{Context, terminal_width};
use crate::cli::{JsonArgs, SessionsCommand};
use crate::client::Client;
use crate::output::{
    Cell, Human, Paint, Render, Style, compact_json, first_line, format_utc, humanize_age, json_or_text, non_empty,
    one_line, printable, render_pairs, render_table, truncate,
};
use crate::{Failure, Outcome, session_failure};

/// Runs one `sessions` subcommand.
pub async fn run(context: &Context<'_>, command: SessionsCommand) -> Result<Outcome, Failure> {
    match command {
        SessionsCommand::List {
            limit,
            cursor,
            output: args,
        } => list(context, limit, cursor, args).await,
        SessionsCommand::Show {
            id,
            limit,
            cursor,
            output: args,
        } => show(context, id, limit, cursor, args).await,
        SessionsCommand::Delete { id, output: args } => delete(context, id, args).await,
        SessionsCommand::Rename {
            id,
            title,
            output: args,
        } => {
            let renamed = context
                .connect()
                .await?
                .rename_session(id, title)
                .await
                .map_err(session_failure)?;
            context.printer.emit(&SessionsRename(&renamed), args.json)?;
            Ok(Outcome::Success)
        }
        SessionsCommand::Prune {
            older_than,
            output: args,
        } => {
            let pruned = context.connect().await?.prune_sessions(older_than).await?;
            let view = SessionsPrune {
                deleted: pruned.deleted,
                older_than_days: older_than,
            };
            context.printer.emit(&view, args.json)?;
            Ok(Outcome::Success)
        }
        SessionsCommand::Export { id, format } => {
            let response = whole_session(&mut context.connect().await?, id).await?;
            if format == "json" {
                context.printer.json(
                    &SessionsShow {
                        response: &response,
                        now: 0,
                    }
                    .json(),
                )?;
            } else {
                context.printer.stdout(&markdown(&response))?;
            }
            Ok(Outcome::Success)
        }
    }
}

/// Messages `sessions export` asks for per page: the daemon's largest.
const EXPORT_PAGE: u32 = 2000;

/// A session with all its messages, oldest first: its pages, read back from the latest.
async fn whole_session(client: &mut Client, id: String) -> Result<GetSessionResponse, Failure> {
    let mut whole = client
        .get_session(id.clone(), EXPORT_PAGE, String::new())
        .await
        .map_err(session_failure)?;
    let mut pages = vec![std::mem::take(&mut whole.messages)];
    while !whole.next_cursor.is_empty() {
        let cursor = std::mem::take(&mut whole.next_cursor);
        let mut page = client
            .get_session(id.clone(), EXPORT_PAGE, cursor)
            .await
            .map_err(session_failure)?;
        whole.next_cursor = page.next_cursor;
        pages.push(std::mem::take(&mut page.messages));
    }
    whole.messages = pages.into_iter().rev().flatten().collect();
    Ok(whole)
}

/// A copy of `response` whose every text is printable on a terminal (see [`printable`]):
/// message texts keep their lines, everything else is one line.
fn shown(response: &GetSessionResponse) -> GetSessionResponse {
    let line = |text: &str| printable(text, false);
    let mut shown = response.clone();
    shown.next_cursor = line(&shown.next_cursor);
    if let Some(session) = &mut shown.session {
        session.id = line(&session.id);
        session.title = line(&session.title);
        session.model = line(&session.model);
        session.state = line(&session.state);
    }
    for message in &mut shown.messages {
        message.id = line(&message.id);
        message.role = line(&message.role);
        message.text = printable(&message.text, true);
        message.tool_call_id = line(&message.tool_call_id);
        for call in &mut message.tool_calls {
            call.id = line(&call.id);
            call.name = line(&call.name);
            call.input_json = line(&call.input_json);
        }
    }
    shown
}

/// A session as a Markdown transcript: a title, then each message under who wrote it.
fn markdown(response: &GetSessionResponse) -> String {
    let response = &shown(response);
    let mut text = String::new();
    if let Some(session) = &response.session {
        let _ = writeln!(text, "# {}\n", printable(&one_line(&session.title), false));
        let _ = writeln!(
            text,
            "Session `{}`, started {} (UTC).\n",
            session.id,
            format_utc(session.created_at)
        );
    }
    for message in &response.messages {
        let who = match message.role.as_str() {
            "user" => "You".to_owned(),
            "assistant" => "blufio".to_owned(),
            other => format!("{other} results"),
        };
        let _ = writeln!(text, "## {who} · {}\n", format_utc(message.created_at));
        if !message.text.is_empty() {
            let _ = writeln!(text, "{}\n", printable(message.text.trim_end(), true));
        }
        for call in &message.tool_calls {
            let _ = writeln!(
                text,
                "Tool call `{}`: `{}`\n",
                call.name,
                compact_json(&call.input_json)
            );
        }
    }
    text
}

/// The daemon's answer to `sessions rename`.
pub struct SessionsRename<'a>(pub &'a RenameSessionResponse);

impl Render for SessionsRename<'_> {
    /// `sessions rename --json`: the session, as `sessions list` shows each.
    fn json(&self) -> impl Serialize {
        self.0.session.as_ref().map(SessionJson::from)
    }

    fn human(&self, style: Style) -> Human {
        let mut human = Human::default();
        if let Some(session) = &self.0.session {
            let _ = writeln!(
                human.stdout,
                "session {} is now {}",
                printable(&session.id, false),
                style.paint(Paint::Bold, &one_line(&session.title))
            );
        }
        human
    }
}

/// What `sessions prune` did.
pub struct SessionsPrune {
    pub deleted: u64,
    pub older_than_days: u32,
}

impl Render for SessionsPrune {
    /// `sessions prune --json`: `{"deleted": N, "older_than_days": D}`.
    fn json(&self) -> impl Serialize {
        serde_json::json!({"deleted": self.deleted, "older_than_days": self.older_than_days})
    }

    fn human(&self, _style: Style) -> Human {
        Human {
            stdout: format!(
                "deleted {} session(s) not updated for {} day(s); their spend stays in `blufioctl usage`\n",
                self.deleted, self.older_than_days
            ),
            ..Human::default()
        }
    }
}

/// A page of sessions, for `sessions list` and `remote ... sessions list`. `now` is the current
/// Unix time, for the UPDATED column; `max_width` is the terminal's width when known, to which
/// TITLE is truncated.
pub struct SessionsList<'a> {
    pub list: &'a ListSessionsResponse,
    pub now: i64,
    pub max_width: Option<usize>,
}

impl Render for SessionsList<'_> {
    /// `sessions list --json`.
    fn json(&self) -> impl Serialize {
        let list = self.list;
        SessionsListJson {
            sessions: list.sessions.iter().map(SessionJson::from).collect(),
            next_cursor: non_empty(&list.next_cursor),
        }
    }

    /// `sessions list` as a table.
    fn human(&self, style: Style) -> Human {
        let SessionsList { list, now, max_width } = *self;
        if list.sessions.is_empty() {
            return Human {
                stdout: "no sessions yet; start one with 'blufioctl chat MESSAGE'\n".to_owned(),
                ..Human::default()
            };
        }
        let mut rows = vec![
            ["ID", "UPDATED", "STATE", "MESSAGES", "TITLE"]
                .iter()
                .map(|title| Cell::painted(style, Paint::Bold, title))
                .collect::<Vec<_>>(),
        ];
        for session in &list.sessions {
            rows.push(vec![
                Cell::plain(&session.id),
                Cell::plain(&humanize_age(now, session.updated_at)),
                session_state_cell(style, &session.state),
                Cell::plain(&session.message_count.to_string()),
                Cell::plain(""),
            ]);
        }
        // TITLE is last, so it gets whatever width the other columns leave.
        let title_width = max_width.filter(|_| style.align).map(|max_width| {
            let others: usize = (0..4)
                .map(|column_idx| rows.iter().map(|row| row[column_idx].width).max().unwrap_or(0) + 2)
                .sum();
            max_width.saturating_sub(others).max(MIN_TITLE_WIDTH)
        });
        for (row, session) in rows.iter_mut().skip(1).zip(&list.sessions) {
            row[4] = if session.title.is_empty() {
                Cell::painted(style, Paint::Dim, "(untitled)")
            } else {
                let title = one_line(&session.title);
                Cell::plain(&match title_width {
                    Some(width) => truncate(&title, width),
                    None => title,
                })
            };
        }
        let mut stdout = render_table(style, &rows);
        if !list.next_cursor.is_empty() {
            let note = format!(
                "more sessions: --limit N, or --cursor {}",
                printable(&list.next_cursor, false)
            );
            let _ = writeln!(stdout, "{}", style.paint(Paint::Dim, &note));
        }
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// One session and its most recent messages, for `sessions show` and `remote ... sessions show`.
/// `now` is the current Unix time, for the ages.
pub struct SessionsShow<'a> {
    pub response: &'a GetSessionResponse,
    pub now: i64,
}

impl Render for SessionsShow<'_> {
    /// `sessions show --json`.
    fn json(&self) -> impl Serialize {
        let session = self.response;
        SessionShowJson {
            session: session.session.as_ref().map(SessionJson::from),
            messages: session.messages.iter().map(MessageJson::from).collect(),
            next_cursor: Some(session.next_cursor.as_str()).filter(|cursor| !cursor.is_empty()),
        }
    }

    /// `sessions show`: a header, then the messages as `you:`, `blufio:` and `tool NAME:`
    /// paragraphs.
    fn human(&self, style: Style) -> Human {
        let SessionsShow { response, now } = *self;
        // Every field came from the daemon or a gateway: made printable once, up front.
        let response = &shown(response);
        let mut stdout = String::new();
        if let Some(session) = &response.session {
            let _ = writeln!(
                stdout,
                "{}",
                style.paint(Paint::Bold, &format!("session {}", session.id))
            );
            let title = if session.title.is_empty() {
                Cell::painted(style, Paint::Dim, "(untitled)")
            } else {
                Cell::plain(&one_line(&session.title))
            };
            let mut messages = Cell::plain(&session.message_count.to_string());
            let shown = response.messages.len() as u64;
            if !response.next_cursor.is_empty() {
                messages.push(
                    style,
                    Paint::Dim,
                    &format!(
                        " (showing {shown}; the ones before them with --cursor {})",
                        response.next_cursor
                    ),
                );
            } else if shown < session.message_count {
                messages.push(
                    style,
                    Paint::Dim,
                    &format!(" (showing the last {shown}; --limit N for more)"),
                );
            }
            let mut rows = vec![
                ("title".to_owned(), title),
                ("created".to_owned(), Cell::plain(&format_utc(session.created_at))),
                (
                    "updated".to_owned(),
                    Cell::plain(&humanize_age(now, session.updated_at)),
                ),
                ("state".to_owned(), session_state_cell(style, &session.state)),
                ("messages".to_owned(), messages),
            ];
            if !session.model.is_empty() {
                rows.push(("model".to_owned(), Cell::plain(&session.model)));
            }
            stdout.push_str(&render_pairs(style, &rows));
        }

        // Tool results name their call by id; the calls (and so the tool names) are on the
        // assistant message before them.
        let mut tool_names: Vec<(&str, &str)> = Vec::new();
        for message in &response.messages {
            stdout.push('\n');
            match message.role.as_str() {
                "user" => {
                    let _ = writeln!(
                        stdout,
                        "{} {}",
                        style.paint(Paint::Bold, "you:"),
                        printable(&message.text, true)
                    );
                }
                "assistant" => {
                    let label = style.paint(Paint::Bold, "blufio:");
                    if message.text.is_empty() {
                        let _ = writeln!(stdout, "{label}");
                    } else {
                        let _ = writeln!(stdout, "{label} {}", printable(&message.text, true));
                    }
                    for call in &message.tool_calls {
                        tool_names.push((&call.id, &call.name));
                        let input = truncate(&compact_json(&call.input_json), TOOL_INPUT_WIDTH);
                        let line = format!("  → {} {input}", call.name);
                        let _ = writeln!(stdout, "{}", style.paint(Paint::Dim, &printable(&line, false)));
                    }
                }
                "tool" => {
                    let name = tool_names
                        .iter()
                        .rev()
                        .find(|(id, _)| *id == message.tool_call_id)
                        .map_or("?", |(_, name)| name);
                    let label = if message.is_error {
                        style.paint(Paint::Red, &format!("tool {name} (error):"))
                    } else {
                        style.paint(Paint::Bold, &format!("tool {name}:"))
                    };
                    let result = style.paint(
                        Paint::Dim,
                        &printable(&first_line(&message.text, TOOL_RESULT_WIDTH), false),
                    );
                    let _ = writeln!(stdout, "{label} {result}");
                }
                other => {
                    let _ = writeln!(
                        stdout,
                        "{} {}",
                        style.paint(Paint::Bold, &format!("{other}:")),
                        message.text
                    );
                }
            }
        }
        if response.messages.is_empty() {
            let _ = writeln!(stdout, "\n{}", style.paint(Paint::Dim, "no messages"));
        }
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// The id of a deleted session, for `sessions delete` and `remote ... sessions delete`.
pub struct SessionsDelete<'a>(pub &'a str);

impl Render for SessionsDelete<'_> {
    /// `sessions delete --json`.
    fn json(&self) -> impl Serialize {
        let id = self.0;
        SessionDeleteJson {
            session_id: id,
            deleted: true,
        }
    }

    /// `sessions delete`.
    fn human(&self, _style: Style) -> Human {
        let id = self.0;
        Human {
            stdout: format!("deleted session {id}\n"),
            ..Human::default()
        }
    }
}

async fn list(
    context: &Context<'_>,
    limit: Option<u32>,
    cursor: Option<String>,
    args: JsonArgs,
) -> Result<Outcome, Failure> {
    let list = context
        .connect()
        .await?
        .list_sessions(limit.unwrap_or(0), cursor.unwrap_or_default())
        .await?;
    let view = SessionsList {
        list: &list,
        now: unix_now(),
        max_width: terminal_width(context.printer.stdout_style),
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

async fn show(
    context: &Context<'_>,
    id: String,
    limit: Option<u32>,
    cursor: Option<String>,
    args: JsonArgs,
) -> Result<Outcome, Failure> {
    let session = context
        .connect()
        .await?
        .get_session(id, limit.unwrap_or(0), cursor.unwrap_or_default())
        .await
        .map_err(session_failure)?;
    let view = SessionsShow {
        response: &session,
        now: unix_now(),
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

async fn delete(context: &Context<'_>, id: String, args: JsonArgs) -> Result<Outcome, Failure> {
    context
        .connect()
        .await?
        .delete_session(id.clone())
        .await
        .map_err(session_failure)?;
    context.printer.emit(&SessionsDelete(&id), args.json)?;
    Ok(Outcome::Success)
}

/// Shortest TITLE column, even on a narrow terminal.
const MIN_TITLE_WIDTH: usize = 16;
/// Characters of a tool call's input shown by `sessions show`.
const TOOL_INPUT_WIDTH: usize = 100;
/// Characters of a tool's result shown by `sessions show`.
const TOOL_RESULT_WIDTH: usize = 100;

fn session_state_cell(style: Style, state: &str) -> Cell {
    let paint = match state {
        "running" => Paint::Bold,
        "interrupted" => Paint::Yellow,
        _ => Paint::None,
    };
    Cell::painted(style, paint, state)
}

#[derive(Debug, Serialize)]
struct SessionsListJson<'a> {
    sessions: Vec<SessionJson<'a>>,
    next_cursor: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SessionJson<'a> {
    id: &'a str,
    title: &'a str,
    created_at: i64,
    updated_at: i64,
    model: Option<&'a str>,
    state: &'a str,
    message_count: u64,
}

impl<'a> From<&'a Session> for SessionJson<'a> {
    fn from(session: &'a Session) -> Self {
        SessionJson {
            id: &session.id,
            title: &session.title,
            created_at: session.created_at,
            updated_at: session.updated_at,
            model: non_empty(&session.model),
            state: &session.state,
            message_count: session.message_count,
        }
    }
}

#[derive(Debug, Serialize)]
struct SessionShowJson<'a> {
    session: Option<SessionJson<'a>>,
    messages: Vec<MessageJson<'a>>,
    /// Older messages remain: `--cursor` for the page before; null at the first message.
    next_cursor: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct MessageJson<'a> {
    id: &'a str,
    role: &'a str,
    text: &'a str,
    tool_calls: Vec<ToolCallJson<'a>>,
    tool_call_id: Option<&'a str>,
    is_error: bool,
    created_at: i64,
}

impl<'a> From<&'a ChatMessage> for MessageJson<'a> {
    fn from(message: &'a ChatMessage) -> Self {
        MessageJson {
            id: &message.id,
            role: &message.role,
            text: &message.text,
            tool_calls: message
                .tool_calls
                .iter()
                .map(|call| ToolCallJson {
                    id: &call.id,
                    name: &call.name,
                    input: json_or_text(&call.input_json),
                })
                .collect(),
            tool_call_id: non_empty(&message.tool_call_id),
            is_error: message.is_error,
            created_at: message.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
struct ToolCallJson<'a> {
    id: &'a str,
    name: &'a str,
    input: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct SessionDeleteJson<'a> {
    session_id: &'a str,
    deleted: bool,
}

#[cfg(test)]
mod tests {
    use blufio_proto::control::v1::ToolCall;
    use serde_json::json;

    use super::*;
    use crate::output::testing::{ALIGNED, NOW};

    fn sample_session(id: &str, title: &str, updated_at: i64, state: &str) -> Session {
        Session {
            id: id.into(),
            title: title.into(),
            created_at: 1_764_000_000,
            updated_at,
            model: "claude-sonnet-4-5".into(),
            state: state.into(),
            message_count: 12,
        }
    }

    /// `sessions list` as printed at `NOW`, on a terminal `max_width` wide when given.
    fn list_text(list: &ListSessionsResponse, max_width: Option<usize>, style: Style) -> String {
        let view = SessionsList {
            list,
            now: NOW,
            max_width,
        };
        view.human(style).stdout
    }

    #[test]
    fn sessions_table_truncates_titles_to_the_terminal() {
        let list = ListSessionsResponse {
            sessions: vec![
                sample_session(
                    "s1",
                    "What is the weather in Paris tomorrow morning?",
                    NOW - 180,
                    "running",
                ),
                sample_session("s22", "", NOW - 2 * 86_400, "interrupted"),
            ],
            next_cursor: String::new(),
        };
        let stdout = list_text(&list, Some(60), ALIGNED);
        let expected = [
            "ID   UPDATED  STATE        MESSAGES  TITLE",
            "s1   3m ago   running      12        What is the weather in…",
            "s22  2d ago   interrupted  12        (untitled)",
            "",
        ]
        .join("\n");
        assert_eq!(stdout, expected);
        assert!(stdout.lines().all(|line| line.chars().count() <= 60), "{stdout}");
        // A narrow terminal still gets a readable title; the line may wrap.
        let narrow = list_text(&list, Some(40), ALIGNED);
        assert!(narrow.contains("  What is the wea…\n"), "{narrow}");

        // Without a terminal width, or in plain output, titles stay whole for scripts.
        let whole = list_text(&list, None, ALIGNED);
        assert!(
            whole.contains("What is the weather in Paris tomorrow morning?\n"),
            "{whole}"
        );
        let plain = list_text(&list, Some(50), Style::PLAIN);
        assert!(plain.starts_with("ID\tUPDATED\tSTATE\tMESSAGES\tTITLE\ns1\t3m ago\trunning\t12\tWhat is"));
        assert!(plain.contains("tomorrow morning?\n"), "{plain}");

        let paged = ListSessionsResponse {
            next_cursor: "c-2".into(),
            ..list
        };
        let stdout = list_text(&paged, None, ALIGNED);
        assert!(
            stdout.ends_with("more sessions: --limit N, or --cursor c-2\n"),
            "{stdout}"
        );
        let empty = list_text(&ListSessionsResponse::default(), None, ALIGNED);
        assert!(empty.starts_with("no sessions yet"), "{empty}");
    }

    #[test]
    fn sessions_json_shapes() {
        let list = ListSessionsResponse {
            sessions: vec![Session {
                model: String::new(),
                ..sample_session("s1", "", 1_764_000_100, "idle")
            }],
            next_cursor: "c-2".into(),
        };
        let view = SessionsList {
            list: &list,
            now: NOW,
            max_width: None,
        };
        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(
            value,
            json!({
                "sessions": [{"id": "s1", "title": "", "created_at": 1_764_000_000, "updated_at": 1_764_000_100,
                              "model": null, "state": "idle", "message_count": 12}],
                "next_cursor": "c-2"
            })
        );
        let value = serde_json::to_value(SessionsDelete("s1").json()).expect("serializes");
        assert_eq!(value, json!({"session_id": "s1", "deleted": true}));
        assert_eq!(SessionsDelete("s1").human(ALIGNED).stdout, "deleted session s1\n");
    }

    fn sample_conversation() -> GetSessionResponse {
        let message = |id: &str, role: &str, text: &str| ChatMessage {
            id: id.into(),
            role: role.into(),
            text: text.into(),
            created_at: 1_764_000_000,
            ..ChatMessage::default()
        };
        GetSessionResponse {
            session: Some(sample_session("s1", "Weather", NOW - 180, "idle")),
            messages: vec![
                message("m1", "user", "Weather in Paris?"),
                ChatMessage {
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "http_get".into(),
                        input_json: "{\"url\": \"https://wttr.in/Paris\"}".into(),
                    }],
                    ..message("m2", "assistant", "")
                },
                ChatMessage {
                    tool_call_id: "c1".into(),
                    is_error: true,
                    ..message("m3", "tool", "timeout\nafter 30s")
                },
                message("m4", "assistant", "I could not check."),
            ],
            next_cursor: String::new(),
        }
    }

    #[test]
    fn session_show_lines() {
        let stdout = SessionsShow {
            response: &sample_conversation(),
            now: NOW,
        }
        .human(ALIGNED)
        .stdout;
        let expected = "\
session s1
title:     Weather
created:   2025-11-24 16:00 UTC
updated:   3m ago
state:     idle
messages:  12 (showing the last 4; --limit N for more)
model:     claude-sonnet-4-5

you: Weather in Paris?

blufio:
  → http_get {\"url\":\"https://wttr.in/Paris\"}

tool http_get (error): timeout …

blufio: I could not check.
";
        assert_eq!(stdout, expected);
    }

    #[test]
    fn session_show_json_shape() {
        let conversation = sample_conversation();
        let view = SessionsShow {
            response: &conversation,
            now: NOW,
        };
        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(value["session"]["id"], "s1");
        assert_eq!(
            value["messages"][1],
            json!({"id": "m2", "role": "assistant", "text": "",
                   "tool_calls": [{"id": "c1", "name": "http_get", "input": {"url": "https://wttr.in/Paris"}}],
                   "tool_call_id": null, "is_error": false, "created_at": 1_764_000_000})
        );
        assert_eq!(
            value["messages"][2],
            json!({"id": "m3", "role": "tool", "text": "timeout\nafter 30s", "tool_calls": [],
                   "tool_call_id": "c1", "is_error": true, "created_at": 1_764_000_000})
        );
        assert_eq!(value["next_cursor"], json!(null), "the first page");
        // A cursor is shown as text, like every field a gateway sends: no terminal escapes.
        let paged = GetSessionResponse {
            next_cursor: "m0\u{1b}[2J".into(),
            ..conversation
        };
        let view = SessionsShow {
            response: &paged,
            now: NOW,
        };
        assert_eq!(serde_json::to_value(view.json()).unwrap()["next_cursor"], "m0\u{1b}[2J");
        let human = view.human(ALIGNED).stdout;
        assert!(
            human.contains("(showing 4; the ones before them with --cursor m0") && !human.contains('\u{1b}'),
            "{human}"
        );
    }
}
