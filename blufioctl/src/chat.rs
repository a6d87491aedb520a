//! One agent turn over `SendMessage`, shared by `chat` and `shell`: drives the event stream,
//! echoes text deltas to stdout and tool activity to stderr as they arrive, and collects the
//! turn into a [`Transcript`] for the summary line and `--json`. `remote chat` converts the
//! gateway's events to the same proto events and reuses [`Transcript`] and [`Echo`]. The lines
//! that describe a turn to people (a tool event, the summary, a stop warning) are built here too.
//!
//! This module never decides exit codes and never applies a deadline to a turn: a turn ends when
//! the daemon ends it, or when the caller drops the future (Ctrl-C in the shell), which cancels
//! the RPC.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};

use blufio_proto::control::v1::send_message_response::Event;
use blufio_proto::control::v1::{ToolActivity, TurnCompleted};

use crate::client::{Client, ClientError};
use crate::output::{Paint, Style, usd_precise};

/// What one turn produced so far. It stays meaningful when the turn fails or is cancelled: once
/// `accepted` arrived, `session_id` names the session the message went to.
#[derive(Debug, Default)]
pub struct Transcript {
    /// The session of the turn: the one asked for, or the one the daemon created.
    pub session_id: String,
    /// The stored inbound message, once accepted.
    pub user_message_id: String,
    /// The answer's text so far.
    pub text: String,
    /// Tools in the order they started; a finished tool replaces its started entry.
    pub tools: Vec<ToolActivity>,
}

impl Transcript {
    /// An empty transcript for a turn in `session_id` (empty: a new session).
    pub fn new(session_id: String) -> Transcript {
        Transcript {
            session_id,
            ..Transcript::default()
        }
    }

    /// Adds one event of the turn.
    pub fn record(&mut self, event: &Event) {
        match event {
            Event::Accepted(accepted) => {
                if !accepted.session_id.is_empty() {
                    self.session_id.clone_from(&accepted.session_id);
                }
                self.user_message_id.clone_from(&accepted.message_id);
            }
            Event::TextDelta(delta) => self.text.push_str(&delta.text),
            Event::Tool(tool) => match self.tools.iter_mut().find(|known| known.id == tool.id) {
                Some(known) => *known = tool.clone(),
                None => self.tools.push(tool.clone()),
            },
            Event::Completed(_) => {}
        }
    }
}

/// Why a turn did not produce an answer.
#[derive(Debug)]
pub enum TurnError {
    /// The call failed or the daemon ended the stream with an error status.
    Client(ClientError),
    /// The stream ended cleanly but without `completed`.
    NoAnswer,
}

impl From<ClientError> for TurnError {
    fn from(error: ClientError) -> Self {
        TurnError::Client(error)
    }
}

/// Sends `text` in `transcript.session_id` and follows the turn to its end, echoing it through
/// `echo` when given. Returns the `completed` event.
pub async fn run_turn(
    client: &mut Client,
    text: String,
    transcript: &mut Transcript,
    mut echo: Option<&mut Echo>,
) -> Result<TurnCompleted, TurnError> {
    let mut stream = client.send_message(transcript.session_id.clone(), text).await?;
    let mut completed = None;
    loop {
        let event = match stream.next().await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            // The answer is stored once `completed` arrived; a transport hiccup while the stream
            // closes does not undo that.
            Err(_) if completed.is_some() => break,
            Err(error) => return Err(error.into()),
        };
        if let Some(echo) = echo.as_deref_mut() {
            echo.event(&event);
        }
        transcript.record(&event);
        if let Event::Completed(done) = event {
            completed = Some(done);
        }
    }
    completed.ok_or(TurnError::NoAnswer)
}

/// Live output of a turn: text on stdout (flushed per delta), dim notes on stderr.
#[derive(Debug)]
pub struct Echo {
    stderr_style: Style,
    /// stdout and stderr are both terminals, so presumably the same screen: a note must then
    /// start on a fresh line rather than after half a sentence of the answer.
    shared_screen: bool,
    at_line_start: bool,
    /// The first failure to write stdout other than a closed pipe, reported after the turn.
    write_error: Option<io::Error>,
    stdout_closed: bool,
}

impl Echo {
    pub fn new(stderr_style: Style) -> Echo {
        Echo {
            stderr_style,
            shared_screen: io::stdout().is_terminal() && io::stderr().is_terminal(),
            at_line_start: true,
            write_error: None,
            stdout_closed: false,
        }
    }

    /// Echoes one event of the turn: text to stdout, tool activity to stderr.
    pub fn event(&mut self, event: &Event) {
        match event {
            Event::TextDelta(delta) => self.text(&delta.text),
            Event::Tool(tool) => self.note(&tool_line(tool)),
            Event::Accepted(_) | Event::Completed(_) => {}
        }
    }

    fn text(&mut self, text: &str) {
        if text.is_empty() || self.stdout_closed {
            return;
        }
        // A model's answer (or a compromised provider's) must not drive the terminal.
        let text = &crate::output::printable(text, true);
        let mut stdout = io::stdout().lock();
        match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            Ok(()) => self.at_line_start = text.ends_with('\n'),
            // `blufioctl chat ... | head -3`: stop writing, but let the turn finish and be stored.
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => self.stdout_closed = true,
            Err(error) => {
                self.stdout_closed = true;
                self.write_error.get_or_insert(error);
            }
        }
    }

    /// Ends the answer's last line, so that what follows (the summary, the next prompt, the
    /// shell's prompt) starts on a line of its own.
    pub fn end_text(&mut self) {
        if !self.at_line_start {
            self.text("\n");
        }
    }

    /// A dim line on stderr, such as a tool event or the summary.
    pub fn note(&mut self, line: &str) {
        if self.shared_screen {
            self.end_text();
        }
        let line = crate::output::printable(line, false);
        crate::output::eprint_line(format_args!("{}", self.stderr_style.paint(Paint::Dim, &line)));
    }

    /// A `warning:` line on stderr.
    pub fn warning(&mut self, message: &str) {
        if self.shared_screen {
            self.end_text();
        }
        crate::output::eprint_line(format_args!(
            "{}: {}",
            self.stderr_style.paint(Paint::Yellow, "warning"),
            crate::output::printable(message, true)
        ));
    }

    /// A failure to write stdout during the turn, if there was one.
    pub fn take_write_error(&mut self) -> Option<io::Error> {
        self.write_error.take()
    }
}

/// The dim stderr line for one tool event: `[tool http_get started]`,
/// `[tool http_get finished: error]`.
pub fn tool_line(tool: &ToolActivity) -> String {
    match (tool.phase.as_str(), tool.is_error) {
        ("finished", true) => format!("[tool {} finished: error]", tool.name),
        (phase, _) => format!("[tool {} {phase}]", tool.name),
    }
}

/// The one-line summary after a turn:
/// `session <id> · <in>/<out> tokens (cache w/r a/b) · $0.0123 · <model>`.
pub fn summary(session_id: &str, completed: &TurnCompleted) -> String {
    let usage = completed.usage.unwrap_or_default();
    let mut line = format!(
        "session {session_id} · {}/{} tokens (cache w/r {}/{}) · {}",
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
        usd_precise(completed.cost_usd)
    );
    if !completed.model.is_empty() {
        let _ = write!(line, " · {}", crate::output::printable(&completed.model, false));
    }
    line
}

/// A warning when the answer was cut short, for the stop reasons that mean so.
pub fn stop_warning(completed: &TurnCompleted) -> Option<String> {
    match completed.stop_reason.as_str() {
        "max_tokens" => Some("the answer was cut short: the model reached its output token limit".to_owned()),
        "tool_limit" => Some("the turn stopped at the limit of tool calls per turn".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use blufio_proto::control::v1::{Accepted, TextDelta};

    use super::*;
    use crate::output::testing::sample_completed;

    #[test]
    fn transcript_follows_the_events() {
        let mut transcript = Transcript::new(String::new());
        transcript.record(&Event::Accepted(Accepted {
            session_id: "s1".into(),
            message_id: "m1".into(),
        }));
        transcript.record(&Event::TextDelta(TextDelta { text: "Hel".into() }));
        transcript.record(&Event::TextDelta(TextDelta { text: "lo".into() }));
        let started = ToolActivity {
            id: "c1".into(),
            name: "http_get".into(),
            phase: "started".into(),
            ..ToolActivity::default()
        };
        transcript.record(&Event::Tool(started.clone()));
        transcript.record(&Event::Tool(ToolActivity {
            id: "c2".into(),
            ..started.clone()
        }));
        transcript.record(&Event::Tool(ToolActivity {
            phase: "finished".into(),
            is_error: true,
            summary: "timeout".into(),
            ..started
        }));
        assert_eq!(transcript.session_id, "s1");
        assert_eq!(transcript.user_message_id, "m1");
        assert_eq!(transcript.text, "Hello");
        let tools: Vec<(&str, &str, bool)> = transcript
            .tools
            .iter()
            .map(|tool| (tool.id.as_str(), tool.phase.as_str(), tool.is_error))
            .collect();
        assert_eq!(tools, [("c1", "finished", true), ("c2", "started", false)]);
    }

    #[test]
    fn accepted_without_id_keeps_the_requested_session() {
        let mut transcript = Transcript::new("s9".into());
        transcript.record(&Event::Accepted(Accepted::default()));
        assert_eq!(transcript.session_id, "s9");
    }

    #[test]
    fn tool_lines_and_summary() {
        let started = ToolActivity {
            id: "c1".into(),
            name: "http_get".into(),
            phase: "started".into(),
            ..ToolActivity::default()
        };
        assert_eq!(tool_line(&started), "[tool http_get started]");
        let failed = ToolActivity {
            phase: "finished".into(),
            is_error: true,
            ..started.clone()
        };
        assert_eq!(tool_line(&failed), "[tool http_get finished: error]");
        let finished = ToolActivity {
            phase: "finished".into(),
            ..started
        };
        assert_eq!(tool_line(&finished), "[tool http_get finished]");

        assert_eq!(
            summary("s1", &sample_completed()),
            "session s1 · 1200/80 tokens (cache w/r 10/1024) · $0.0123 · claude-sonnet-4-5"
        );
        let bare = TurnCompleted {
            usage: None,
            model: String::new(),
            cost_usd: 0.0,
            ..sample_completed()
        };
        assert_eq!(
            summary("s1", &bare),
            "session s1 · 0/0 tokens (cache w/r 0/0) · $0.0000"
        );
        assert_eq!(stop_warning(&sample_completed()), None);
        let cut = TurnCompleted {
            stop_reason: "max_tokens".into(),
            ..sample_completed()
        };
        assert!(stop_warning(&cut).is_some_and(|warning| warning.contains("cut short")));
    }
}
