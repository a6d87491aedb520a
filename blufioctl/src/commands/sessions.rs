//! `blufioctl sessions list|show|delete`: the chat sessions stored by the daemon.

use blufio_proto::httpsig::unix_now;

use super::{Context, terminal_width};
use crate::cli::{JsonArgs, SessionsCommand};
use crate::output;
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
            output: args,
        } => show(context, id, limit, args).await,
        SessionsCommand::Delete { id, output: args } => delete(context, id, args).await,
    }
}

async fn list(
    context: &Context<'_>,
    limit: Option<u32>,
    cursor: Option<String>,
    args: JsonArgs,
) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let style = printer.stdout_style;
    let list = context
        .connect()
        .await?
        .list_sessions(limit.unwrap_or(0), cursor.unwrap_or_default())
        .await?;
    if args.json {
        printer.json(&output::sessions_list_json(&list))?;
    } else {
        let width = terminal_width(style);
        printer.human(&output::sessions_list_human(&list, unix_now(), width, style))?;
    }
    Ok(Outcome::Success)
}

async fn show(context: &Context<'_>, id: String, limit: Option<u32>, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let session = context
        .connect()
        .await?
        .get_session(id, limit.unwrap_or(0))
        .await
        .map_err(session_failure)?;
    if args.json {
        printer.json(&output::session_show_json(&session))?;
    } else {
        printer.human(&output::session_show_human(&session, unix_now(), printer.stdout_style))?;
    }
    Ok(Outcome::Success)
}

async fn delete(context: &Context<'_>, id: String, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    context
        .connect()
        .await?
        .delete_session(id.clone())
        .await
        .map_err(session_failure)?;
    if args.json {
        printer.json(&output::session_delete_json(&id))?;
    } else {
        printer.human(&output::session_delete_human(&id))?;
    }
    Ok(Outcome::Success)
}
