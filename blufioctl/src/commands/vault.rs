//! `blufioctl config set-secret|list-secrets|delete-secret` and `blufioctl vault status|rekey`:
//! the daemon's encrypted vault of secrets, which config keys name as `secret:NAME`.
//!
//! A secret's value and a new passphrase come from a hidden prompt or stdin, and new key material
//! from a file: never from the command line, where shell history and `ps` would keep them. Nothing
//! here prints a value. What is read stays in buffers wiped on drop (a refused or mistyped entry
//! included) until it is moved, not copied, into its request; tonic drops the request and its
//! encoding without wiping them, which this crate cannot reach.

use std::fmt::Write as _;
use std::io::{self, IsTerminal as _, Read};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use blufio_proto::control::v1::rekey_vault_request::NewKey;
use blufio_proto::control::v1::{
    DeleteSecretResponse, GetVaultStatusResponse, ListSecretsResponse, RekeyVaultResponse, SecretInfo,
    SetSecretResponse,
};
use blufio_proto::httpsig::unix_now;
use serde::Serialize;
use zeroize::Zeroizing;

use super::Context;
use super::config::{ConfigSet, ConfigSetJson};
use crate::cli::{JsonArgs, VaultCommand};
use crate::output::{
    Cell, Human, Paint, Render, Style, format_utc, humanize_age, humanize_bytes, non_empty, render_pairs, render_table,
};
use crate::{Failure, Outcome, secret_failure};

/// The most a secret's value may hold (the daemon's limit), plus a line ending.
const MAX_SECRET_INPUT: u64 = 16 * 1024 + 2;
/// The most a new key read for a rekey may hold (the daemon's limit), plus trailing whitespace.
const MAX_KEY_INPUT: u64 = 8 * 1024;

/// The kdf whose parameters `vault status` shows.
const ARGON2ID: &str = "argon2id";

/// Runs one `vault` subcommand.
pub async fn run(context: &Context<'_>, command: VaultCommand) -> Result<Outcome, Failure> {
    match command {
        VaultCommand::Status(args) => {
            let status = context.connect().await?.get_vault_status().await?;
            context.printer.emit(&VaultStatus(&status), args.json)?;
            Ok(Outcome::Success)
        }
        VaultCommand::Rekey {
            new_passphrase,
            new_key,
            output: args,
        } => rekey(context, new_passphrase, new_key, args).await,
    }
}

/// `config set-secret NAME [--for KEY]`.
pub async fn set_secret(
    context: &Context<'_>,
    name: String,
    for_key: Option<String>,
    args: JsonArgs,
) -> Result<Outcome, Failure> {
    // Connect first: a daemon that is not there should say so before anyone types a secret.
    let mut client = context.connect().await?;
    let mut value = read_secret(
        &format!("Value for secret {name}: "),
        &format!("value for secret `{name}`"),
    )?;
    let set = client
        .set_secret(name.clone(), std::mem::take(&mut *value))
        .await
        .map_err(secret_failure)?;
    let reference = format!("secret:{name}");
    let config_set = match &for_key {
        Some(key) => Some(
            client
                .set_config(key.clone(), reference.clone())
                .await
                .map_err(|error| {
                    let mut failure = Failure::from(error);
                    let stored = if set.created { "created" } else { "replaced" };
                    failure.error = failure
                        .error
                        .context(format!("{stored} secret `{name}`, but cannot set {key}"));
                    failure
                })?,
        ),
        None => None,
    };
    let view = SecretSet {
        name: &name,
        set: &set,
        config_set: config_set.as_ref().zip(for_key.as_deref()).map(|(set, key)| ConfigSet {
            set,
            key,
            value: &reference,
        }),
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

/// `config list-secrets`.
pub async fn list_secrets(context: &Context<'_>, args: JsonArgs) -> Result<Outcome, Failure> {
    let list = context.connect().await?.list_secrets().await?;
    let view = SecretList {
        list: &list,
        now: unix_now(),
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

/// `config delete-secret NAME [--force]`.
pub async fn delete_secret(
    context: &Context<'_>,
    name: String,
    force: bool,
    args: JsonArgs,
) -> Result<Outcome, Failure> {
    let deleted = context
        .connect()
        .await?
        .delete_secret(name.clone(), force)
        .await
        .map_err(secret_failure)?;
    let view = SecretDelete {
        name: &name,
        deleted: &deleted,
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

/// `vault rekey [--new-passphrase | --new-key FILE]`; a new key that blufiod makes itself
/// without either.
async fn rekey(
    context: &Context<'_>,
    new_passphrase: bool,
    new_key: Option<PathBuf>,
    args: JsonArgs,
) -> Result<Outcome, Failure> {
    let mut client = context.connect().await?;
    let new_key = if new_passphrase {
        NewKey::Passphrase(std::mem::take(&mut *read_secret(
            "New vault passphrase: ",
            "new passphrase",
        )?))
    } else if let Some(path) = &new_key {
        NewKey::Key(std::mem::take(&mut *read_key(path)?))
    } else {
        NewKey::Generate(true)
    };
    let rekeyed = client.rekey_vault(new_key).await.map_err(secret_failure)?;
    context.printer.emit(&VaultRekey(&rekeyed), args.json)?;
    Ok(Outcome::Success)
}

/// A secret, asked for twice at `prompt` without echo when stdin is a terminal, else all of stdin
/// without one trailing newline; never empty. `what` names it in errors.
fn read_secret(prompt: &str, what: &str) -> anyhow::Result<Zeroizing<String>> {
    if !io::stdin().is_terminal() {
        return secret_from(io::stdin().lock(), what);
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .with_context(|| format!("cannot read the {what} from the terminal"))
    };
    let value = ask(prompt)?;
    anyhow::ensure!(!value.is_empty(), "the {what} is empty; nothing was sent");
    let again = ask("Repeat to confirm: ")?;
    anyhow::ensure!(*value == *again, "the two entries differ; nothing was sent");
    Ok(value)
}

/// All of `input` without one trailing "\n" or "\r\n" (what `echo` and a file's last line add);
/// never empty.
fn secret_from(input: impl Read, what: &str) -> anyhow::Result<Zeroizing<String>> {
    // Room for all of it up front: a buffer that grows leaves copies behind that are not wiped.
    let mut value = Zeroizing::new(String::with_capacity(MAX_SECRET_INPUT as usize + 1));
    input
        .take(MAX_SECRET_INPUT + 1)
        .read_to_string(&mut value)
        .with_context(|| format!("cannot read the {what} from stdin"))?;
    anyhow::ensure!(
        value.len() as u64 <= MAX_SECRET_INPUT,
        "more than 16 KiB on stdin: the {what} may hold at most 16384 bytes; nothing was sent"
    );
    let kept = value
        .strip_suffix("\r\n")
        .or_else(|| value.strip_suffix('\n'))
        .unwrap_or(&value)
        .len();
    value.truncate(kept);
    anyhow::ensure!(
        !value.is_empty(),
        "no {what} on stdin (it is read from there when stdin is not a terminal); nothing was sent"
    );
    Ok(value)
}

/// Key material from `path` (`-`: stdin) without trailing whitespace, such as the newline that
/// `openssl rand -hex 32 > FILE` leaves; never empty.
fn read_key(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let from_stdin = path == Path::new("-");
    let source = if from_stdin {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    let mut key = Zeroizing::new(Vec::with_capacity(MAX_KEY_INPUT as usize + 1));
    let read = if from_stdin {
        io::stdin().lock().take(MAX_KEY_INPUT + 1).read_to_end(&mut key)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(MAX_KEY_INPUT + 1).read_to_end(&mut key))
    };
    read.with_context(|| format!("cannot read the new key from {source}"))?;
    anyhow::ensure!(
        key.len() as u64 <= MAX_KEY_INPUT,
        "{source} holds more than 8 KiB; a key has at most 4096 bytes (`openssl rand -hex 32` makes one); nothing was sent"
    );
    let kept = key.trim_ascii_end().len();
    key.truncate(kept);
    anyhow::ensure!(!key.is_empty(), "{source} holds no key material; nothing was sent");
    Ok(key)
}

/// A secret just stored by `config set-secret`, and the config key `--for` pointed at it.
pub struct SecretSet<'a> {
    pub name: &'a str,
    pub set: &'a SetSecretResponse,
    pub config_set: Option<ConfigSet<'a>>,
}

impl Render for SecretSet<'_> {
    /// `config set-secret --json`.
    fn json(&self) -> impl Serialize {
        SecretSetJson {
            name: self.name,
            created: self.set.created,
            referenced_by: &self.set.referenced_by,
            config_set: self.config_set.as_ref().map(|view| ConfigSetJson::from(view.set)),
        }
    }

    /// `config set-secret`: created or replaced, the keys that name it, and what `--for` did.
    fn human(&self, style: Style) -> Human {
        let SecretSet { name, set, .. } = *self;
        let mut human = Human::default();
        let stored = if set.created { "created" } else { "replaced" };
        let _ = writeln!(human.stdout, "{stored} secret {}", style.paint(Paint::Bold, name));
        if !set.referenced_by.is_empty() {
            let _ = writeln!(human.stdout, "referenced by: {}", set.referenced_by.join(", "));
        }
        match &self.config_set {
            Some(view) => {
                let set_human = view.human(style);
                human.stdout.push_str(&set_human.stdout);
                human.warnings.extend(set_human.warnings);
            }
            None if set.referenced_by.is_empty() => {
                let note = format!("no config key names it yet: 'blufioctl config set KEY secret:{name}' does");
                let _ = writeln!(human.stdout, "{}", style.paint(Paint::Dim, &note));
            }
            None => {}
        }
        human
    }
}

/// The vault's secrets, for `config list-secrets`; `now` is the current Unix time, for the ages.
pub struct SecretList<'a> {
    pub list: &'a ListSecretsResponse,
    pub now: i64,
}

impl Render for SecretList<'_> {
    /// `config list-secrets --json`.
    fn json(&self) -> impl Serialize {
        SecretListJson {
            secrets: self.list.secrets.iter().map(SecretJson::from).collect(),
        }
    }

    /// `config list-secrets` as a table: NAME, CREATED, UPDATED, LAST USED, REFERENCED BY, PREVIEW.
    fn human(&self, style: Style) -> Human {
        let SecretList { list, now } = *self;
        if list.secrets.is_empty() {
            return Human {
                stdout: "no secrets in the vault; store one with 'blufioctl config set-secret NAME'\n".to_owned(),
                ..Human::default()
            };
        }
        let mut rows = vec![
            ["NAME", "CREATED", "UPDATED", "LAST USED", "REFERENCED BY", "PREVIEW"]
                .iter()
                .map(|title| Cell::painted(style, Paint::Bold, title))
                .collect::<Vec<_>>(),
        ];
        let dim_or_plain = |text: String, empty: &str| {
            if text.is_empty() {
                Cell::painted(style, Paint::Dim, empty)
            } else {
                Cell::plain(&text)
            }
        };
        for secret in &list.secrets {
            let last_used = if secret.last_used_at == 0 {
                String::new()
            } else {
                humanize_age(now, secret.last_used_at)
            };
            rows.push(vec![
                Cell::plain(&secret.name),
                Cell::plain(&humanize_age(now, secret.created_at)),
                Cell::plain(&humanize_age(now, secret.updated_at)),
                dim_or_plain(last_used, "never"),
                dim_or_plain(secret.referenced_by.join(", "), "none"),
                Cell::plain(&secret.preview),
            ]);
        }
        Human {
            stdout: render_table(style, &rows),
            ..Human::default()
        }
    }
}

/// A secret just deleted by `config delete-secret`.
pub struct SecretDelete<'a> {
    pub name: &'a str,
    pub deleted: &'a DeleteSecretResponse,
}

impl Render for SecretDelete<'_> {
    /// `config delete-secret --json`.
    fn json(&self) -> impl Serialize {
        SecretDeleteJson {
            name: self.name,
            referenced_by: &self.deleted.referenced_by,
        }
    }

    /// `config delete-secret`, warning about the keys that still name it (after `--force`).
    fn human(&self, _style: Style) -> Human {
        let SecretDelete { name, deleted } = *self;
        let mut human = Human {
            stdout: format!("deleted secret {name}\n"),
            ..Human::default()
        };
        if !deleted.referenced_by.is_empty() {
            human.warnings.push(format!(
                "`secret:{name}` is still named by {}; each fails until given another secret \
                 ('blufioctl config set KEY secret:OTHER') or unset",
                deleted.referenced_by.join(", ")
            ));
        }
        human
    }
}

/// The daemon's answer to `vault status`.
pub struct VaultStatus<'a>(pub &'a GetVaultStatusResponse);

impl Render for VaultStatus<'_> {
    /// `vault status --json`.
    fn json(&self) -> impl Serialize {
        let status = self.0;
        VaultStatusJson {
            key_source: &status.key_source,
            key_source_detail: non_empty(&status.key_source_detail),
            key_beside_data: status.key_beside_data,
            kdf: &status.kdf,
            argon2: (status.kdf == ARGON2ID).then_some(Argon2Json {
                memory_kib: status.argon2_memory_kib,
                iterations: status.argon2_iterations,
                parallelism: status.argon2_parallelism,
            }),
            cipher: &status.cipher,
            entries: status.entries,
            key_created_at: status.key_created_at,
            pending: status.pending.as_ref().map(|pending| PendingJson {
                key_source: &pending.key_source,
                created_at: pending.created_at,
            }),
        }
    }

    /// `vault status` as `key: value` lines, and a warning for a key beside the data.
    fn human(&self, style: Style) -> Human {
        let status = self.0;
        // The detail names the kind of source too ("systemd credential /run/...").
        let key_source = non_empty(&status.key_source_detail).unwrap_or(&status.key_source);
        let mut kdf = Cell::plain(&status.kdf);
        if status.kdf == ARGON2ID {
            let plural = |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
            kdf.push(
                style,
                Paint::None,
                &format!(
                    " ({}, {}, {})",
                    humanize_bytes(u64::from(status.argon2_memory_kib) * 1024),
                    plural(status.argon2_iterations, "pass", "passes"),
                    plural(status.argon2_parallelism, "lane", "lanes")
                ),
            );
        }
        let mut rows = vec![
            ("key source".to_owned(), Cell::plain(key_source)),
            ("kdf".to_owned(), kdf),
            ("cipher".to_owned(), Cell::plain(&status.cipher)),
            ("entries".to_owned(), Cell::plain(&status.entries.to_string())),
            (
                "key created".to_owned(),
                Cell::plain(&format_utc(status.key_created_at)),
            ),
        ];
        if let Some(pending) = &status.pending {
            let text = format!(
                "waits for blufiod to start with the new {} (asked {})",
                pending.key_source.replace('-', " "),
                format_utc(pending.created_at)
            );
            rows.push(("pending rekey".to_owned(), Cell::painted(style, Paint::Yellow, &text)));
        }
        let mut human = Human {
            stdout: render_pairs(style, &rows),
            ..Human::default()
        };
        if status.key_beside_data {
            human.warnings.push(
                "the vault key sits in the state directory beside the data it protects, so a copy of the \
                 directory is a copy of the secrets; move to a systemd credential, a key file elsewhere or a \
                 passphrase with 'blufioctl vault rekey --new-key FILE' or '--new-passphrase'"
                    .to_owned(),
            );
        }
        human
    }
}

/// The daemon's answer to `vault rekey`.
pub struct VaultRekey<'a>(pub &'a RekeyVaultResponse);

impl Render for VaultRekey<'_> {
    /// `vault rekey --json`.
    fn json(&self) -> impl Serialize {
        let rekeyed = self.0;
        VaultRekeyJson {
            completed: rekeyed.completed,
            pending_key_source: non_empty(&rekeyed.pending_key_source),
            next_step: non_empty(&rekeyed.next_step),
        }
    }

    /// `vault rekey`: completed, or what the rekey waits for; then the daemon's next step.
    fn human(&self, style: Style) -> Human {
        let rekeyed = self.0;
        let mut stdout = if rekeyed.completed {
            format!("vault rekey {}\n", style.paint(Paint::Bold, "completed"))
        } else {
            format!(
                "vault rekey {}: blufiod waits for the new {}\n",
                style.paint(Paint::Yellow, "pending"),
                rekeyed.pending_key_source.replace('-', " ")
            )
        };
        if let Some(next_step) = non_empty(&rekeyed.next_step) {
            let _ = writeln!(stdout, "{next_step}");
        }
        Human {
            stdout,
            ..Human::default()
        }
    }
}

#[derive(Debug, Serialize)]
struct SecretSetJson<'a> {
    name: &'a str,
    created: bool,
    referenced_by: &'a [String],
    config_set: Option<ConfigSetJson<'a>>,
}

#[derive(Debug, Serialize)]
struct SecretListJson<'a> {
    secrets: Vec<SecretJson<'a>>,
}

#[derive(Debug, Serialize)]
struct SecretJson<'a> {
    name: &'a str,
    created_at: i64,
    updated_at: i64,
    last_used_at: Option<i64>,
    referenced_by: &'a [String],
    preview: Option<&'a str>,
}

impl<'a> From<&'a SecretInfo> for SecretJson<'a> {
    fn from(secret: &'a SecretInfo) -> Self {
        SecretJson {
            name: &secret.name,
            created_at: secret.created_at,
            updated_at: secret.updated_at,
            last_used_at: (secret.last_used_at != 0).then_some(secret.last_used_at),
            referenced_by: &secret.referenced_by,
            preview: non_empty(&secret.preview),
        }
    }
}

#[derive(Debug, Serialize)]
struct SecretDeleteJson<'a> {
    name: &'a str,
    referenced_by: &'a [String],
}

#[derive(Debug, Serialize)]
struct VaultStatusJson<'a> {
    key_source: &'a str,
    key_source_detail: Option<&'a str>,
    key_beside_data: bool,
    kdf: &'a str,
    argon2: Option<Argon2Json>,
    cipher: &'a str,
    entries: u64,
    key_created_at: i64,
    pending: Option<PendingJson<'a>>,
}

#[derive(Debug, Serialize)]
struct Argon2Json {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

#[derive(Debug, Serialize)]
struct PendingJson<'a> {
    key_source: &'a str,
    created_at: i64,
}

#[derive(Debug, Serialize)]
struct VaultRekeyJson<'a> {
    completed: bool,
    pending_key_source: Option<&'a str>,
    next_step: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use blufio_proto::control::v1::{PendingVaultKey, SetConfigResponse};
    use serde_json::json;

    use super::*;
    use crate::output::testing::{ALIGNED, NOW};

    #[test]
    fn stdin_loses_one_trailing_newline_and_must_not_be_empty() {
        let read = |input: &str| secret_from(input.as_bytes(), "value for secret `x`").map(|value| value.to_string());
        assert_eq!(read("sk-1\n").unwrap(), "sk-1");
        assert_eq!(read("sk-1\r\n").unwrap(), "sk-1");
        assert_eq!(read("sk-1\n\n").unwrap(), "sk-1\n", "only one newline goes");
        assert_eq!(read(" sk 1 ").unwrap(), " sk 1 ", "other whitespace stays");
        for empty in ["", "\n", "\r\n"] {
            let error = read(empty).unwrap_err().to_string();
            assert!(error.starts_with("no value for secret `x` on stdin"), "{error}");
        }
        let error = secret_from(&[0xff, 0xfe][..], "new passphrase").unwrap_err();
        assert_eq!(error.to_string(), "cannot read the new passphrase from stdin");
    }

    #[test]
    fn input_is_read_up_to_the_daemon_s_limits() {
        let largest = "k".repeat(16 * 1024);
        assert_eq!(
            secret_from(format!("{largest}\n").as_bytes(), "value").unwrap().len(),
            16 * 1024
        );
        let error = secret_from("k".repeat(64 * 1024).as_bytes(), "value").unwrap_err();
        assert!(error.to_string().contains("at most 16384 bytes"), "{error}");
        let dir = tempfile::tempdir().expect("tempdir");
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; 64 * 1024]).unwrap();
        let error = read_key(&huge).unwrap_err();
        assert!(error.to_string().contains("more than 8 KiB"), "{error}");
    }

    #[test]
    fn key_files_lose_trailing_whitespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, b"00ff\n \t\r\n").expect("write");
        assert_eq!(read_key(&path).unwrap().as_slice(), b"00ff");
        std::fs::write(&path, b" \n").expect("write");
        let error = read_key(&path).unwrap_err().to_string();
        assert_eq!(
            error,
            format!("{} holds no key material; nothing was sent", path.display())
        );
        let error = read_key(&dir.path().join("absent")).unwrap_err().to_string();
        assert!(error.starts_with("cannot read the new key from "), "{error}");
    }

    #[test]
    fn set_secret_says_created_or_replaced_and_what_names_it() {
        let created = SetSecretResponse {
            created: true,
            referenced_by: vec![],
        };
        let view = SecretSet {
            name: "anthropic",
            set: &created,
            config_set: None,
        };
        assert_eq!(
            view.human(ALIGNED).stdout,
            "created secret anthropic\nno config key names it yet: 'blufioctl config set KEY secret:anthropic' does\n"
        );
        assert_eq!(
            serde_json::to_value(view.json()).expect("serializes"),
            json!({"name": "anthropic", "created": true, "referenced_by": [], "config_set": null})
        );

        let replaced = SetSecretResponse {
            created: false,
            referenced_by: vec!["provider.api_key".into()],
        };
        let set = SetConfigResponse {
            config_path: "/etc/blufio/blufiod.toml".into(),
            applied_live: true,
            ..SetConfigResponse::default()
        };
        let view = SecretSet {
            name: "anthropic",
            set: &replaced,
            config_set: Some(ConfigSet {
                set: &set,
                key: "provider.api_key",
                value: "secret:anthropic",
            }),
        };
        assert_eq!(
            view.human(ALIGNED).stdout,
            "replaced secret anthropic\nreferenced by: provider.api_key\n\
             set provider.api_key = secret:anthropic in /etc/blufio/blufiod.toml\napplied live\n"
        );
        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(value["created"], false);
        assert_eq!(value["referenced_by"], json!(["provider.api_key"]));
        assert_eq!(value["config_set"]["applied_live"], true);
        assert_eq!(value["config_set"]["config_path"], "/etc/blufio/blufiod.toml");
    }

    #[test]
    fn secrets_table_and_json() {
        let list = ListSecretsResponse {
            secrets: vec![
                SecretInfo {
                    name: "anthropic".into(),
                    created_at: NOW - 12 * 86_400,
                    updated_at: NOW - 5 * 3600,
                    last_used_at: NOW - 45,
                    referenced_by: vec!["provider.api_key".into()],
                    preview: "…x9Qz".into(),
                },
                SecretInfo {
                    name: "metrics".into(),
                    created_at: NOW,
                    updated_at: NOW,
                    last_used_at: 0,
                    referenced_by: vec![],
                    preview: String::new(),
                },
            ],
        };
        let view = SecretList { list: &list, now: NOW };
        let expected = [
            "NAME       CREATED   UPDATED   LAST USED  REFERENCED BY     PREVIEW",
            "anthropic  12d ago   5h ago    45s ago    provider.api_key  …x9Qz",
            "metrics    just now  just now  never      none",
            "",
        ]
        .join("\n");
        assert_eq!(view.human(ALIGNED).stdout, expected);
        assert_eq!(
            serde_json::to_value(view.json()).expect("serializes"),
            json!({"secrets": [
                {"name": "anthropic", "created_at": NOW - 12 * 86_400, "updated_at": NOW - 5 * 3600,
                 "last_used_at": NOW - 45, "referenced_by": ["provider.api_key"], "preview": "…x9Qz"},
                {"name": "metrics", "created_at": NOW, "updated_at": NOW, "last_used_at": null,
                 "referenced_by": [], "preview": null}
            ]})
        );
        let empty = SecretList {
            list: &ListSecretsResponse::default(),
            now: NOW,
        };
        assert!(empty.human(ALIGNED).stdout.starts_with("no secrets in the vault"));
        assert_eq!(
            serde_json::to_value(empty.json()).expect("serializes"),
            json!({"secrets": []})
        );
    }

    #[test]
    fn forced_delete_warns_about_the_keys_that_still_name_it() {
        let forced = DeleteSecretResponse {
            referenced_by: vec!["provider.api_key".into()],
        };
        let view = SecretDelete {
            name: "anthropic",
            deleted: &forced,
        };
        let human = view.human(ALIGNED);
        assert_eq!(human.stdout, "deleted secret anthropic\n");
        assert_eq!(
            human.warnings,
            [
                "`secret:anthropic` is still named by provider.api_key; each fails until given another secret \
              ('blufioctl config set KEY secret:OTHER') or unset"
            ]
        );
        assert_eq!(
            serde_json::to_value(view.json()).expect("serializes"),
            json!({"name": "anthropic", "referenced_by": ["provider.api_key"]})
        );
        let clean = SecretDelete {
            name: "metrics",
            deleted: &DeleteSecretResponse::default(),
        };
        assert!(clean.human(ALIGNED).warnings.is_empty());
    }

    fn sample_vault() -> GetVaultStatusResponse {
        GetVaultStatusResponse {
            key_source: "passphrase".into(),
            key_source_detail: "passphrase from BLUFIO_VAULT_PASSPHRASE".into(),
            key_beside_data: false,
            kdf: "argon2id".into(),
            argon2_memory_kib: 65_536,
            argon2_iterations: 3,
            argon2_parallelism: 1,
            cipher: "xchacha20-poly1305".into(),
            entries: 2,
            key_created_at: NOW,
            pending: Some(PendingVaultKey {
                key_source: "key-file".into(),
                created_at: NOW + 60,
            }),
        }
    }

    #[test]
    fn vault_status_lines_and_json() {
        let status = sample_vault();
        let human = VaultStatus(&status).human(ALIGNED);
        let expected = "\
key source:     passphrase from BLUFIO_VAULT_PASSPHRASE
kdf:            argon2id (64.0 MiB, 3 passes, 1 lane)
cipher:         xchacha20-poly1305
entries:        2
key created:    2026-11-28 08:00 UTC
pending rekey:  waits for blufiod to start with the new key file (asked 2026-11-28 08:01 UTC)
";
        assert_eq!(human.stdout, expected);
        assert!(human.warnings.is_empty());
        assert_eq!(
            serde_json::to_value(VaultStatus(&status).json()).expect("serializes"),
            json!({"key_source": "passphrase",
                   "key_source_detail": "passphrase from BLUFIO_VAULT_PASSPHRASE",
                   "key_beside_data": false, "kdf": "argon2id",
                   "argon2": {"memory_kib": 65_536, "iterations": 3, "parallelism": 1},
                   "cipher": "xchacha20-poly1305", "entries": 2, "key_created_at": NOW,
                   "pending": {"key_source": "key-file", "created_at": NOW + 60}})
        );

        let generated = GetVaultStatusResponse {
            key_source: "generated".into(),
            key_source_detail: "generated key file /var/lib/blufio/vault.key".into(),
            key_beside_data: true,
            kdf: "hkdf-sha256".into(),
            argon2_memory_kib: 0,
            argon2_iterations: 0,
            argon2_parallelism: 0,
            pending: None,
            ..sample_vault()
        };
        let human = VaultStatus(&generated).human(Style::PLAIN);
        assert!(human.stdout.contains("\nkdf: hkdf-sha256\n"), "{}", human.stdout);
        assert!(!human.stdout.contains("pending"), "{}", human.stdout);
        assert_eq!(human.warnings.len(), 1);
        assert!(human.warnings[0].starts_with("the vault key sits in the state directory"));
        let value = serde_json::to_value(VaultStatus(&generated).json()).expect("serializes");
        assert_eq!(value["argon2"], serde_json::Value::Null);
        assert_eq!(value["pending"], serde_json::Value::Null);
        assert_eq!(value["key_beside_data"], true);
    }

    #[test]
    fn rekey_completed_or_pending() {
        let completed = RekeyVaultResponse {
            completed: true,
            pending_key_source: String::new(),
            next_step: "back up the new key".into(),
        };
        assert_eq!(
            VaultRekey(&completed).human(ALIGNED).stdout,
            "vault rekey completed\nback up the new key\n"
        );
        assert_eq!(
            serde_json::to_value(VaultRekey(&completed).json()).expect("serializes"),
            json!({"completed": true, "pending_key_source": null, "next_step": "back up the new key"})
        );
        let pending = RekeyVaultResponse {
            completed: false,
            pending_key_source: "passphrase".into(),
            next_step: "supply the new passphrase and restart blufiod".into(),
        };
        assert_eq!(
            VaultRekey(&pending).human(ALIGNED).stdout,
            "vault rekey pending: blufiod waits for the new passphrase\nsupply the new passphrase and restart blufiod\n"
        );
        let value = serde_json::to_value(VaultRekey(&pending).json()).expect("serializes");
        assert_eq!(value["pending_key_source"], "passphrase");
    }
}
