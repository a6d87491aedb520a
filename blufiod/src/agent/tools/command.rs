//! `run_command`: runs one allowed program with arguments and returns its exit status and output.
//!
//! It must never run anything but a program listed in `tools.run_command.allow`, never through a
//! shell, and never leave processes behind. Paths are compared as written, only lexically
//! normalized (`//`, `.` and a trailing slash; any `..` is refused), never by resolving links:
//! multi-call binaries (busybox, uutils, toybox) pick what to do from the name they are run as, so
//! allowing `/x/uptime` must not allow `/x/sh` just because both link to one binary. The entry as
//! written in the config is what runs, under its own name as argv[0]. The program runs in its own
//! process group with a cleared environment and no stdin, the whole group is killed on timeout, on
//! cancellation (when the call is dropped) and when the call ends, and output beyond the cap is
//! drained but not kept, so a chatty program neither blocks nor grows memory.

use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ToolOutput, error_chain, parse_input};
use crate::agent::provider::ToolSpec;
use crate::config::RunCommandConfig;
use crate::process::{ProcessGroupGuard, isolated_command, spawn_in_own_group};

/// The `PATH` a program gets (with `LANG=C.UTF-8`, and nothing of the daemon's own environment,
/// such as API keys: see [`isolated_command`]).
const COMMAND_PATH: &str = "/usr/bin:/bin";

/// The tool's spec, naming the programs `allow` lists so that the model does not guess.
pub(super) fn spec(allow: &[PathBuf]) -> ToolSpec {
    let programs = if allow.is_empty() {
        "none yet (the owner lists them in tools.run_command.allow)".to_owned()
    } else {
        allow
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    ToolSpec {
        name: "run_command".to_owned(),
        description: format!(
            "Run one of the programs the owner allowed, by absolute path, with arguments. The allowed programs: \
{programs}. There is no shell: no pipes, globbing, redirection or variables. Returns the exit status, stdout and \
stderr (each cut at a size limit). The program is killed if it runs too long."
        ),
        input_schema: json!({
            "type": "object",
            "properties": {
                "program": {"type": "string", "description": "Absolute path of an allowed program, e.g. /usr/bin/df"},
                "args": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Arguments, each passed to the program as is"
                }
            },
            "required": ["program"],
            "additionalProperties": false
        }),
    }
}

/// `run_command`, configured.
pub(super) struct RunCommand {
    allow: Vec<PathBuf>,
    timeout: Duration,
    max_output_bytes: usize,
    /// The working directory when it exists, else `/`.
    workspace: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

impl RunCommand {
    /// Builds the tool from its config; commands run in `workspace` when it exists.
    pub(super) fn from_config(config: &RunCommandConfig, workspace: PathBuf) -> Self {
        Self {
            allow: config.allow.clone(),
            timeout: Duration::from_secs(config.timeout_secs),
            max_output_bytes: usize::try_from(config.max_output_bytes).unwrap_or(usize::MAX),
            workspace,
        }
    }

    /// The spec offered to the model, with the allowed programs.
    pub(super) fn spec(&self) -> ToolSpec {
        spec(&self.allow)
    }

    /// Runs one call.
    pub(super) async fn call(&self, input: &serde_json::Value) -> ToolOutput {
        let input: Input = match parse_input(
            "run_command",
            input,
            r#"{"program": "/absolute/path", "args": ["..."]}"#,
        ) {
            Ok(input) => input,
            Err(output) => return output,
        };
        let program = match self.allowed_entry(&input.program) {
            Ok(program) => program,
            Err(message) => return ToolOutput::error(message),
        };
        let working_directory = if self.workspace.is_dir() {
            self.workspace.as_path()
        } else {
            Path::new("/")
        };

        // The allowed entry runs exactly as written, under its own name: a multi-call binary then
        // behaves as the program the owner allowed, whatever name the model used for it.
        let mut command = isolated_command(program, COMMAND_PATH);
        command.arg0(program).args(&input.args).current_dir(working_directory);
        // From here on the process group dies with this call, however the call ends.
        let (mut child, group_guard) = match spawn_in_own_group(&mut command) {
            Ok(started) => started,
            Err(error) => {
                return ToolOutput::error(format!(
                    "run_command cannot start {}: {}",
                    input.program,
                    error_chain(&error)
                ));
            }
        };
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return ToolOutput::error("run_command lost the program's output pipes");
        };

        let mut stdout_capture = Capture::new(self.max_output_bytes);
        let mut stderr_capture = Capture::new(self.max_output_bytes);
        let finished = tokio::time::timeout(self.timeout, async {
            // Waiting for the pipes to close as well as for the exit collects all output, and
            // catches a background child that keeps them open (it runs into the timeout).
            let (status, (), ()) = tokio::join!(
                child.wait(),
                stdout_capture.read_all(stdout),
                stderr_capture.read_all(stderr)
            );
            status
        })
        .await;

        let (mut content, is_error) = match finished {
            Ok(Ok(status)) => (describe_status(status), !status.success()),
            Ok(Err(error)) => (
                format!("run_command lost track of {}: {}", input.program, error_chain(&error)),
                true,
            ),
            Err(_elapsed) => {
                ProcessGroupGuard::kill(group_guard.0);
                // Reap the killed program so it does not linger as a zombie.
                let _ = child.wait().await;
                (
                    format!(
                        "run_command killed {} after {} s: it ran longer than tools.run_command.timeout_secs",
                        input.program,
                        self.timeout.as_secs()
                    ),
                    true,
                )
            }
        };
        content.push_str("\n--- stdout ---\n");
        stdout_capture.append_to(&mut content, "stdout");
        content.push_str("\n--- stderr ---\n");
        stderr_capture.append_to(&mut content, "stderr");
        ToolOutput { content, is_error }
    }

    /// The entry of `tools.run_command.allow` that `requested` names, else a message for the model.
    ///
    /// Both sides are compared lexically normalized and never resolved: a link is allowed only
    /// under the name the owner wrote, and what runs is that entry, not the file it resolves to.
    fn allowed_entry(&self, requested: &str) -> Result<&Path, String> {
        let allowed_list = || {
            if self.allow.is_empty() {
                "none".to_owned()
            } else {
                self.allow
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let requested_path = match normalize_program_path(Path::new(requested)) {
            Ok(path) => path,
            Err(reason) => {
                return Err(format!(
                    "run_command refused {requested:?}: {reason}; allowed programs: {}",
                    allowed_list()
                ));
            }
        };
        self.allow
            .iter()
            .find(|allowed| normalize_program_path(allowed).is_ok_and(|allowed| allowed == requested_path))
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                format!(
                    "run_command refused {requested}: it is not in tools.run_command.allow (allowed programs: {}); \
the owner can add it there",
                    allowed_list()
                )
            })
    }
}

/// `path` with `//`, `.` components and a trailing slash removed, if it is absolute and has no `..`.
///
/// Lexical only: `..` is refused rather than folded, because folding it is only right when the
/// component before it is not a link, which only resolving could tell.
fn normalize_program_path(path: &Path) -> Result<PathBuf, &'static str> {
    if !path.is_absolute() {
        return Err("give the program's absolute path");
    }
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Normal(_) => normalized.push(component),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed in a program path; give the path as listed"),
            Component::Prefix(_) => return Err("give the program's absolute path"),
        }
    }
    Ok(normalized)
}

/// One output stream: the first `cap` bytes, and how many there were in all.
struct Capture {
    cap: usize,
    kept: Vec<u8>,
    total: u64,
    read_error: Option<String>,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            kept: Vec::new(),
            total: 0,
            read_error: None,
        }
    }

    /// Reads to the end, keeping up to the cap and discarding the rest (the pipe must keep
    /// draining, or the program would block on a full pipe).
    async fn read_all(&mut self, mut reader: impl AsyncRead + Unpin) {
        let mut buffer = [0_u8; 8192];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => return,
                Ok(n) => {
                    self.total += n as u64;
                    let room = self.cap.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buffer[..n.min(room)]);
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.read_error = Some(error_chain(&error));
                    return;
                }
            }
        }
    }

    fn append_to(&self, content: &mut String, name: &str) {
        if self.total == 0 && self.read_error.is_none() {
            content.push_str("(empty)");
            return;
        }
        content.push_str(&String::from_utf8_lossy(&self.kept));
        let dropped = self.total - self.kept.len() as u64;
        if dropped > 0 {
            content.push_str(&format!(
                "\n[... {name} cut: {dropped} more bytes were not kept (tools.run_command.max_output_bytes)]"
            ));
        }
        if let Some(error) = &self.read_error {
            content.push_str(&format!("\n[... reading {name} failed: {error}]"));
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by signal {signal} ({name})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => "ended without an exit status".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::agent::tools::Tools;
    use crate::config::ToolsConfig;

    /// The first of `candidates` that exists; Debian has all the programs these tests use.
    fn program(candidates: &[&str]) -> String {
        candidates
            .iter()
            .find(|candidate| Path::new(candidate).exists())
            .unwrap_or_else(|| panic!("none of {candidates:?} exists"))
            .to_string()
    }

    fn tool(allow: &[&str], timeout_secs: u64, max_output_bytes: u64, workspace: &Path) -> RunCommand {
        RunCommand::from_config(
            &RunCommandConfig {
                enabled: true,
                allow: allow.iter().map(PathBuf::from).collect(),
                timeout_secs,
                max_output_bytes,
                callers: vec![crate::config::Principal::Owner],
            },
            workspace.to_owned(),
        )
    }

    async fn run(tool: &RunCommand, program: &str, args: &[&str]) -> ToolOutput {
        tool.call(&json!({"program": program, "args": args})).await
    }

    #[tokio::test]
    async fn an_allowed_program_runs() {
        let dir = tempfile::tempdir().unwrap();
        let echo = program(&["/bin/echo", "/usr/bin/echo"]);
        let tool = tool(&[&echo], 10, 1024, dir.path());
        let output = run(&tool, &echo, &["hello", "world; rm -rf /"]).await;
        assert_eq!(
            output,
            ToolOutput::ok("exit status 0\n--- stdout ---\nhello world; rm -rf /\n\n--- stderr ---\n(empty)")
        );
    }

    #[tokio::test]
    async fn the_environment_is_cleared_and_the_workspace_is_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let env = program(&["/usr/bin/env", "/bin/env"]);
        let pwd = program(&["/bin/pwd", "/usr/bin/pwd"]);
        let workspace = dir.path().join("workspace");
        let tool = tool(&[&env, &pwd], 10, 1024, &workspace);

        let environment = run(&tool, &env, &[]).await;
        assert!(!environment.is_error, "{}", environment.content);
        let mut variables: Vec<&str> = environment.content.lines().skip(2).take(2).collect();
        variables.sort_unstable();
        assert_eq!(
            variables,
            ["LANG=C.UTF-8", "PATH=/usr/bin:/bin"],
            "{}",
            environment.content
        );
        assert!(
            environment.content.contains("--- stderr ---\n(empty)"),
            "{}",
            environment.content
        );

        let without_workspace = run(&tool, &pwd, &[]).await;
        assert!(
            without_workspace.content.contains("--- stdout ---\n/\n"),
            "{}",
            without_workspace.content
        );
        std::fs::create_dir(&workspace).unwrap();
        let with_workspace = run(&tool, &pwd, &[]).await;
        let expected = format!("--- stdout ---\n{}\n", workspace.canonicalize().unwrap().display());
        assert!(with_workspace.content.contains(&expected), "{}", with_workspace.content);
    }

    #[tokio::test]
    async fn programs_not_in_the_list_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let echo = program(&["/bin/echo", "/usr/bin/echo"]);
        let sleep = program(&["/bin/sleep", "/usr/bin/sleep"]);
        let tool = tool(&[&echo], 10, 1024, dir.path());

        let other = run(&tool, &sleep, &["0"]).await;
        assert!(other.is_error);
        assert!(
            other.content.contains("not in tools.run_command.allow"),
            "{}",
            other.content
        );
        let relative = run(&tool, "echo", &["hi"]).await;
        assert!(relative.is_error);
        assert!(relative.content.contains("absolute path"), "{}", relative.content);
        let missing = run(&tool, "/nonexistent/echo", &[]).await;
        assert!(missing.is_error);
        assert!(
            missing.content.contains("not in tools.run_command.allow"),
            "{}",
            missing.content
        );
        let traversal = run(&tool, &format!("{sleep}/../echo"), &[]).await;
        assert!(traversal.is_error, "{}", traversal.content);
    }

    #[tokio::test]
    async fn links_are_matched_by_name_never_by_target() {
        let dir = tempfile::tempdir().unwrap();
        let echo = program(&["/bin/echo", "/usr/bin/echo"]);
        let link = dir.path().join("say");
        std::os::unix::fs::symlink(&echo, &link).unwrap();
        let link = link.to_str().unwrap();

        // Allowing a link allows that name only, not the file it points to ...
        let allow_link = tool(&[link], 10, 1024, dir.path());
        let through_link = run(&allow_link, link, &["a"]).await;
        assert!(!through_link.is_error, "{}", through_link.content);
        assert!(through_link.content.contains("\na\n"), "{}", through_link.content);
        let target = run(&allow_link, &echo, &["b"]).await;
        assert!(target.is_error, "{}", target.content);
        assert!(
            target.content.contains("not in tools.run_command.allow"),
            "{}",
            target.content
        );
        // ... and allowing a file does not allow links to it.
        let allow_target = tool(&[&echo], 10, 1024, dir.path());
        let other_name = run(&allow_target, link, &["c"]).await;
        assert!(other_name.is_error, "{}", other_name.content);
        assert!(!other_name.content.contains("\nc\n"), "{}", other_name.content);
    }

    #[tokio::test]
    async fn the_allowed_entry_runs_under_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let shell = program(&["/bin/sh", "/usr/bin/sh"]);
        let tool = tool(&[&shell], 10, 1024, dir.path());
        // $0 is the name the program was started as: the entry as listed, whatever the spelling
        // of the request.
        let requested = format!("/{}/./", shell.replace('/', "//"));
        let output = run(&tool, &requested, &["-c", "echo \"$0\""]).await;
        assert!(!output.is_error, "{}", output.content);
        assert!(
            output.content.contains(&format!("--- stdout ---\n{shell}\n")),
            "{}",
            output.content
        );
    }

    #[tokio::test]
    async fn a_multi_call_binary_runs_only_as_the_allowed_name() {
        let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|path| Path::new(path).exists())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "busybox is missing; CI installs it (.ci/run)"
            );
            eprintln!("skipped: busybox is not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let uptime = dir.path().join("uptime");
        let shell = dir.path().join("sh");
        std::os::unix::fs::symlink(busybox, &uptime).unwrap();
        std::os::unix::fs::symlink(busybox, &shell).unwrap();
        let uptime = uptime.to_str().unwrap();
        let tool = tool(&[uptime], 10, 1024, dir.path());

        let refused = run(&tool, shell.to_str().unwrap(), &["-c", "echo pwned"]).await;
        assert!(refused.is_error, "{}", refused.content);
        assert!(!refused.content.contains("pwned"), "{}", refused.content);
        let allowed = run(&tool, uptime, &[]).await;
        assert!(!allowed.is_error, "{}", allowed.content);
        assert!(allowed.content.contains("load average"), "{}", allowed.content);
    }

    #[tokio::test]
    async fn descriptors_inherited_without_cloexec_do_not_reach_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let ls = program(&["/bin/ls", "/usr/bin/ls"]);
        let marker = dir.path().join("inherited-descriptor-marker");
        let file = std::fs::File::create(&marker).unwrap();
        // As if the daemon had inherited it: std opens files close-on-exec, so clear the flag.
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        let tool = tool(&[&ls], 10, 64 * 1024, dir.path());
        let output = run(&tool, &ls, &["-l", "/proc/self/fd"]).await;
        assert!(!output.is_error, "{}", output.content);
        assert!(
            !output.content.contains("inherited-descriptor-marker"),
            "{}",
            output.content
        );
        drop(file);
    }

    #[test]
    fn program_paths_are_normalized_lexically() {
        let normalized = |path: &str| normalize_program_path(Path::new(path)).map(|path| path.display().to_string());
        assert_eq!(normalized("/usr/bin/ls").as_deref(), Ok("/usr/bin/ls"));
        assert_eq!(normalized("//usr///bin/ls").as_deref(), Ok("/usr/bin/ls"));
        assert_eq!(normalized("/usr/./bin/./ls").as_deref(), Ok("/usr/bin/ls"));
        assert_eq!(normalized("/usr/bin/ls/").as_deref(), Ok("/usr/bin/ls"));
        assert!(normalized("/usr/bin/../bin/ls").is_err());
        assert!(normalized("/usr/bin/ls/..").is_err());
        assert!(normalized("usr/bin/ls").is_err());
        assert!(normalized("./ls").is_err());
        assert!(normalized("").is_err());
    }

    #[tokio::test]
    async fn a_failing_program_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = program(&["/bin/sleep", "/usr/bin/sleep"]);
        let tool = tool(&[&sleep], 10, 1024, dir.path());
        let output = run(&tool, &sleep, &["--no-such-option"]).await;
        assert!(output.is_error);
        assert!(output.content.starts_with("exit status 1\n"), "{}", output.content);
        assert!(
            !output.content.ends_with("(empty)"),
            "stderr has the complaint: {}",
            output.content
        );
    }

    #[tokio::test]
    async fn a_program_that_runs_too_long_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = program(&["/bin/sleep", "/usr/bin/sleep"]);
        let tool = tool(&[&sleep], 1, 1024, dir.path());
        let started = Instant::now();
        // Far longer than the timeout, so that only a kill ends it in time even on a busy machine.
        let output = run(&tool, &sleep, &["30"]).await;
        assert!(output.is_error);
        assert!(output.content.contains("killed"), "{}", output.content);
        assert!(
            output.content.contains("tools.run_command.timeout_secs"),
            "{}",
            output.content
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn background_children_holding_the_output_are_killed_too() {
        let dir = tempfile::tempdir().unwrap();
        let shell = program(&["/bin/sh", "/usr/bin/sh"]);
        let tool = tool(&[&shell], 1, 1024, dir.path());
        let started = Instant::now();
        // The shell exits at once, but its background sleep keeps stdout open.
        let output = run(&tool, &shell, &["-c", "echo started; exec sleep 31.2468 &"]).await;
        assert!(output.is_error);
        assert!(output.content.contains("killed"), "{}", output.content);
        assert!(
            output.content.contains("--- stdout ---\nstarted\n"),
            "{}",
            output.content
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        assert!(gone(&["31.2468"]).await, "the background child is still running");
    }

    #[tokio::test]
    async fn stragglers_die_when_the_program_exits() {
        let dir = tempfile::tempdir().unwrap();
        let shell = program(&["/bin/sh", "/usr/bin/sh"]);
        let tool = tool(&[&shell], 10, 1024, dir.path());
        // The background sleep lets go of the output, so the call ends when the shell does.
        let output = run(&tool, &shell, &["-c", "exec sleep 31.3579 >/dev/null 2>&1 &"]).await;
        assert!(!output.is_error, "{}", output.content);
        assert!(gone(&["31.3579"]).await, "the background child is still running");
    }

    #[tokio::test]
    async fn output_is_capped_but_drained() {
        let dir = tempfile::tempdir().unwrap();
        let seq = program(&["/usr/bin/seq", "/bin/seq"]);
        let tool = tool(&[&seq], 10, 20, dir.path());
        // About 590 kB: far more than a pipe holds, so the program only finishes if it is drained.
        let output = run(&tool, &seq, &["1", "100000"]).await;
        assert!(!output.is_error, "{}", output.content);
        let expected = "exit status 0\n--- stdout ---\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n[... stdout cut: 588875 more \
bytes were not kept (tools.run_command.max_output_bytes)]\n--- stderr ---\n(empty)";
        assert_eq!(output.content, expected);
    }

    /// Whether a process whose last arguments are exactly `arguments` is alive (not a zombie).
    fn running(arguments: &[&str]) -> bool {
        let wanted: Vec<u8> = arguments
            .iter()
            .flat_map(|argument| [argument.as_bytes(), b"\0"].concat())
            .collect();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| cmdline.ends_with(&wanted)))
    }

    /// Waits (up to ten seconds, so a busy machine cannot fail it) for such a process to be gone:
    /// a kill takes a moment to land.
    async fn gone(arguments: &[&str]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(arguments) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !running(arguments)
    }

    #[tokio::test]
    async fn cancellation_stops_the_call_and_kills_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = program(&["/bin/sleep", "/usr/bin/sleep"]);
        let mut config = ToolsConfig::default();
        config.run_command.enabled = true;
        config.run_command.allow = vec![PathBuf::from(&sleep)];
        config.run_command.timeout_secs = 30;
        let tools = Tools::from_config(&config, dir.path());
        let cancel = CancellationToken::new();
        // An unusual duration marks this test's process in /proc.
        let marker = ["29.4321"];
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            canceller.cancel();
        });

        let started = Instant::now();
        let input = json!({"program": sleep, "args": marker});
        let output = tools
            .call("run_command", &input, crate::config::Principal::Owner, &cancel)
            .await;
        assert!(output.is_error);
        assert!(output.content.contains("cancelled"), "{}", output.content);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );

        assert!(gone(&marker).await, "the cancelled program is still running");
    }
}
