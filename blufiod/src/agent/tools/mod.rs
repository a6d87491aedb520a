//! Built-in tools the model may call: `http_get`, `read_file`, `write_file` and `run_command`.
//!
//! Each tool is off unless enabled in `[tools]`. A call never panics and never returns an `Err`:
//! unknown or disabled tools, bad input, refused targets, timeouts and cancellation all become a
//! [`ToolOutput`] with `is_error` set and a message that says what to do. Results are cut to
//! `tools.max_result_bytes` at a UTF-8 boundary. The tools must never reach beyond what config
//! allows: no private addresses for `http_get`, nothing outside the workspace for the file tools,
//! nothing but the listed programs (and no shell) for `run_command`.
//!
//! Who asked for the turn (a [`Principal`]) decides what it is offered: `run_command` runs
//! programs as the daemon's own user, so only the principals in `tools.run_command.callers` (the
//! owner, by default) are offered it, and a call from anyone else is refused even if the model
//! names it.

mod command;
mod files;
mod http_get;

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::agent::provider::ToolSpec;
use crate::config::{Principal, ToolsConfig};

use self::command::RunCommand;
use self::files::Files;
use self::http_get::HttpGet;

/// What a tool call produced; failures are results too (is_error), never a panic or an Err.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The text shown to the model.
    pub content: String,
    /// Whether the call failed.
    pub is_error: bool,
}

impl ToolOutput {
    /// A successful result.
    pub fn ok(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: false,
        }
    }

    /// A failed call.
    pub fn error(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: true,
        }
    }
}

/// The enabled tools, built from a config snapshot.
pub struct Tools {
    max_result_bytes: usize,
    http_get: Option<HttpGet>,
    files: Option<Files>,
    run_command: Option<RunCommand>,
    /// Whose turns are offered `run_command`.
    run_command_callers: Vec<Principal>,
}

/// Every tool name in the order specs are listed; the order is stable so the tool list (a
/// prompt-cache breakpoint) stays byte-identical between turns.
const TOOL_NAMES: [&str; 4] = ["http_get", "read_file", "write_file", "run_command"];

/// `name` as a metric label: a known tool's name, else `unknown` (the model chooses the name, so
/// it is never a label as given).
pub fn label(name: &str) -> &'static str {
    TOOL_NAMES.into_iter().find(|known| *known == name).unwrap_or("unknown")
}

impl Tools {
    /// `state_dir` is used for the default workspace (<state_dir>/workspace) of read_file/write_file.
    pub fn from_config(config: &ToolsConfig, state_dir: &Path) -> Self {
        let workspace = config
            .files
            .workspace
            .clone()
            .unwrap_or_else(|| state_dir.join("workspace"));
        Self {
            max_result_bytes: usize::try_from(config.max_result_bytes).unwrap_or(usize::MAX),
            http_get: config.http_get.enabled.then(|| HttpGet::from_config(&config.http_get)),
            files: config
                .files
                .enabled
                .then(|| Files::new(workspace.clone(), config.files.max_bytes)),
            run_command: config
                .run_command
                .enabled
                .then(|| RunCommand::from_config(&config.run_command, workspace)),
            run_command_callers: config.run_command.callers.clone(),
        }
    }

    /// Specs of the tools enabled and offered to `principal` only, in a stable order (so prompt
    /// caching stays stable), with JSON schemas for inputs.
    pub fn specs(&self, principal: Principal) -> Vec<ToolSpec> {
        let mut specs = Vec::new();
        if self.http_get.is_some() {
            specs.push(http_get::spec());
        }
        if self.files.is_some() {
            specs.push(files::read_spec());
            specs.push(files::write_spec());
        }
        if let Some(run_command) = &self.run_command
            && self.run_command_callers.contains(&principal)
        {
            specs.push(run_command.spec());
        }
        specs
    }

    /// Runs one call. Unknown tool, disabled tool, bad input, refused target, timeout... all become
    /// `ToolOutput { is_error: true, content: "<clear message>" }`.
    ///
    /// The result content is truncated to `max_result_bytes` (at a UTF-8 boundary) with a marker.
    /// Stops promptly when `cancel` is cancelled: the running tool's future is dropped, and each
    /// tool cleans up on drop (`run_command` kills its process group).
    pub async fn call(
        &self,
        name: &str,
        input: &serde_json::Value,
        principal: Principal,
        cancel: &CancellationToken,
    ) -> ToolOutput {
        let output = tokio::select! {
            // Biased so an already cancelled token never starts a tool.
            biased;
            () = cancel.cancelled() => ToolOutput::error(format!("{name} was cancelled before it finished")),
            output = self.dispatch(name, input, principal) => output,
        };
        ToolOutput {
            content: truncate_result(output.content, self.max_result_bytes),
            is_error: output.is_error,
        }
    }

    async fn dispatch(&self, name: &str, input: &serde_json::Value, principal: Principal) -> ToolOutput {
        match name {
            "http_get" => match &self.http_get {
                Some(tool) => tool.call(input).await,
                None => disabled(name, "tools.http_get.enabled"),
            },
            "read_file" => match &self.files {
                Some(tool) => tool.read(input).await,
                None => disabled(name, "tools.files.enabled"),
            },
            "write_file" => match &self.files {
                Some(tool) => tool.write(input).await,
                None => disabled(name, "tools.files.enabled"),
            },
            "run_command" => match &self.run_command {
                Some(_) if !self.run_command_callers.contains(&principal) => ToolOutput::error(format!(
                    "run_command is not offered to a turn from the {} (it runs programs as the daemon's own user); the owner can offer it with tools.run_command.callers",
                    principal.as_str()
                )),
                Some(tool) => tool.call(input).await,
                None => disabled(name, "tools.run_command.enabled"),
            },
            _ => {
                let enabled: Vec<String> = self.specs(principal).into_iter().map(|spec| spec.name).collect();
                let enabled = if enabled.is_empty() {
                    "none".to_owned()
                } else {
                    enabled.join(", ")
                };
                ToolOutput::error(format!(
                    "unknown tool {name:?}: the tools are {}; enabled now: {enabled}",
                    TOOL_NAMES.join(", ")
                ))
            }
        }
    }
}

fn disabled(name: &str, key: &str) -> ToolOutput {
    ToolOutput::error(format!(
        "{name} is not enabled on this server; the owner can enable it with {key} = true"
    ))
}

/// Parses a tool's input object, turning serde's complaint into a message for the model.
fn parse_input<T: serde::de::DeserializeOwned>(
    tool: &str,
    input: &serde_json::Value,
    expected: &str,
) -> Result<T, ToolOutput> {
    T::deserialize(input)
        .map_err(|error| ToolOutput::error(format!("{tool} input is invalid ({error}); expected {expected}")))
}

/// Cuts `content` to at most `max_bytes` bytes at a UTF-8 boundary and appends a marker saying how
/// many bytes were dropped. The marker itself is not counted against `max_bytes`.
fn truncate_result(mut content: String, max_bytes: usize) -> String {
    if content.len() <= max_bytes {
        return content;
    }
    let cut = floor_char_boundary(&content, max_bytes);
    let dropped = content.len() - cut;
    content.truncate(cut);
    content.push_str(&format!("\n[... truncated: {dropped} more bytes]"));
    content
}

/// The largest index not above `index` that is a char boundary of `text`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    // A UTF-8 character is at most four bytes, so this loop runs at most three times.
    (0..=index).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

use crate::util::error_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Principal, ToolsConfig};

    fn all_enabled() -> ToolsConfig {
        let mut config = ToolsConfig::default();
        config.http_get.enabled = true;
        config.files.enabled = true;
        config.run_command.enabled = true;
        config
    }

    fn names(tools: &Tools) -> Vec<String> {
        tools
            .specs(Principal::Owner)
            .into_iter()
            .map(|spec| spec.name)
            .collect()
    }

    #[tokio::test]
    async fn specs_list_only_enabled_tools_in_a_stable_order() {
        let dir = tempfile::tempdir().unwrap();
        let none = Tools::from_config(&ToolsConfig::default(), dir.path());
        assert!(none.specs(Principal::Owner).is_empty());

        let all = Tools::from_config(&all_enabled(), dir.path());
        assert_eq!(names(&all), ["http_get", "read_file", "write_file", "run_command"]);
        assert_eq!(all.specs(Principal::Owner), all.specs(Principal::Owner));

        let mut only_files = ToolsConfig::default();
        only_files.files.enabled = true;
        let files = Tools::from_config(&only_files, dir.path());
        assert_eq!(names(&files), ["read_file", "write_file"]);

        let mut only_http = ToolsConfig::default();
        only_http.http_get.enabled = true;
        assert_eq!(names(&Tools::from_config(&only_http, dir.path())), ["http_get"]);
    }

    #[tokio::test]
    async fn run_command_is_offered_and_run_only_for_the_listed_principals() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = all_enabled();
        config.run_command.allow = vec!["/bin/echo".into()];
        let owner_only = Tools::from_config(&config, dir.path());
        let listed = |tools: &Tools, principal| -> Vec<String> {
            tools.specs(principal).into_iter().map(|spec| spec.name).collect()
        };
        assert_eq!(
            listed(&owner_only, Principal::Group),
            ["http_get", "read_file", "write_file"]
        );
        assert_eq!(
            listed(&owner_only, Principal::Device),
            ["http_get", "read_file", "write_file"]
        );
        let cancel = CancellationToken::new();
        let input = serde_json::json!({"program": "/bin/echo", "args": ["ran"]});
        for principal in [Principal::Group, Principal::Device] {
            let refused = owner_only.call("run_command", &input, principal, &cancel).await;
            assert!(refused.is_error, "{principal:?}: {}", refused.content);
            assert!(
                refused.content.contains("tools.run_command.callers") && !refused.content.contains("ran"),
                "{}",
                refused.content
            );
        }
        let ran = owner_only.call("run_command", &input, Principal::Owner, &cancel).await;
        assert!(!ran.is_error && ran.content.contains("ran"), "{}", ran.content);

        config.run_command.callers = vec![Principal::Owner, Principal::Device];
        let with_devices = Tools::from_config(&config, dir.path());
        assert!(listed(&with_devices, Principal::Device).contains(&"run_command".to_owned()));
        assert!(!listed(&with_devices, Principal::Group).contains(&"run_command".to_owned()));
        let ran = with_devices
            .call("run_command", &input, Principal::Device, &cancel)
            .await;
        assert!(!ran.is_error && ran.content.contains("ran"), "{}", ran.content);
    }

    #[tokio::test]
    async fn schemas_are_objects_with_required_fields() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools::from_config(&all_enabled(), dir.path());
        for spec in tools.specs(Principal::Owner) {
            let schema = &spec.input_schema;
            assert_eq!(schema["type"], "object", "{}", spec.name);
            let required = schema["required"].as_array().expect("required is an array");
            assert!(!required.is_empty(), "{}", spec.name);
            for field in required {
                let field = field.as_str().unwrap();
                assert!(schema["properties"].get(field).is_some(), "{}: {field}", spec.name);
            }
            assert!(!spec.description.is_empty());
        }
    }

    #[tokio::test]
    async fn unknown_and_disabled_tools_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools::from_config(&ToolsConfig::default(), dir.path());
        let cancel = CancellationToken::new();
        let input = serde_json::json!({"path": "a.txt"});

        let unknown = tools.call("rm_rf", &input, Principal::Owner, &cancel).await;
        assert!(unknown.is_error);
        assert!(unknown.content.contains("unknown tool"), "{}", unknown.content);

        let disabled = tools.call("read_file", &input, Principal::Owner, &cancel).await;
        assert!(disabled.is_error);
        assert!(disabled.content.contains("tools.files.enabled"), "{}", disabled.content);
    }

    #[tokio::test]
    async fn bad_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools::from_config(&all_enabled(), dir.path());
        let cancel = CancellationToken::new();
        for name in TOOL_NAMES {
            let output = tools
                .call(name, &serde_json::json!({"nonsense": 1}), Principal::Owner, &cancel)
                .await;
            assert!(output.is_error, "{name}");
            assert!(
                output.content.contains("input is invalid"),
                "{name}: {}",
                output.content
            );
        }
    }

    #[tokio::test]
    async fn results_are_truncated_to_max_result_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ToolsConfig::default();
        config.files.enabled = true;
        config.max_result_bytes = 10;
        let tools = Tools::from_config(&config, dir.path());
        let cancel = CancellationToken::new();
        let content = "é".repeat(20);
        let written = tools
            .call(
                "write_file",
                &serde_json::json!({"path": "a.txt", "content": content}),
                Principal::Owner,
                &cancel,
            )
            .await;
        assert!(!written.is_error, "{}", written.content);
        let read = tools
            .call(
                "read_file",
                &serde_json::json!({"path": "a.txt"}),
                Principal::Owner,
                &cancel,
            )
            .await;
        assert!(!read.is_error, "{}", read.content);
        assert_eq!(
            read.content,
            format!("{}\n[... truncated: 30 more bytes]", "é".repeat(5))
        );
    }

    #[test]
    fn truncation_cuts_at_a_utf8_boundary() {
        assert_eq!(truncate_result("hello".to_owned(), 5), "hello");
        assert_eq!(
            truncate_result("hello".to_owned(), 3),
            "hel\n[... truncated: 2 more bytes]"
        );
        // "€" is three bytes: a cut inside it moves back to the boundary before it.
        assert_eq!(truncate_result("a€b".to_owned(), 2), "a\n[... truncated: 4 more bytes]");
        assert_eq!(truncate_result("a€b".to_owned(), 3), "a\n[... truncated: 4 more bytes]");
        assert_eq!(
            truncate_result("a€b".to_owned(), 4),
            "a€\n[... truncated: 1 more bytes]"
        );
        assert_eq!(truncate_result("€".to_owned(), 0), "\n[... truncated: 3 more bytes]");
    }

    #[tokio::test]
    async fn a_cancelled_call_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools::from_config(&all_enabled(), dir.path());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let output = tools
            .call(
                "read_file",
                &serde_json::json!({"path": "a.txt"}),
                Principal::Owner,
                &cancel,
            )
            .await;
        assert!(output.is_error);
        assert!(output.content.contains("cancelled"), "{}", output.content);
    }
}
