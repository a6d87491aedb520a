//! `blufioctl completions SHELL` and `blufioctl man`: text generated from the command line's
//! definition, for shells and for packaging (`cargo xtask dist`).

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Context;
use crate::cli::Cli;
use crate::{Failure, Outcome};

/// Prints the completion script for `shell`.
pub fn completions(context: &Context<'_>, shell: clap_complete::Shell) -> Result<Outcome, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "blufioctl", &mut script);
    let script = String::from_utf8(script).context("completion script is not utf-8")?;
    context.printer.stdout(&script)?;
    Ok(Outcome::Success)
}

/// Prints the roff man page, or writes it and one page per subcommand (`blufioctl-config-get.1`)
/// into `dir`.
pub fn man(context: &Context<'_>, dir: Option<&std::path::Path>) -> Result<Outcome, Failure> {
    if let Some(dir) = dir {
        clap_mangen::generate_to(Cli::command(), dir)
            .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
        return Ok(Outcome::Success);
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("cannot render the man page")?;
    let page = String::from_utf8(page).context("man page is not utf-8")?;
    context.printer.stdout(&page)?;
    Ok(Outcome::Success)
}
