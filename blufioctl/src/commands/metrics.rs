//! `blufioctl metrics`: the daemon's metrics in the Prometheus text format, through the control
//! socket (for a daemon whose gateway is disabled, or a look without the metrics token).

use super::Context;
use crate::output::printable;
use crate::{Failure, Outcome};

/// Prints the exposition as the daemon renders it. Lines are passed through [`printable`]: label
/// values come from the daemon's configuration, and a control character has no place in the
/// format anyway.
pub async fn run(context: &Context<'_>) -> Result<Outcome, Failure> {
    let text = context.connect().await?.get_metrics().await?;
    context.printer.stdout(&printable(&text, true))?;
    Ok(Outcome::Success)
}
