//! `[hooks]`: programs the daemon runs at lifecycle points and on alerts. Each hook is a list of
//! commands, each an argv array: no shell is involved, so nothing in an event's details can be
//! read as shell syntax.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Commands one hook may list.
pub const MAX_COMMANDS: usize = 8;
/// Arguments one command may have, program included.
pub const MAX_ARGS: usize = 64;
/// Bytes one argument may have.
pub const MAX_ARG_BYTES: usize = 4096;

/// `[hooks]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// How long one command may run before its whole process group is killed.
    pub timeout_secs: u64,
    /// Commands running at once; an event that finds no room is dropped and counted.
    pub max_concurrent: u32,
    /// Before the daemon opens anything; a failure stops the start (exit 1, before READY).
    pub pre_start: Vec<Vec<String>>,
    /// After READY.
    pub post_start: Vec<Vec<String>>,
    /// Before a reload re-reads the config file (awaited; a failure is logged).
    pub pre_reload: Vec<Vec<String>>,
    /// After a reload, with its outcome.
    pub post_reload: Vec<Vec<String>>,
    /// When the drain begins (awaited, within the shutdown timeout).
    pub pre_stop: Vec<Vec<String>>,
    /// After the drain, just before the daemon exits (awaited, within the shutdown timeout).
    pub post_stop: Vec<Vec<String>>,
    /// A budget cap refused a turn.
    pub on_budget_exhausted: Vec<Vec<String>>,
    /// The memory pressure level changed.
    pub on_memory_pressure: Vec<Vec<String>>,
    /// A backup finished or failed.
    pub on_backup: Vec<Vec<String>>,
    /// A device was added or revoked.
    pub on_device_change: Vec<Vec<String>>,
    /// The provider stopped answering (after retries); once until it answers again.
    pub on_provider_down: Vec<Vec<String>>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 30,
            max_concurrent: 4,
            pre_start: Vec::new(),
            post_start: Vec::new(),
            pre_reload: Vec::new(),
            post_reload: Vec::new(),
            pre_stop: Vec::new(),
            post_stop: Vec::new(),
            on_budget_exhausted: Vec::new(),
            on_memory_pressure: Vec::new(),
            on_backup: Vec::new(),
            on_device_change: Vec::new(),
            on_provider_down: Vec::new(),
        }
    }
}

/// The hooks' names (their keys under `[hooks]`), in the order they are listed.
pub const HOOK_NAMES: [&str; 11] = [
    "pre_start",
    "post_start",
    "pre_reload",
    "post_reload",
    "pre_stop",
    "post_stop",
    "on_budget_exhausted",
    "on_memory_pressure",
    "on_backup",
    "on_device_change",
    "on_provider_down",
];

impl HooksConfig {
    /// The commands of the hook named `name` (one of [`HOOK_NAMES`]).
    pub fn commands(&self, name: &str) -> &[Vec<String>] {
        match name {
            "pre_start" => &self.pre_start,
            "post_start" => &self.post_start,
            "pre_reload" => &self.pre_reload,
            "post_reload" => &self.post_reload,
            "pre_stop" => &self.pre_stop,
            "post_stop" => &self.post_stop,
            "on_budget_exhausted" => &self.on_budget_exhausted,
            "on_memory_pressure" => &self.on_memory_pressure,
            "on_backup" => &self.on_backup,
            "on_device_change" => &self.on_device_change,
            "on_provider_down" => &self.on_provider_down,
            _ => &[],
        }
    }

    /// What is wrong with the commands, one problem per line: each must name its program by an
    /// absolute path to an executable file (there is no shell and no `PATH` search), within the
    /// bounds.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for name in HOOK_NAMES {
            let commands = self.commands(name);
            if commands.len() > MAX_COMMANDS {
                problems.push(format!(
                    "hooks.{name}: {} commands; a hook runs at most {MAX_COMMANDS} (put more in one script)",
                    commands.len()
                ));
            }
            for (index, argv) in commands.iter().enumerate() {
                let at = format!("hooks.{name}[{index}]");
                let Some(program) = argv.first() else {
                    problems.push(format!(
                        "{at}: an empty command; give the program and its arguments, as in [\"/usr/bin/logger\", \"-t\", \"blufio\"]"
                    ));
                    continue;
                };
                if argv.len() > MAX_ARGS || argv.iter().any(|arg| arg.len() > MAX_ARG_BYTES || arg.contains('\0')) {
                    problems.push(format!(
                        "{at}: at most {MAX_ARGS} arguments of at most {MAX_ARG_BYTES} bytes each, without NUL"
                    ));
                    continue;
                }
                let path = Path::new(program);
                if !path.is_absolute() {
                    problems.push(format!(
                        "{at}: {program:?} is not an absolute path; hooks run without a shell or PATH search, so name the program in full (for example /usr/bin/{program})"
                    ));
                    continue;
                }
                // One message for every failure: validation also runs for read-only callers'
                // documents, and telling absent from unreadable would let them probe the
                // daemon's filesystem.
                use std::os::unix::fs::PermissionsExt as _;
                let executable = std::fs::metadata(path)
                    .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0);
                if !executable {
                    problems.push(format!(
                        "{at}: {program} is not an executable file the daemon can run; install it, chmod +x it, or fix the path"
                    ));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attack on issue 13: a read-only caller's `ValidateConfig` told an absent path from an
    /// unreadable one, a probe of the daemon's filesystem.
    #[test]
    fn a_program_that_cannot_run_gets_one_message_whatever_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "data").unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let message = |program: &std::path::Path| {
            let hooks = HooksConfig {
                post_start: vec![vec![program.display().to_string()]],
                ..HooksConfig::default()
            };
            let problems = hooks.problems();
            assert_eq!(problems.len(), 1, "{problems:?}");
            problems[0].replace(&program.display().to_string(), "PROGRAM")
        };
        let absent = message(&dir.path().join("absent"));
        assert!(absent.contains("is not an executable file"), "{absent}");
        assert_eq!(message(&plain), absent);
        assert_eq!(message(dir.path()), absent);
        assert_eq!(message(&locked.join("inside")), absent);
        assert!(
            HooksConfig {
                post_start: vec![vec!["/bin/sh".to_owned()]],
                ..HooksConfig::default()
            }
            .problems()
            .is_empty()
        );
    }
}
