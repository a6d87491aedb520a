//! `blufioctl config get|set|unset|validate|reload`: the daemon's effective configuration, one
//! change to its file, a validation, and a reload. The secret subcommands (`set-secret`,
//! `list-secrets`, `delete-secret`) are [`super::vault`]'s.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use blufio_proto::control::v1::{
    ConfigEntry, GetConfigResponse, ReloadConfigResponse, SetConfigResponse, ValidateConfigResponse,
};
use serde::Serialize;

use super::Context;
use crate::cli::{ConfigCommand, JsonArgs};
use crate::output::{Cell, Human, Paint, Render, Style, non_empty, render_table, truncate};
use crate::{Failure, Outcome};

/// The command to suggest when a change needs a restart.
const RESTART_HINT: &str = "restart blufiod to apply (systemctl restart blufiod)";

/// Runs one `config` subcommand.
pub async fn run(context: &Context<'_>, command: ConfigCommand) -> Result<Outcome, Failure> {
    match command {
        ConfigCommand::Get { key, output: args } => get(context, key, args).await,
        ConfigCommand::Set {
            key,
            value,
            output: args,
        } => set(context, key, value, args).await,
        ConfigCommand::Unset { key, output: args } => unset(context, key, args).await,
        ConfigCommand::Validate { file, output: args } => validate(context, file, args).await,
        ConfigCommand::Reload(args) => reload(context, args).await,
        ConfigCommand::SetSecret {
            name,
            for_key,
            output: args,
        } => super::vault::set_secret(context, name, for_key, args).await,
        ConfigCommand::ListSecrets(args) => super::vault::list_secrets(context, args).await,
        ConfigCommand::DeleteSecret {
            name,
            force,
            output: args,
        } => super::vault::delete_secret(context, name, force, args).await,
    }
}

/// Characters of a value shown in a listing of several keys.
const LISTED_VALUE_CHARS: usize = 60;

/// The daemon's answer to `config get`, for one key or all of them.
pub struct ConfigGet<'a>(pub &'a GetConfigResponse);

impl Render for ConfigGet<'_> {
    /// `config get --json`.
    fn json(&self) -> impl Serialize {
        let config = self.0;
        ConfigGetJson {
            config_path: &config.config_path,
            entries: config.entries.iter().map(EntryJson::from).collect(),
        }
    }

    /// `config get` as a table: a restart marker, KEY, VALUE and SOURCE.
    fn human(&self, style: Style) -> Human {
        let config = self.0;
        let any_restart_required = config.entries.iter().any(|entry| entry.restart_required);
        // The marker column is dropped from aligned output when it would be empty; plain output
        // keeps it so that its columns are always the same four.
        let with_marker = any_restart_required || !style.align;
        let mut rows = vec![vec![
            Cell::plain(""),
            Cell::painted(style, Paint::Bold, "KEY"),
            Cell::painted(style, Paint::Bold, "VALUE"),
            Cell::painted(style, Paint::Bold, "SOURCE"),
        ]];
        // One long value (the pricing table) would pad every row; in a listing of several keys,
        // values are cut, and `config get KEY` shows one whole.
        let listing = config.entries.len() > 1;
        let mut cut_any = false;
        for entry in &config.entries {
            let marker = if entry.restart_required { "*" } else { "" };
            let value = if entry.unset {
                Cell::painted(style, Paint::Dim, "(unset)")
            } else if entry.secret {
                Cell::painted(style, Paint::Dim, &entry.value)
            } else if listing && entry.value.chars().count() > LISTED_VALUE_CHARS {
                cut_any = true;
                Cell::plain(&truncate(&entry.value, LISTED_VALUE_CHARS))
            } else {
                Cell::plain(&entry.value)
            };
            // SOURCE is the last column, so a note there never disturbs the alignment.
            let mut source = Cell::plain(&entry.source);
            if entry.pending_restart {
                source.push(style, Paint::Yellow, " (restart pending)");
            }
            rows.push(vec![
                Cell::painted(style, Paint::Yellow, marker),
                Cell::plain(&entry.key),
                value,
                source,
            ]);
        }
        if !with_marker {
            for row in &mut rows {
                row.remove(0);
            }
        }

        let mut stdout = render_table(style, &rows);
        if any_restart_required {
            let note = "* takes effect only after a restart of blufiod";
            let _ = writeln!(stdout, "{}", style.paint(Paint::Dim, note));
        }
        if cut_any {
            let note = "… long values are cut here; `blufioctl config get KEY` shows one whole";
            let _ = writeln!(stdout, "{}", style.paint(Paint::Dim, note));
        }
        let _ = writeln!(
            stdout,
            "{}",
            style.paint(Paint::Dim, &format!("config file: {}", config.config_path))
        );
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// The daemon's answer to `config set`, with the `key` and `value` the user asked for, which human
/// output uses when the response carries no entry.
pub struct ConfigSet<'a> {
    pub set: &'a SetConfigResponse,
    pub key: &'a str,
    pub value: &'a str,
}

impl Render for ConfigSet<'_> {
    /// `config set --json`.
    fn json(&self) -> impl Serialize {
        ConfigSetJson::from(self.set)
    }

    /// `config set`: what was written where, and whether it is in effect.
    fn human(&self, style: Style) -> Human {
        let ConfigSet { set, key, value } = *self;
        let (key, value) = match &set.entry {
            Some(entry) => (entry.key.as_str(), entry.value.as_str()),
            None => (key, value),
        };
        let mut human = Human::default();
        let _ = writeln!(
            human.stdout,
            "set {} = {value} in {}",
            style.paint(Paint::Bold, key),
            set.config_path
        );
        if set.applied_live {
            let _ = writeln!(human.stdout, "applied live");
        } else {
            let _ = writeln!(human.stdout, "{}", style.paint(Paint::Yellow, RESTART_HINT));
        }
        if let Some(variable) = non_empty(&set.overridden_by_env) {
            human.warnings.push(format!(
                "{variable} overrides {key} in the environment, so the value in the file is not in effect while it is set"
            ));
        }
        human
    }
}

/// The daemon's answer to `config unset`: the same document as `config set`, and a human line
/// that says what the key is now.
pub struct ConfigUnset<'a> {
    pub unset: &'a SetConfigResponse,
    pub key: &'a str,
}

impl Render for ConfigUnset<'_> {
    /// `config unset --json`: the shape of `config set --json`.
    fn json(&self) -> impl Serialize {
        ConfigSetJson::from(self.unset)
    }

    /// `config unset`: what the key is now, and whether that is in effect.
    fn human(&self, style: Style) -> Human {
        let unset = self.unset;
        let mut human = Human::default();
        let now = match &unset.entry {
            Some(entry) if entry.unset => "unset".to_owned(),
            Some(entry) => format!("{} ({})", entry.value, entry.source),
            None => "its default".to_owned(),
        };
        let _ = writeln!(
            human.stdout,
            "{} is not set in {} (any more); it is now {now}",
            style.paint(Paint::Bold, self.key),
            unset.config_path
        );
        if unset.applied_live {
            let _ = writeln!(human.stdout, "applied live");
        } else {
            let _ = writeln!(human.stdout, "{}", style.paint(Paint::Yellow, RESTART_HINT));
        }
        if let Some(variable) = non_empty(&unset.overridden_by_env) {
            human.warnings.push(format!(
                "{variable} sets {} in the environment, so its value is still in effect",
                self.key
            ));
        }
        human
    }
}

/// The daemon's answer to `config validate`; `file` is the FILE argument, if any.
pub struct ConfigValidate<'a> {
    pub validation: &'a ValidateConfigResponse,
    pub file: Option<&'a str>,
}

impl Render for ConfigValidate<'_> {
    /// `config validate --json`.
    fn json(&self) -> impl Serialize {
        let ConfigValidate { validation, file } = *self;
        ValidateJson {
            valid: validation.valid,
            file,
            errors: &validation.errors,
        }
    }

    /// `config validate`: a line on stdout when valid, the problems as error lines otherwise.
    fn human(&self, style: Style) -> Human {
        let ConfigValidate { validation, file } = *self;
        let subject = match file {
            Some(file) => file.to_owned(),
            None => "the daemon's configuration".to_owned(),
        };
        let mut human = Human::default();
        if validation.valid {
            let _ = writeln!(human.stdout, "{subject} is {}", style.paint(Paint::Bold, "valid"));
        } else if validation.errors.is_empty() {
            human.errors.push(format!("{subject} is invalid"));
        } else {
            human.errors.extend(validation.errors.iter().cloned());
        }
        human
    }
}

/// The daemon's answer to `config reload`.
pub struct ConfigReload<'a>(pub &'a ReloadConfigResponse);

impl Render for ConfigReload<'_> {
    /// `config reload --json`.
    fn json(&self) -> impl Serialize {
        let reload = self.0;
        ReloadJson {
            applied: &reload.applied,
            restart_required: &reload.restart_required,
        }
    }

    /// `config reload`: which keys took effect and which wait for a restart.
    fn human(&self, style: Style) -> Human {
        let reload = self.0;
        let mut human = Human::default();
        if reload.applied.is_empty() && reload.restart_required.is_empty() {
            let _ = writeln!(human.stdout, "configuration reloaded; nothing changed");
            return human;
        }
        let _ = writeln!(human.stdout, "configuration reloaded");
        if !reload.applied.is_empty() {
            let _ = writeln!(human.stdout, "applied live: {}", reload.applied.join(", "));
        }
        if !reload.restart_required.is_empty() {
            let _ = writeln!(human.stdout, "needs a restart: {}", reload.restart_required.join(", "));
            let _ = writeln!(human.stdout, "{}", style.paint(Paint::Yellow, RESTART_HINT));
        }
        human
    }
}

async fn get(context: &Context<'_>, key: Option<String>, args: JsonArgs) -> Result<Outcome, Failure> {
    let key = key.unwrap_or_default();
    let config = context.connect().await?.get_config(key).await?;
    context.printer.emit(&ConfigGet(&config), args.json)?;
    Ok(Outcome::Success)
}

async fn set(context: &Context<'_>, key: String, value: String, args: JsonArgs) -> Result<Outcome, Failure> {
    let set = context.connect().await?.set_config(key.clone(), value.clone()).await?;
    let view = ConfigSet {
        set: &set,
        key: &key,
        value: &value,
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

async fn unset(context: &Context<'_>, key: String, args: JsonArgs) -> Result<Outcome, Failure> {
    let unset = context.connect().await?.unset_config(key.clone()).await?;
    context.printer.emit(
        &ConfigUnset {
            unset: &unset,
            key: &key,
        },
        args.json,
    )?;
    Ok(Outcome::Success)
}

/// `config validate [FILE]`; the outcome is [`Outcome::Invalid`] when the daemon found problems.
async fn validate(context: &Context<'_>, file: Option<PathBuf>, args: JsonArgs) -> Result<Outcome, Failure> {
    // Read FILE before connecting: a typo in the path is the user's to fix first.
    let (toml, name) = match &file {
        Some(path) => (read_config_document(path)?, path.display().to_string()),
        None => (String::new(), String::new()),
    };
    let validation = context.connect().await?.validate_config(toml, name.clone()).await?;
    let view = ConfigValidate {
        validation: &validation,
        file: file.as_ref().map(|_| name.as_str()),
    };
    context.printer.emit(&view, args.json)?;
    if !validation.valid {
        return Ok(Outcome::Invalid);
    }
    Ok(Outcome::Success)
}

async fn reload(context: &Context<'_>, args: JsonArgs) -> Result<Outcome, Failure> {
    let reload = context.connect().await?.reload_config().await?;
    context.printer.emit(&ConfigReload(&reload), args.json)?;
    Ok(Outcome::Success)
}

/// Reads a config file for `config validate FILE`.
fn read_config_document(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    // An empty `toml` field asks the daemon to validate its own file instead. An empty file is a
    // valid (all-defaults) document, so send it as a lone newline, which parses the same.
    Ok(if text.is_empty() { "\n".to_owned() } else { text })
}

#[derive(Debug, Serialize)]
struct ConfigGetJson<'a> {
    config_path: &'a str,
    entries: Vec<EntryJson<'a>>,
}

#[derive(Debug, Serialize)]
struct EntryJson<'a> {
    key: &'a str,
    value: serde_json::Value,
    source: &'a str,
    secret: bool,
    restart_required: bool,
    unset: bool,
    pending_restart: bool,
}

impl<'a> From<&'a ConfigEntry> for EntryJson<'a> {
    fn from(entry: &'a ConfigEntry) -> Self {
        let value = if entry.unset || entry.value_json.is_empty() {
            serde_json::Value::Null
        } else {
            // The daemon sends valid JSON; should it ever not, keep the text rather than fail
            // the whole command.
            serde_json::from_str(&entry.value_json)
                .unwrap_or_else(|_| serde_json::Value::String(entry.value_json.clone()))
        };
        EntryJson {
            key: &entry.key,
            value,
            source: &entry.source,
            secret: entry.secret,
            restart_required: entry.restart_required,
            unset: entry.unset,
            pending_restart: entry.pending_restart,
        }
    }
}

/// `config set --json`, also inside `config set-secret --for KEY --json`.
#[derive(Debug, Serialize)]
pub(super) struct ConfigSetJson<'a> {
    config_path: &'a str,
    entry: Option<EntryJson<'a>>,
    applied_live: bool,
    restart_required: &'a [String],
    overridden_by_env: Option<&'a str>,
}

impl<'a> From<&'a SetConfigResponse> for ConfigSetJson<'a> {
    fn from(set: &'a SetConfigResponse) -> Self {
        ConfigSetJson {
            config_path: &set.config_path,
            entry: set.entry.as_ref().map(EntryJson::from),
            applied_live: set.applied_live,
            restart_required: &set.restart_required,
            overridden_by_env: non_empty(&set.overridden_by_env),
        }
    }
}

#[derive(Debug, Serialize)]
struct ValidateJson<'a> {
    valid: bool,
    file: Option<&'a str>,
    errors: &'a [String],
}

#[derive(Debug, Serialize)]
struct ReloadJson<'a> {
    applied: &'a [String],
    restart_required: &'a [String],
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::output::testing::{ALIGNED, COLOR, strip_ansi};

    fn entry(key: &str, value: &str, value_json: &str, source: &str) -> ConfigEntry {
        ConfigEntry {
            key: key.into(),
            value: value.into(),
            value_json: value_json.into(),
            source: source.into(),
            ..ConfigEntry::default()
        }
    }

    fn sample_config() -> GetConfigResponse {
        GetConfigResponse {
            config_path: "/etc/blufio/blufiod.toml".into(),
            entries: vec![
                ConfigEntry {
                    restart_required: true,
                    pending_restart: true,
                    ..entry(
                        "control.socket",
                        "\"/run/blufio/blufiod.sock\"",
                        "\"/run/blufio/blufiod.sock\"",
                        "default",
                    )
                },
                entry("log.level", "\"debug\"", "\"debug\"", "file"),
                ConfigEntry {
                    unset: true,
                    ..entry("notify.webhook", "", "", "default")
                },
                ConfigEntry {
                    secret: true,
                    ..entry("provider.api_key", "\"********\"", "\"********\"", "env")
                },
                entry("agent.max_turns", "30", "30", "file"),
            ],
        }
    }

    #[test]
    fn config_table_is_aligned() {
        let human = ConfigGet(&sample_config()).human(ALIGNED);
        // A string continuation would eat the leading blanks of the header, so join lines.
        let expected = [
            "   KEY               VALUE                       SOURCE",
            "*  control.socket    \"/run/blufio/blufiod.sock\"  default (restart pending)",
            "   log.level         \"debug\"                     file",
            "   notify.webhook    (unset)                     default",
            "   provider.api_key  \"********\"                  env",
            "   agent.max_turns   30                          file",
            "* takes effect only after a restart of blufiod",
            "config file: /etc/blufio/blufiod.toml",
            "",
        ]
        .join("\n");
        assert_eq!(human.stdout, expected);
        assert!(human.warnings.is_empty() && human.errors.is_empty());
    }

    #[test]
    fn config_table_without_restart_keys_has_no_marker_column() {
        let config = GetConfigResponse {
            config_path: "/etc/blufio/blufiod.toml".into(),
            entries: vec![entry("log.level", "\"debug\"", "\"debug\"", "file")],
        };
        let aligned = ConfigGet(&config).human(ALIGNED).stdout;
        assert_eq!(
            aligned,
            "KEY        VALUE    SOURCE\nlog.level  \"debug\"  file\nconfig file: /etc/blufio/blufiod.toml\n"
        );
        let plain = ConfigGet(&config).human(Style::PLAIN).stdout;
        assert!(plain.starts_with("\tKEY\tVALUE\tSOURCE\n\tlog.level\t"), "{plain:?}");
    }

    #[test]
    fn config_table_plain_uses_tabs() {
        let human = ConfigGet(&sample_config()).human(Style::PLAIN);
        let lines: Vec<&str> = human.stdout.lines().collect();
        assert_eq!(lines[0], "\tKEY\tVALUE\tSOURCE");
        assert_eq!(
            lines[1],
            "*\tcontrol.socket\t\"/run/blufio/blufiod.sock\"\tdefault (restart pending)"
        );
        assert_eq!(lines[3], "\tnotify.webhook\t(unset)\tdefault");
    }

    #[test]
    fn colour_does_not_break_alignment() {
        let plain = ConfigGet(&sample_config()).human(ALIGNED).stdout;
        let coloured = ConfigGet(&sample_config()).human(COLOR).stdout;
        assert!(coloured.contains('\x1b'));
        assert_eq!(strip_ansi(&coloured), plain);
    }

    #[test]
    fn config_json_shape() {
        let config = sample_config();
        let value = serde_json::to_value(ConfigGet(&config).json()).expect("serializes");
        assert_eq!(
            value,
            json!({
                "config_path": "/etc/blufio/blufiod.toml",
                "entries": [
                    {"key": "control.socket", "value": "/run/blufio/blufiod.sock",
                     "source": "default", "secret": false, "restart_required": true, "unset": false,
                     "pending_restart": true},
                    {"key": "log.level", "value": "debug",
                     "source": "file", "secret": false, "restart_required": false, "unset": false, "pending_restart": false},
                    {"key": "notify.webhook", "value": null,
                     "source": "default", "secret": false, "restart_required": false, "unset": true, "pending_restart": false},
                    {"key": "provider.api_key", "value": "********",
                     "source": "env", "secret": true, "restart_required": false, "unset": false, "pending_restart": false},
                    {"key": "agent.max_turns", "value": 30,
                     "source": "file", "secret": false, "restart_required": false, "unset": false, "pending_restart": false},
                ]
            })
        );
    }

    #[test]
    fn set_reports_restart_and_env_override() {
        let set = SetConfigResponse {
            config_path: "/etc/blufio/blufiod.toml".into(),
            entry: Some(ConfigEntry {
                restart_required: true,
                ..entry("control.socket", "\"/tmp/x.sock\"", "\"/tmp/x.sock\"", "file")
            }),
            applied_live: false,
            restart_required: vec!["control.socket".into()],
            overridden_by_env: "BLUFIO_CONTROL__SOCKET".into(),
        };
        let view = ConfigSet {
            set: &set,
            key: "control.socket",
            value: "/tmp/x.sock",
        };
        let human = view.human(ALIGNED);
        assert_eq!(
            human.stdout,
            "set control.socket = \"/tmp/x.sock\" in /etc/blufio/blufiod.toml\n\
             restart blufiod to apply (systemctl restart blufiod)\n"
        );
        assert_eq!(human.warnings.len(), 1);
        assert!(human.warnings[0].starts_with("BLUFIO_CONTROL__SOCKET overrides control.socket"));

        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(value["overridden_by_env"], "BLUFIO_CONTROL__SOCKET");
        assert_eq!(value["entry"]["value"], "/tmp/x.sock");
        assert_eq!(value["restart_required"], json!(["control.socket"]));

        let live = SetConfigResponse {
            applied_live: true,
            overridden_by_env: String::new(),
            entry: None,
            ..set
        };
        let view = ConfigSet {
            set: &live,
            key: "log.level",
            value: "debug",
        };
        let human = view.human(ALIGNED);
        assert_eq!(
            human.stdout,
            "set log.level = debug in /etc/blufio/blufiod.toml\napplied live\n"
        );
        assert!(human.warnings.is_empty());
        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(value["overridden_by_env"], serde_json::Value::Null);
        assert_eq!(value["entry"], serde_json::Value::Null);
    }

    #[test]
    fn validate_reports_each_error() {
        let invalid = ValidateConfigResponse {
            valid: false,
            errors: vec!["log.level: unknown variant".into(), "line 3: bad".into()],
        };
        let human = ConfigValidate {
            validation: &invalid,
            file: Some("x.toml"),
        }
        .human(ALIGNED);
        assert!(human.stdout.is_empty());
        assert_eq!(human.errors, invalid.errors);
        let value = serde_json::to_value(
            ConfigValidate {
                validation: &invalid,
                file: None,
            }
            .json(),
        )
        .expect("serializes");
        assert_eq!(
            value,
            json!({"valid": false, "file": null, "errors": ["log.level: unknown variant", "line 3: bad"]})
        );

        let valid = ValidateConfigResponse {
            valid: true,
            errors: vec![],
        };
        let human = ConfigValidate {
            validation: &valid,
            file: Some("x.toml"),
        }
        .human(ALIGNED);
        assert_eq!(human.stdout, "x.toml is valid\n");
        assert!(human.errors.is_empty());
    }

    #[test]
    fn reload_lists_keys() {
        let reload = ReloadConfigResponse {
            applied: vec!["log.level".into(), "agent.max_turns".into()],
            restart_required: vec!["control.socket".into()],
        };
        let stdout = ConfigReload(&reload).human(ALIGNED).stdout;
        assert_eq!(
            stdout,
            "configuration reloaded\n\
             applied live: log.level, agent.max_turns\n\
             needs a restart: control.socket\n\
             restart blufiod to apply (systemctl restart blufiod)\n"
        );
        let nothing = ConfigReload(&ReloadConfigResponse::default()).human(ALIGNED).stdout;
        assert_eq!(nothing, "configuration reloaded; nothing changed\n");
    }
}
