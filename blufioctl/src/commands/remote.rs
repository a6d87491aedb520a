//! `blufioctl remote ...`: `chat` and `sessions` against the HTTPS gateway at `--url`, printed
//! exactly as their local counterparts print. The signed transport is [`crate::remote`]'s.

use blufio_proto::httpsig::unix_now;

use super::sessions::{SessionsDelete, SessionsList, SessionsShow};
use super::{Context, chat, terminal_width};
use crate::chat::Transcript;
use crate::cli::{RemoteArgs, RemoteCommand, RemoteSessionsCommand};
use crate::remote::{self, Gateway};
use crate::{Failure, Outcome};

/// Runs one `remote` command.
pub async fn run(context: &Context<'_>, args: RemoteArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    // Read a chat message before anything else: an empty one is the user's to fix first.
    let message = match &args.command {
        RemoteCommand::Chat(chat) => Some(chat::message(&chat.message)?),
        RemoteCommand::Sessions(_) | RemoteCommand::Usage { .. } | RemoteCommand::Status(_) => None,
    };
    let (key, warning) = remote::read_key(&args.key)?;
    if let Some(warning) = warning {
        printer.warning(&warning);
    }
    let gateway = Gateway::new(args.url, key, args.keyid, args.pin, context.call_timeout)?;
    match args.command {
        RemoteCommand::Chat(chat) => {
            let text = message.unwrap_or_default();
            let mut transcript = Transcript::new(chat.session.unwrap_or_default());
            let mut echo = (!chat.json).then(|| printer.echo());
            let result = gateway.run_turn(&text, &mut transcript, echo.as_mut()).await;
            return chat::finish_turn(printer, echo, &transcript, result);
        }
        RemoteCommand::Sessions(RemoteSessionsCommand::List(args)) => {
            let list = gateway.list_sessions().await?;
            let view = SessionsList {
                list: &list,
                now: unix_now(),
                max_width: terminal_width(printer.stdout_style),
            };
            printer.emit(&view, args.json)?;
        }
        RemoteCommand::Sessions(RemoteSessionsCommand::Show { id, output: args }) => {
            let session = gateway.get_session(&id).await?;
            let view = SessionsShow {
                response: &session,
                now: unix_now(),
            };
            printer.emit(&view, args.json)?;
        }
        RemoteCommand::Sessions(RemoteSessionsCommand::Delete { id, output: args }) => {
            gateway.delete_session(&id).await?;
            printer.emit(&SessionsDelete(&id), args.json)?;
        }
        RemoteCommand::Status(args) => {
            let status = gateway.status().await?;
            printer.emit(&super::status::RemoteStatus(&status), args.json)?;
        }
        RemoteCommand::Usage { days, output: args } => {
            let usage = gateway.usage(days).await?;
            printer.emit(&super::usage::Usage { usage: &usage, days }, args.json)?;
        }
    }
    Ok(Outcome::Success)
}
