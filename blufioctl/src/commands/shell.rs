//! `blufioctl shell`: an interactive conversation with the agent, one message per line, over the
//! same streamed `SendMessage` turns as `chat`.
//!
//! rustyline's `readline` blocks, so each prompt runs on tokio's blocking pool with the editor
//! moved there and back; the turns run on the runtime, raced against Ctrl-C. While a line is
//! edited the terminal is in raw mode, so Ctrl-C reaches rustyline as a key (clear the line);
//! while a turn streams it is a SIGINT, which cancels the turn by dropping its RPC.
//!
//! A failed turn never ends the shell: its error is printed and the next prompt follows; the
//! shell then exits 1 at the end, so that scripts feeding it lines learn that something failed.
//! A `--session` that does not exist is refused before the first prompt.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rustyline::error::ReadlineError;
use rustyline::{Config, DefaultEditor};

use super::Context;
use crate::chat::{self, Transcript};
use crate::output::Paint;
use crate::{Failure, Outcome, Printer};

/// Lines of history kept on disk and in memory.
const HISTORY_ENTRIES: usize = 1000;

/// The prompt; plain text, since rustyline measures it to place the cursor.
const PROMPT: &str = "blufio> ";

/// What `/help` prints.
const HELP: &str = "\
Type a message and press Enter to send it; the answer streams below.
  /new      start a new session with the next message
  /session  show the current session's id
  /help     show this help
  /quit     leave (so does Ctrl-D)
Ctrl-C cancels an answer while it streams, or clears the line being typed.
";

/// Runs the shell until Ctrl-D or `/quit`; `session` continues an existing session.
pub async fn run(context: &Context<'_>, session: Option<String>) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let mut client = context.connect().await?;
    let config = Config::builder()
        .max_history_size(HISTORY_ENTRIES)
        .context("cannot configure the line editor")?
        .history_ignore_dups(true)
        .context("cannot configure the line editor")?
        .history_ignore_space(true)
        .auto_add_history(false)
        .build();
    let mut editor = DefaultEditor::with_config(config).context("cannot start the line editor")?;
    let history = history_path(|name| std::env::var_os(name));
    if let Some(path) = &history
        && let Err(error) = editor.load_history(path)
        && !is_not_found(&error)
    {
        printer.warning(&format!("cannot read the shell history {}: {error}", path.display()));
    }

    let mut session_id = session.filter(|id| !id.is_empty());
    // A session that does not exist is said now, not after the first message is typed.
    if let Some(id) = &session_id {
        client
            .get_session(id.clone(), 1, String::new())
            .await
            .map_err(crate::session_failure)?;
    }
    let mut failed_turns = 0_usize;
    if io::stdin().is_terminal() {
        let intro = "blufio shell: type a message, /help for commands, Ctrl-D to quit";
        crate::output::eprint_line(format_args!("{}", printer.stderr_style.paint(Paint::Dim, intro)));
    }

    loop {
        let (returned, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(PROMPT);
            (editor, line)
        })
        .await
        .context("the line editor stopped")?;
        editor = returned;
        let line = match line {
            Ok(line) => line,
            // Ctrl-C at the prompt: rustyline dropped the line; offer a fresh prompt.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(error) => return Err(anyhow::Error::new(error).context("cannot read a line").into()),
        };
        if line.trim().is_empty() {
            continue;
        }
        // Like bash's ignorespace, a line typed with a leading blank stays out of the history;
        // rustyline checks that, so it gets the line before trimming.
        remember(&mut editor, history.as_deref(), line.trim_end(), printer);
        let line = line.trim();

        if let Some(command) = line.strip_prefix('/') {
            match command.trim() {
                "quit" | "exit" | "q" => break,
                "new" => {
                    session_id = None;
                    printer.stdout("the next message starts a new session\n")?;
                }
                "session" => match &session_id {
                    Some(id) => printer.stdout(&format!("{id}\n"))?,
                    None => printer.stdout("no session yet; the next message starts one\n")?,
                },
                "help" | "?" => printer.stdout(HELP)?,
                other => printer.error(&format!("unknown command /{other}; /help lists the commands")),
            }
            continue;
        }

        let mut transcript = Transcript::new(session_id.clone().unwrap_or_default());
        let mut echo = printer.echo();
        // Registered per turn, so that a stray SIGINT from before the turn cannot cancel it. If
        // the handler cannot be installed, the turn simply cannot be cancelled.
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            result = chat::run_turn(&mut client, line.to_owned(), &mut transcript, Some(&mut echo)) => Some(result),
            () = ctrl_c => None,
        };
        echo.end_text();
        // The first reply fixes the session, even when the turn then failed or was cancelled:
        // the message is stored there.
        if !transcript.session_id.is_empty() {
            session_id = Some(transcript.session_id.clone());
        }
        match result {
            None => echo.note("[cancelled]"),
            Some(Ok(completed)) => {
                echo.note(&chat::summary(&transcript.session_id, &completed));
                if let Some(warning) = chat::stop_warning(&completed) {
                    echo.warning(&warning);
                }
            }
            Some(Err(error)) => {
                failed_turns += 1;
                printer.failure(&Failure::from(error));
            }
        }
        if let Some(error) = echo.take_write_error() {
            return Err(anyhow::Error::new(error).context("cannot write to stdout").into());
        }
    }
    // Like a shell, the exit status says whether everything asked for was done.
    if failed_turns > 0 {
        printer.warning(&format!(
            "{failed_turns} turn(s) of this shell failed; their messages are stored in their sessions"
        ));
        return Ok(Outcome::Invalid);
    }
    Ok(Outcome::Success)
}

/// Adds `line` to the history and writes the history file, so that a crash or a closed terminal
/// loses nothing. Failing to save is worth a warning, not the session.
fn remember(editor: &mut DefaultEditor, history: Option<&Path>, line: &str, printer: &Printer) {
    if let Err(error) = editor.add_history_entry(line) {
        printer.warning(&format!("cannot add to the shell history: {error}"));
        return;
    }
    let Some(path) = history else { return };
    if let Some(dir) = path.parent()
        && let Err(error) = std::fs::create_dir_all(dir)
    {
        printer.warning(&format!("cannot create {}: {error}", dir.display()));
        return;
    }
    if let Err(error) = editor.save_history(path) {
        printer.warning(&format!("cannot write the shell history {}: {error}", path.display()));
    }
}

/// `$XDG_STATE_HOME/blufio/shell_history`, or `~/.local/state/blufio/shell_history`; none when
/// neither variable gives an absolute path (the XDG spec says to ignore relative ones).
fn history_path(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let absolute = |name: &str| var(name).map(PathBuf::from).filter(|path| path.is_absolute());
    let state_home = absolute("XDG_STATE_HOME").or_else(|| Some(absolute("HOME")?.join(".local/state")))?;
    Some(state_home.join("blufio").join("shell_history"))
}

fn is_not_found(error: &ReadlineError) -> bool {
    matches!(error, ReadlineError::Io(error) if error.kind() == io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), OsString::from(value)))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn history_prefers_xdg_state_home() {
        let path = history_path(env(&[("XDG_STATE_HOME", "/state"), ("HOME", "/home/u")]));
        assert_eq!(path, Some(PathBuf::from("/state/blufio/shell_history")));
        let path = history_path(env(&[("HOME", "/home/u")]));
        assert_eq!(path, Some(PathBuf::from("/home/u/.local/state/blufio/shell_history")));
        let path = history_path(env(&[("XDG_STATE_HOME", "relative"), ("HOME", "/home/u")]));
        assert_eq!(path, Some(PathBuf::from("/home/u/.local/state/blufio/shell_history")));
        assert_eq!(history_path(env(&[])), None);
    }
}
