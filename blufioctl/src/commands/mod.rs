//! The commands of `blufioctl`, one module per command group of [`crate::cli::Command`]: each
//! makes its calls to the daemon (or, for `remote`, to the gateway), builds a view of the answer
//! that implements [`Render`](crate::output::Render), and prints it with `Printer::emit`, which
//! picks the `--json` document or the human output. A view's JSON shape, its human text and
//! their tests live in the command's module.
//!
//! Errors leave a command as a [`Failure`](crate::Failure), whose exit code and hint come from
//! the conversions in `main`; a command only adds a hint that needs its own context.

pub mod backup;
pub mod chat;
pub mod config;
pub mod device;
pub mod doctor;
pub mod generate;
pub mod hooks;
pub mod logs;
pub mod metrics;
pub mod remote;
pub mod sessions;
pub mod shell;
pub mod status;
pub mod usage;
pub mod vault;

use std::io::{self, IsTerminal as _};
use std::path::PathBuf;
use std::time::Duration;

use crate::Printer;
use crate::client::{Client, ClientError};
use crate::output::Style;

/// What every command gets from the global flags.
pub struct Context<'a> {
    /// The daemon's control socket (`--socket`, `BLUFIOCTL_SOCKET` or the default location).
    pub socket: PathBuf,
    /// How long to wait for one answer (`--timeout`); turns have no deadline.
    pub call_timeout: Duration,
    /// Where output, warnings and errors go.
    pub printer: &'a Printer,
}

impl Context<'_> {
    /// Connects to the daemon's control socket.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.socket, self.call_timeout).await
    }
}

/// The width of the terminal on stdout, when aligned output goes to one.
pub fn terminal_width(style: Style) -> Option<usize> {
    if !style.align || !io::stdout().is_terminal() {
        return None;
    }
    // rustyline (already here for `shell`) asks the terminal through its safe TIOCGWINSZ wrapper,
    // which spares this crate `unsafe` or another dependency. $COLUMNS is the fallback.
    let from_terminal = rustyline::DefaultEditor::new()
        .ok()
        .and_then(|mut editor| editor.dimensions())
        .map(|(columns, _rows)| usize::from(columns));
    from_terminal
        .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
        .filter(|columns| *columns > 0)
}
