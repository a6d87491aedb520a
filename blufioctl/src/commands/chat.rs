//! `blufioctl chat`: one turn, streamed to the terminal, or collected into one `--json` document.
//! The turn itself is [`crate::chat`]'s; `remote chat` reports its turns the same way.
//!
//! Unlike the other commands, `chat` has no [`Render`](crate::output::Render) view: its human
//! output is the turn itself, echoed as it streams, so only the `--json` document is built at
//! the end.

use std::io;

use anyhow::Context as _;
use blufio_proto::control::v1::{ToolActivity, TurnCompleted};
use serde::Serialize;

use super::Context;
use crate::Printer;
use crate::chat::{self, Echo, Transcript};
use crate::cli::ChatArgs;
use crate::output::{UsageJson, non_empty};
use crate::{Failure, Outcome};

/// Runs `chat`.
pub async fn run(context: &Context<'_>, args: ChatArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    // Read the message before connecting: an empty one is the user's to fix first.
    let text = message(&args.message)?;
    let mut client = context.connect().await?;
    let mut transcript = Transcript::new(args.session.unwrap_or_default());
    let mut echo = (!args.json).then(|| printer.echo());
    let result = chat::run_turn(&mut client, text, &mut transcript, echo.as_mut()).await;
    finish_turn(printer, echo, &transcript, result)
}

/// Reports a turn of `chat` or `remote chat`: the `--json` document (when there is no `echo`),
/// or the end of the streamed text, the summary line and any warning.
pub fn finish_turn<E>(
    printer: &Printer,
    echo: Option<Echo>,
    transcript: &Transcript,
    result: Result<TurnCompleted, E>,
) -> Result<Outcome, Failure>
where
    Failure: From<E>,
{
    let result = result.map_err(|error| after_acceptance(Failure::from(error), transcript));
    let Some(mut echo) = echo else {
        let completed = result?;
        printer.json(&turn_json(transcript, &completed))?;
        return Ok(Outcome::Success);
    };
    echo.end_text();
    let completed = result?;
    echo.note(&chat::summary(&transcript.session_id, &completed));
    if let Some(warning) = chat::stop_warning(&completed) {
        echo.warning(&warning);
    }
    if let Some(error) = echo.take_write_error() {
        return Err(anyhow::Error::new(error).context("cannot write to stdout").into());
    }
    Ok(Outcome::Success)
}

/// A turn that failed after the daemon accepted its message: the failure names the session that
/// holds the message, and says plainly when the daemon itself went away (the transport's own
/// words, an h2 or connection error, mean nothing to the owner).
fn after_acceptance(mut failure: Failure, transcript: &Transcript) -> Failure {
    if transcript.user_message_id.is_empty() {
        return failure;
    }
    let id = &transcript.session_id;
    if connection_lost(&failure.error) {
        failure.error =
            anyhow::anyhow!("blufiod went away during the turn: the connection closed before the turn ended");
        failure.hint = Some(format!(
            "your message is stored in session {id}; 'blufioctl status' shows whether blufiod is back \
             ('systemctl status blufiod' and its journal say why it stopped)"
        ));
        return failure;
    }
    let stored = format!("your message is stored in session {id}; 'chat --session {id}' continues it");
    failure.hint = Some(match failure.hint.take() {
        Some(hint) => format!("{hint}; {stored}"),
        None => stored,
    });
    failure
}

/// Whether `error` is the connection to the daemon (or gateway) breaking, not an answer.
fn connection_lost(error: &anyhow::Error) -> bool {
    use crate::client::ClientError;
    use crate::remote::RemoteError;
    if let Some(RemoteError::Transport { .. }) = error.downcast_ref::<RemoteError>() {
        return true;
    }
    let Some(ClientError::Status(status)) = error.downcast_ref::<ClientError>() else {
        return false;
    };
    // A status the daemon sent carries its own message; a broken transport is reported by tonic
    // as UNKNOWN or UNAVAILABLE with the h2 or hyper error as its source.
    matches!(
        status.code(),
        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal
    ) && (std::error::Error::source(status).is_some()
        || status.message().contains("h2 protocol error")
        || status.message().contains("transport error"))
}

/// The chat message: the words joined with spaces, or stdin for a lone `-`.
pub fn message(words: &[String]) -> anyhow::Result<String> {
    let text = if words == ["-"] {
        io::read_to_string(io::stdin()).context("cannot read the message from stdin")?
    } else {
        words.join(" ")
    };
    let text = text.trim();
    anyhow::ensure!(!text.is_empty(), "the message is empty");
    Ok(text.to_owned())
}

/// `chat --json`: the whole turn, built once it completed.
fn turn_json<'a>(transcript: &'a Transcript, completed: &'a TurnCompleted) -> ChatJson<'a> {
    ChatJson {
        session_id: &transcript.session_id,
        message_id: &completed.message_id,
        user_message_id: non_empty(&transcript.user_message_id),
        text: &transcript.text,
        tools: transcript.tools.iter().map(ChatToolJson::from).collect(),
        usage: UsageJson::from(completed.usage.as_ref()),
        cost_usd: completed.cost_usd,
        stop_reason: &completed.stop_reason,
        model: &completed.model,
        provider_calls: completed.provider_calls,
    }
}

#[derive(Debug, Serialize)]
struct ChatJson<'a> {
    session_id: &'a str,
    message_id: &'a str,
    user_message_id: Option<&'a str>,
    text: &'a str,
    tools: Vec<ChatToolJson<'a>>,
    usage: UsageJson,
    cost_usd: f64,
    stop_reason: &'a str,
    model: &'a str,
    provider_calls: u32,
}

#[derive(Debug, Serialize)]
struct ChatToolJson<'a> {
    id: &'a str,
    name: &'a str,
    is_error: bool,
    summary: Option<&'a str>,
}

impl<'a> From<&'a ToolActivity> for ChatToolJson<'a> {
    fn from(tool: &'a ToolActivity) -> Self {
        ChatToolJson {
            id: &tool.id,
            name: &tool.name,
            is_error: tool.is_error,
            summary: non_empty(&tool.summary),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::output::testing::sample_completed;

    #[test]
    fn chat_json_shape() {
        let transcript = Transcript {
            session_id: "s1".into(),
            user_message_id: "m-in".into(),
            text: "It is sunny.".into(),
            tools: vec![
                ToolActivity {
                    id: "c1".into(),
                    name: "http_get".into(),
                    phase: "finished".into(),
                    is_error: false,
                    summary: "200 OK".into(),
                },
                ToolActivity {
                    id: "c2".into(),
                    name: "shell".into(),
                    phase: "started".into(),
                    ..ToolActivity::default()
                },
            ],
        };
        let completed = sample_completed();
        let value = serde_json::to_value(turn_json(&transcript, &completed)).expect("serializes");
        assert_eq!(
            value,
            json!({
                "session_id": "s1",
                "message_id": "m-out",
                "user_message_id": "m-in",
                "text": "It is sunny.",
                "tools": [
                    {"id": "c1", "name": "http_get", "is_error": false, "summary": "200 OK"},
                    {"id": "c2", "name": "shell", "is_error": false, "summary": null}
                ],
                "usage": {"input_tokens": 1200, "output_tokens": 80, "cache_creation_input_tokens": 10,
                          "cache_read_input_tokens": 1024},
                "cost_usd": 0.012_34,
                "stop_reason": "end_turn",
                "model": "claude-sonnet-4-5",
                "provider_calls": 2
            })
        );
    }
}
