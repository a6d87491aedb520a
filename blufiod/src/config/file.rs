//! The config file on disk: naming its problems by key, file and line, and changing one key with
//! an atomic, comment-preserving write.

use std::path::{Path, PathBuf};

use figment::providers::{Data, Toml};
use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};

use super::{ConfigError, ENV_PREFIX, load_from};

/// A TOML provider whose text was read by the caller, attributed to a file path so that errors
/// and `source_of` name the file.
pub(super) struct NamedToml {
    inner: Data<Toml>,
    path: PathBuf,
}

impl NamedToml {
    pub(super) fn new(inner: Data<Toml>, path: &Path) -> Self {
        Self {
            inner,
            path: path.to_owned(),
        }
    }
}

impl Provider for NamedToml {
    fn metadata(&self) -> Metadata {
        Metadata::named("TOML file").source(figment::Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// A parser's message with the values of secret keys masked (see
/// [`super::keys::mask_secrets_in`]): parse errors quote whole lines of the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MaskedError(String);

/// Turns a figment error into one line per problem: the dotted key, what is wrong, and where it
/// came from (`file:line`, or the environment variable).
/// What serde calls a type, in words an owner reads: "f64" is "a number".
fn plain_type(expected: &str) -> String {
    match expected {
        "f64" | "f32" | "a floating point number" => "a number (such as 2.5)".to_owned(),
        "u64" | "u32" | "u16" | "u8" | "i64" | "i32" | "usize" => "a whole number (such as 30)".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a string" => "text in quotes (such as \"text\")".to_owned(),
        "a sequence" => "a list (such as [\"a\", \"b\"])".to_owned(),
        other => other.to_owned(),
    }
}

pub(super) fn describe_errors(error: figment::Error, text: Option<&str>) -> Vec<String> {
    let document = text.and_then(|text| toml_edit::ImDocument::parse(text.to_owned()).ok());
    error
        .into_iter()
        .map(|error| {
            let mut path = error.path.clone();
            if let figment::error::Kind::UnknownField(field, _) = &error.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let key = path.join(".");
            let origin = match &error.metadata {
                Some(metadata) => match &metadata.source {
                    Some(figment::Source::File(file)) => {
                        let line = document.as_ref().and_then(|document| line_of(document, &path));
                        match line {
                            Some(line) => format!("{}:{line}", file.display()),
                            None => file.display().to_string(),
                        }
                    }
                    _ if metadata.name.contains("environment") => {
                        format!("environment variable {ENV_PREFIX}{}", path.join("__").to_uppercase())
                    }
                    _ => metadata.name.to_string(),
                },
                None => "configuration".to_owned(),
            };
            let what = match &error.kind {
                figment::error::Kind::UnknownField(field, expected) => format!(
                    "unknown key `{field}`; known keys here: {}",
                    expected
                        .iter()
                        .map(|key| format!("`{key}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                figment::error::Kind::InvalidType(actual, expected) => {
                    // A secret's value is never echoed, whatever its type.
                    let secret = super::keys::key_spec(&key).is_some_and(|spec| spec.secret);
                    let found = if secret {
                        "something else".to_owned()
                    } else {
                        actual.to_string()
                    };
                    format!("expected {}, found {found}", plain_type(expected))
                }
                kind => kind.to_string(),
            };
            let what = super::keys::mask_secrets_in(&what);
            if key.is_empty() {
                format!("{what} (in {origin})")
            } else {
                format!("{key}: {what} (in {origin})")
            }
        })
        .collect()
}

/// The 1-based line of a dotted key in a parsed document.
fn line_of(document: &toml_edit::ImDocument<String>, path: &[String]) -> Option<usize> {
    let (last, parents) = path.split_last()?;
    let mut table: &dyn toml_edit::TableLike = document.as_table();
    for segment in parents {
        table = table.get(segment)?.as_table_like()?;
    }
    let (key, item) = table.get_key_value(last)?;
    let offset = key.span().or_else(|| item.span())?.start;
    Some(document.raw()[..offset].matches('\n').count() + 1)
}

/// Errors from changing a key in the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigWriteError {
    /// The key is not a config key.
    #[error("unknown config key `{key}`; {}", super::keys::suggest(key))]
    UnknownKey {
        /// The key given.
        key: String,
    },
    /// The file is not valid TOML, so it cannot be edited safely.
    #[error("cannot edit {path}: it is not valid TOML; fix it by hand first")]
    ParseFile {
        /// The config file.
        path: PathBuf,
        #[source]
        source: MaskedError,
    },
    /// A section name holds a plain value in the file.
    #[error("cannot edit {path}: `{key}` is a value, not a section; fix it by hand first")]
    NotATable {
        /// The config file.
        path: PathBuf,
        /// The dotted prefix that is not a table.
        key: String,
    },
    /// A secret key was given a value instead of the name of a vault entry.
    #[error(
        "`{key}` takes the name of a secret in the vault, not the secret itself (a value on a command line lands in shell history and `ps`): store it with `blufioctl config set-secret NAME` (it reads the value from a hidden prompt or stdin), then run `blufioctl config set {key} secret:NAME`; nothing was written"
    )]
    LiteralSecret {
        /// The key.
        key: &'static str,
    },
    /// The changed configuration would be invalid; nothing was written.
    #[error("the new value is rejected; nothing was written")]
    Rejected {
        #[source]
        source: ConfigError,
    },
    /// The file already fails validation for another reason, and this change does not fix it.
    #[error(
        "cannot set `{key}`: {path} already has an error elsewhere; fix it first (`blufioctl config validate` lists it), then set the key again"
    )]
    BrokenElsewhere {
        /// The key being set.
        key: String,
        /// The config file.
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    /// A subsystem refused the new value while the daemon runs; nothing was written.
    #[error("cannot set `{key}` on the running daemon: {reason}; nothing was written")]
    Refused {
        /// The key being changed.
        key: String,
        /// What the subsystem said.
        reason: String,
    },
    /// The current config cannot be read.
    #[error("cannot read the current configuration")]
    Read {
        #[source]
        source: ConfigError,
    },
    /// Writing the file failed; the old file is unchanged.
    #[error("cannot write {path}; the old file is unchanged")]
    Write {
        /// The config file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Sets `key` to `raw_value` in the config file at `path` (created if missing), after checking
/// that the whole resulting configuration, with the environment, is valid. The write is atomic
/// (temporary file, fsync, rename, fsync of the directory) and keeps comments and layout.
///
/// `raw_value` is a TOML value when it parses as one (`30`, `true`, `"text"`), else a string.
#[cfg(test)]
pub fn set_key_in_file(
    path: &Path,
    current: Option<&str>,
    key: &str,
    raw_value: &str,
) -> Result<super::Loaded, ConfigWriteError> {
    prepare_set(path, current, key, raw_value)?.write(path)
}

/// A checked edit of the config file, not yet written: the new text (`None` when the file
/// stays as it is) and the configuration it gives.
#[derive(Debug)]
pub struct Edit {
    text: Option<String>,
    /// The configuration the edited file gives.
    pub loaded: super::Loaded,
}

impl Edit {
    /// Writes the new text atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn write(self, path: &Path) -> Result<super::Loaded, ConfigWriteError> {
        if let Some(text) = &self.text {
            write_atomically(path, text.as_bytes()).map_err(|source| ConfigWriteError::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(self.loaded)
    }
}

/// The edit that sets `key` to `raw_value`, checked like [`set_key_in_file`], without writing it.
pub fn prepare_set(path: &Path, current: Option<&str>, key: &str, raw_value: &str) -> Result<Edit, ConfigWriteError> {
    let Some((spec, segments)) = super::keys::key_path(key) else {
        return Err(ConfigWriteError::UnknownKey { key: key.to_owned() });
    };
    // A secret given on a command line lands in shell history and `ps`, and here it would land
    // in the file in clear: a secret key takes only the name of a vault entry.
    if spec.secret && !raw_value.starts_with(super::SECRET_REFERENCE_PREFIX) {
        return Err(ConfigWriteError::LiteralSecret { key: spec.key });
    }
    let document = parse_document(path, current)?;
    // The value as TOML first (`30`, `true`, `["a"]`), then as a plain string: a key that takes a
    // string gets one even when the text happens to read as another TOML type (`2023-06-01` is a
    // TOML date, `42` an integer).
    let mut candidates: Vec<toml_edit::Value> = raw_value.trim().parse::<toml_edit::Value>().into_iter().collect();
    if candidates
        .first()
        .is_none_or(|parsed| parsed.as_str() != Some(raw_value))
    {
        candidates.push(toml_edit::Value::from(raw_value));
    }
    let mut first_error = None;
    let mut accepted = None;
    for value in candidates {
        let new_text = with_value(&document, path, &segments, value)?;
        match load_from(Some(&new_text), Some(path), true) {
            Ok(loaded) => {
                accepted = Some((new_text, loaded));
                break;
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let Some((new_text, loaded)) = accepted else {
        // Blame the value only if the file was valid without it.
        return Err(blame(
            path,
            current,
            key,
            first_error.expect("there is always a candidate"),
        ));
    };
    Ok(Edit {
        text: Some(new_text),
        loaded,
    })
}

/// Removes `key` from the config file at `path`, so that it takes its default (or its
/// environment value) again, after checking that the resulting configuration is valid. A key the
/// file does not set leaves the file as it is. The write is atomic, as for [`set_key_in_file`].
#[cfg(test)]
pub fn unset_key_in_file(path: &Path, current: Option<&str>, key: &str) -> Result<super::Loaded, ConfigWriteError> {
    prepare_unset(path, current, key)?.write(path)
}

/// The edit that removes `key`, checked like [`unset_key_in_file`], without writing it.
pub fn prepare_unset(path: &Path, current: Option<&str>, key: &str) -> Result<Edit, ConfigWriteError> {
    let Some((_, segments)) = super::keys::key_path(key) else {
        return Err(ConfigWriteError::UnknownKey { key: key.to_owned() });
    };
    let mut document = parse_document(path, current)?;
    let (last, parents) = segments.split_last().expect("keys are never empty");
    let mut table = Some(document.as_table_mut() as &mut dyn toml_edit::TableLike);
    for segment in parents {
        table = table
            .and_then(|table| table.get_mut(segment))
            .and_then(toml_edit::Item::as_table_like_mut);
    }
    let removed = table.and_then(|table| table.remove(last)).is_some();
    // A section left empty goes too, rather than staying behind as a bare `[log]`.
    if let [section] = parents
        && document
            .get(section)
            .and_then(toml_edit::Item::as_table_like)
            .is_some_and(toml_edit::TableLike::is_empty)
    {
        document.remove(section);
    }
    let new_text = document.to_string();
    let loaded = match load_from(Some(&new_text), Some(path), true) {
        Ok(loaded) => loaded,
        Err(source) => return Err(blame(path, current, key, source)),
    };
    Ok(Edit {
        text: removed.then_some(new_text),
        loaded,
    })
}

/// Why a change to `key` was refused: the file's own error if it was already invalid, else the
/// change's.
fn blame(path: &Path, current: Option<&str>, key: &str, change_error: ConfigError) -> ConfigWriteError {
    match load_from(current, Some(path), true) {
        Err(source) => ConfigWriteError::BrokenElsewhere {
            key: key.to_owned(),
            path: path.to_owned(),
            source,
        },
        // The file's line numbers would point into text that was never written.
        Ok(_) => ConfigWriteError::Rejected {
            source: match change_error {
                ConfigError::Invalid { problems } => ConfigError::Invalid {
                    problems: problems
                        .into_iter()
                        .map(|problem| match problem.find(" (in ") {
                            Some(at) if problem.starts_with(key) => problem[..at].to_owned(),
                            _ => problem,
                        })
                        .collect(),
                },
                other => other,
            },
        },
    }
}

/// The file's text as an editable document.
fn parse_document(path: &Path, current: Option<&str>) -> Result<toml_edit::DocumentMut, ConfigWriteError> {
    current
        .unwrap_or_default()
        .parse()
        .map_err(|source: toml_edit::TomlError| ConfigWriteError::ParseFile {
            path: path.to_owned(),
            source: MaskedError(super::keys::mask_secrets_in(&source.to_string())),
        })
}

/// The text of `document` with `key` set to `value`.
fn with_value(
    document: &toml_edit::DocumentMut,
    path: &Path,
    segments: &[String],
    value: toml_edit::Value,
) -> Result<String, ConfigWriteError> {
    let mut document = document.clone();
    let (last, parents) = segments.split_last().expect("keys are never empty");
    let mut table = document.as_table_mut();
    for segment in parents {
        let entry = table
            .entry(segment)
            .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
        if !entry.is_table() {
            // An inline table becomes a section with the same entries; anything else where a
            // section belongs is an error the owner must fix, never silently dropped.
            match std::mem::take(entry).into_table() {
                Ok(section) => *entry = toml_edit::Item::Table(section),
                Err(_) => {
                    return Err(ConfigWriteError::NotATable {
                        path: path.to_owned(),
                        key: (*segment).to_owned(),
                    });
                }
            }
        }
        table = entry.as_table_mut().expect("just made a table");
    }
    table.insert(last, toml_edit::value(value));
    Ok(document.to_string())
}

/// The config file may hold secrets: a new one is 0600, an existing one keeps its mode.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    crate::util::write_atomically(path, contents, crate::util::FileMode::KeepOr(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_removes_the_key_keeps_the_rest_and_returns_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        let before = "# mine\n[log]\nlevel = \"debug\" # loud\nformat = \"json\"\n";
        std::fs::write(&path, before).unwrap();
        let loaded = unset_key_in_file(&path, Some(before), "log.level").unwrap();
        assert_eq!(loaded.config.log.level, "info", "back to the default");
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(after, "# mine\n[log]\nformat = \"json\"\n");
        // The last key of a section takes the section with it.
        let emptied = unset_key_in_file(&path, Some(&after), "log.format").unwrap();
        assert_eq!(emptied.config.log.format, crate::config::LogFormat::Auto);
        assert!(!std::fs::read_to_string(&path).unwrap().contains("[log]"));
        std::fs::write(&path, &after).unwrap();
        // A key the file does not set: nothing to do, nothing written.
        std::fs::remove_file(&path).unwrap();
        unset_key_in_file(&path, Some(&after), "gateway.metrics_token").unwrap();
        assert!(!path.exists());
        assert!(matches!(
            unset_key_in_file(&path, Some(&after), "log.colour"),
            Err(ConfigWriteError::UnknownKey { .. })
        ));
    }

    #[test]
    fn set_key_keeps_comments_and_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        let before = "# my notes\n[log]\n# chatty while debugging\nlevel = \"debug\"\n";
        std::fs::write(&path, before).unwrap();
        let loaded = set_key_in_file(&path, Some(before), "daemon.shutdown_timeout_secs", "7").unwrap();
        assert_eq!(loaded.config.daemon.shutdown_timeout_secs, 7);
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(
            after.contains("# my notes") && after.contains("# chatty while debugging"),
            "{after}"
        );
        assert!(after.contains("level = \"debug\""), "{after}");
        assert!(after.contains("[daemon]\nshutdown_timeout_secs = 7"), "{after}");
    }

    #[test]
    fn inline_tables_keep_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        let before = "provider = { kind = \"openai\", model = \"m1\" }\n";
        std::fs::write(&path, before).unwrap();
        let loaded = set_key_in_file(&path, Some(before), "provider.max_tokens", "100").unwrap();
        assert_eq!(loaded.config.provider.kind, super::super::ProviderKind::Openai);
        assert_eq!(loaded.config.provider.model.as_deref(), Some("m1"));
        assert_eq!(loaded.config.provider.max_tokens, 100);
        let scalar = "provider = 5\n";
        assert!(matches!(
            set_key_in_file(&path, Some(scalar), "provider.model", "x"),
            Err(ConfigWriteError::NotATable { .. })
        ));
    }

    #[test]
    fn bare_words_become_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/blufiod.toml");
        let loaded = set_key_in_file(&path, None, "control.group_access", "full").unwrap();
        assert_eq!(loaded.config.control.group_access, super::super::Access::Full);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a new config file may hold secrets");
    }

    #[test]
    fn string_keys_take_text_that_reads_as_another_toml_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        let loaded = set_key_in_file(&path, None, "provider.anthropic_version", "2023-06-01").unwrap();
        assert_eq!(loaded.config.provider.anthropic_version, "2023-06-01");
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = set_key_in_file(&path, Some(&text), "agent.system_prompt", "42").unwrap();
        assert_eq!(loaded.config.agent.system_prompt, "42");
        // Numbers stay numbers where numbers belong.
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = set_key_in_file(&path, Some(&text), "provider.max_tokens", "42").unwrap();
        assert_eq!(loaded.config.provider.max_tokens, 42);
    }

    #[test]
    fn parse_errors_never_quote_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        let broken = "[provider]\napi_key = sk-ant-api03-SECRETVALUE\n";
        let error = set_key_in_file(&path, Some(broken), "log.level", "debug").unwrap_err();
        let shown = crate::error_chain(&error);
        assert!(!shown.contains("SECRETVALUE"), "{shown}");
        let Err(error) = super::super::load_from(Some(broken), Some(&path), false) else {
            panic!("the file is invalid");
        };
        let shown = crate::error_chain(&error);
        assert!(!shown.contains("SECRETVALUE") && shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn invalid_values_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        std::fs::write(&path, "").unwrap();
        let error = set_key_in_file(&path, Some(""), "daemon.shutdown_timeout_secs", "soon").unwrap_err();
        assert!(matches!(error, ConfigWriteError::Rejected { .. }), "{error:?}");
        let error = set_key_in_file(&path, Some(""), "log.colour", "red").unwrap_err();
        assert!(matches!(error, ConfigWriteError::UnknownKey { .. }), "{error:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
    }
}
