//! `blufioctl status`: the daemon's state, storage, subsystems and the caller's access.

use super::Context;
use crate::cli::JsonArgs;
use crate::output;
use crate::{Failure, Outcome};

/// Runs `status`.
pub async fn run(context: &Context<'_>, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let status = context.connect().await?.get_status().await?;
    if args.json {
        printer.json(&output::status_json(&status))?;
    } else {
        printer.human(&output::status_human(&status, printer.stdout_style))?;
    }
    Ok(Outcome::Success)
}
