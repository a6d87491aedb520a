//! `blufioctl usage`: spend against the budget caps, and tokens and cost per day, model and
//! session.

use super::Context;
use crate::cli::JsonArgs;
use crate::output;
use crate::{Failure, Outcome};

/// Runs `usage` for the last `days` days.
pub async fn run(context: &Context<'_>, days: u32, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let usage = context.connect().await?.get_usage(days).await?;
    if args.json {
        printer.json(&output::usage_json(&usage))?;
    } else {
        printer.human(&output::usage_human(&usage, days, printer.stdout_style))?;
    }
    Ok(Outcome::Success)
}
