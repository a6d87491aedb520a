//! `blufioctl chat`: one turn, streamed to the terminal, or collected into one `--json` document.
//! The turn itself is [`crate::chat`]'s; `remote chat` reports its turns the same way.

use std::io;

use anyhow::Context as _;
use blufio_proto::control::v1::TurnCompleted;

use super::Context;
use crate::Printer;
use crate::chat::{self, Echo, Transcript};
use crate::cli::ChatArgs;
use crate::output;
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
    let Some(mut echo) = echo else {
        let completed = result?;
        printer.json(&output::chat_json(transcript, &completed))?;
        return Ok(Outcome::Success);
    };
    echo.end_text();
    let completed = result?;
    echo.note(&output::chat_summary(&transcript.session_id, &completed));
    if let Some(warning) = output::chat_stop_warning(&completed) {
        echo.warning(&warning);
    }
    if let Some(error) = echo.take_write_error() {
        return Err(anyhow::Error::new(error).context("cannot write to stdout").into());
    }
    Ok(Outcome::Success)
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
