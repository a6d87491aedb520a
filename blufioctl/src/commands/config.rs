//! `blufioctl config get|set|validate|reload`: the daemon's effective configuration, one change
//! to its file, a validation, and a reload.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::Context;
use crate::cli::{ConfigCommand, JsonArgs};
use crate::output;
use crate::{Failure, Outcome};

/// Runs one `config` subcommand.
pub async fn run(context: &Context<'_>, command: ConfigCommand) -> Result<Outcome, Failure> {
    match command {
        ConfigCommand::Get { key, output: args } => get(context, key, args).await,
        ConfigCommand::Set {
            key,
            value,
            output: args,
        } => set(context, key, value, args).await,
        ConfigCommand::Validate { file, output: args } => validate(context, file, args).await,
        ConfigCommand::Reload(args) => reload(context, args).await,
    }
}

async fn get(context: &Context<'_>, key: Option<String>, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let key = key.unwrap_or_default();
    let config = context.connect().await?.get_config(key).await?;
    if args.json {
        printer.json(&output::config_get_json(&config))?;
    } else {
        printer.human(&output::config_get_human(&config, printer.stdout_style))?;
    }
    Ok(Outcome::Success)
}

async fn set(context: &Context<'_>, key: String, value: String, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let set = context.connect().await?.set_config(key.clone(), value.clone()).await?;
    if args.json {
        printer.json(&output::config_set_json(&set))?;
    } else {
        printer.human(&output::config_set_human(&set, &key, &value, printer.stdout_style))?;
    }
    Ok(Outcome::Success)
}

/// `config validate [FILE]`; the outcome is [`Outcome::Invalid`] when the daemon found problems.
async fn validate(context: &Context<'_>, file: Option<PathBuf>, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    // Read FILE before connecting: a typo in the path is the user's to fix first.
    let (toml, name) = match &file {
        Some(path) => (read_config_document(path)?, path.display().to_string()),
        None => (String::new(), String::new()),
    };
    let validation = context.connect().await?.validate_config(toml, name.clone()).await?;
    let file_name = file.as_ref().map(|_| name.as_str());
    if args.json {
        printer.json(&output::config_validate_json(&validation, file_name))?;
    } else {
        printer.human(&output::config_validate_human(
            &validation,
            file_name,
            printer.stdout_style,
        ))?;
    }
    if !validation.valid {
        return Ok(Outcome::Invalid);
    }
    Ok(Outcome::Success)
}

async fn reload(context: &Context<'_>, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let reload = context.connect().await?.reload_config().await?;
    if args.json {
        printer.json(&output::config_reload_json(&reload))?;
    } else {
        printer.human(&output::config_reload_human(&reload, printer.stdout_style))?;
    }
    Ok(Outcome::Success)
}

/// Reads a config file for `config validate FILE`.
fn read_config_document(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    // An empty `toml` field asks the daemon to validate its own file instead. An empty file is a
    // valid (all-defaults) document, so send it as a lone newline, which parses the same.
    Ok(if text.is_empty() { "\n".to_owned() } else { text })
}
