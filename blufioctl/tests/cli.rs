//! `blufioctl` as users meet it, without a daemon: exit codes and messages when blufiod is not
//! reachable, usage errors, completions, the man page and `--help`. Tests against a live daemon
//! live in `blufiod/tests`.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

/// The built `blufioctl`, with the environment that would change its behaviour cleared.
fn blufioctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blufioctl"));
    command
        .env_remove("BLUFIO_SOCKET")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("NO_COLOR");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("blufioctl should start")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_unreachable(output: &Output, socket: &Path) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", stdout(output));
    assert!(
        stderr.starts_with(&format!("error: cannot reach blufiod at {}: ", socket.display())),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("hint: start it with 'blufiod'"), "stderr: {stderr}");
}

#[test]
fn missing_socket_exits_3_and_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody-here.sock");
    let output = run(blufioctl().arg("status").arg("--socket").arg(&socket));
    assert_unreachable(&output, &socket);
    assert!(
        stderr(&output).contains("No such file or directory"),
        "stderr: {}",
        stderr(&output)
    );
}

#[test]
fn stale_socket_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("stale.sock");
    // Binding creates the socket file; dropping the listener leaves it behind with nobody
    // listening, as after a crash of the daemon.
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let output = run(blufioctl().args(["--socket"]).arg(&socket).arg("status"));
    assert_unreachable(&output, &socket);
    assert!(
        stderr(&output).contains("Connection refused"),
        "stderr: {}",
        stderr(&output)
    );
}

#[test]
fn unreachable_with_json_prints_nothing_on_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("missing.sock");
    for args in [
        &["status", "--json"][..],
        &["config", "get", "--json"],
        &["config", "get", "log.level", "--json"],
        &["config", "reload", "--json"],
        &["config", "validate", "--json"],
    ] {
        let output = run(blufioctl().args(args).arg("--socket").arg(&socket));
        assert_unreachable(&output, &socket);
    }
}

#[test]
fn socket_comes_from_env_then_default_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_env = dir.path().join("from-env.sock");
    let output = run(blufioctl().arg("status").env("BLUFIO_SOCKET", &from_env));
    assert_unreachable(&output, &from_env);

    // Under systemd, $RUNTIME_DIRECTORY wins over everything else in the default.
    let output = run(blufioctl().arg("status").env("RUNTIME_DIRECTORY", dir.path()));
    assert_unreachable(&output, &dir.path().join("blufiod.sock"));

    // --socket wins over the environment.
    let flag = dir.path().join("flag.sock");
    let output = run(blufioctl()
        .args(["status", "--socket"])
        .arg(&flag)
        .env("BLUFIO_SOCKET", &from_env));
    assert_unreachable(&output, &flag);
}

#[test]
fn set_accepts_values_that_look_like_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("missing.sock");
    // Parsing must succeed (not exit 2) so that the failure is about the missing daemon.
    let output = run(blufioctl()
        .args(["config", "set", "agent.temperature", "-1", "--socket"])
        .arg(&socket));
    assert_unreachable(&output, &socket);
}

#[test]
fn validate_reports_an_unreadable_file_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("absent.toml");
    let socket = dir.path().join("missing.sock");
    let output = run(blufioctl()
        .args(["config", "validate"])
        .arg(&file)
        .arg("--socket")
        .arg(&socket));
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with(&format!("error: cannot read config file {}: ", file.display())),
        "stderr: {stderr}"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let output = run(blufioctl().arg("frobnicate"));
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("frobnicate"));

    let output = run(blufioctl().args(["config", "set", "only-a-key"]));
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
}

#[test]
fn completions_for_bash() {
    let output = run(blufioctl().args(["completions", "bash"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let script = stdout(&output);
    assert!(script.contains("blufioctl"), "{script}");
    assert!(script.contains("complete"), "{script}");
    assert!(script.contains("validate"), "subcommands are completed: {script}");

    let output = run(blufioctl().args(["completions", "tcsh"]));
    assert_eq!(output.status.code(), Some(2), "unknown shells are usage errors");
}

#[test]
fn man_page_is_roff() {
    let output = run(blufioctl().arg("man"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let page = stdout(&output);
    assert!(
        page.starts_with(".TH") || page.starts_with(".ie"),
        "{}",
        &page[..page.len().min(200)]
    );
    assert!(page.contains("blufioctl"));
    assert!(page.contains("Exit status"), "the exit codes are in the man page");
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let output = run(blufioctl().arg("--help"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let help = stdout(&output);
    for command in ["status", "config", "completions"] {
        assert!(help.contains(command), "missing {command}: {help}");
    }
    assert!(!help.contains("\n  man "), "man is hidden: {help}");
    assert!(help.contains("--socket"), "{help}");
    assert!(help.contains("BLUFIO_SOCKET"), "{help}");
    assert!(help.contains("Exit status:"), "{help}");
    for code in ["  0  ", "  1  ", "  2  ", "  3  "] {
        assert!(help.contains(code), "missing exit code {code:?}: {help}");
    }
    assert!(help.contains("not reachable"), "{help}");

    let output = run(blufioctl().args(["config", "--help"]));
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for command in ["get", "set", "validate", "reload"] {
        assert!(help.contains(command), "missing config {command}: {help}");
    }
}

/// A stand-in for blufiod: the real generated `Control` service with canned answers, served on a
/// Unix socket in a temp dir from a background thread. It tests the client's wire path (socket
/// connector, `:authority`, status mapping, timeouts), not the daemon's behaviour.
mod fake {
    use std::os::unix::net::UnixListener as StdUnixListener;
    use std::path::{Path, PathBuf};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use blufio_proto::control::v1::control_server::{Control, ControlServer};
    use blufio_proto::control::v1::{
        ConfigEntry, DaemonState, GetConfigRequest, GetConfigResponse, GetStatusRequest, GetStatusResponse,
        ReloadConfigRequest, ReloadConfigResponse, SetConfigRequest, SetConfigResponse, SubsystemStatus,
        ValidateConfigRequest, ValidateConfigResponse,
    };
    use tokio::sync::oneshot;
    use tonic::{Request, Response, Status};

    pub struct FakeDaemon {
        socket: PathBuf,
        shutdown: Option<oneshot::Sender<()>>,
        thread: Option<JoinHandle<()>>,
        _dir: tempfile::TempDir,
    }

    impl FakeDaemon {
        pub fn start() -> FakeDaemon {
            let dir = tempfile::tempdir().expect("tempdir");
            let socket = dir.path().join("blufiod.sock");
            // Bind before returning, so the binary never races the server's startup.
            let listener = StdUnixListener::bind(&socket).expect("bind fake socket");
            listener.set_nonblocking(true).expect("nonblocking");
            let (shutdown, shutdown_rx) = oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::UnixListener::from_std(listener).expect("tokio listener");
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                    tonic::transport::Server::builder()
                        .add_service(ControlServer::new(Fake))
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = shutdown_rx.await;
                        })
                        .await
                        .expect("fake server");
                });
            });
            FakeDaemon {
                socket,
                shutdown: Some(shutdown),
                thread: Some(thread),
                _dir: dir,
            }
        }

        pub fn socket(&self) -> &Path {
            &self.socket
        }
    }

    impl Drop for FakeDaemon {
        fn drop(&mut self) {
            if let Some(shutdown) = self.shutdown.take() {
                let _ = shutdown.send(());
            }
            // A hung handler (reload) would keep a graceful shutdown waiting; do not join then.
            if let Some(thread) = self.thread.take()
                && thread.is_finished()
            {
                let _ = thread.join();
            }
        }
    }

    struct Fake;

    fn entry(key: &str, value: &str, restart_required: bool) -> ConfigEntry {
        ConfigEntry {
            key: key.into(),
            value: value.into(),
            value_json: value.into(),
            source: "file".into(),
            secret: false,
            restart_required,
            unset: false,
            pending_restart: false,
        }
    }

    #[tonic::async_trait]
    impl Control for Fake {
        async fn get_status(&self, _request: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
            Ok(Response::new(GetStatusResponse {
                state: DaemonState::Ready as i32,
                version: "9.9.9".into(),
                pid: 4242,
                uptime_seconds: 192,
                config_path: "/etc/blufio/blufiod.toml".into(),
                config_file_present: false,
                database_path: "/var/lib/blufio/blufio.db".into(),
                database_size_bytes: 2048,
                socket_path: "/run/blufio/blufiod.sock".into(),
                state_dir: "/var/lib/blufio".into(),
                subsystems: vec![SubsystemStatus {
                    name: "control".into(),
                    status: "listening".into(),
                }],
                caller_access: "read-only".into(),
                ..GetStatusResponse::default()
            }))
        }

        async fn get_config(&self, request: Request<GetConfigRequest>) -> Result<Response<GetConfigResponse>, Status> {
            let all = vec![
                entry("control.socket", "\"/run/blufio/blufiod.sock\"", true),
                entry("log.level", "\"info\"", false),
            ];
            let key = request.into_inner().key;
            let entries = if key.is_empty() {
                all
            } else {
                let found: Vec<_> = all.into_iter().filter(|entry| entry.key == key).collect();
                if found.is_empty() {
                    return Err(Status::not_found(format!("unknown key `{key}`")));
                }
                found
            };
            Ok(Response::new(GetConfigResponse {
                entries,
                config_path: "/etc/blufio/blufiod.toml".into(),
            }))
        }

        async fn set_config(&self, request: Request<SetConfigRequest>) -> Result<Response<SetConfigResponse>, Status> {
            let request = request.into_inner();
            if request.key != "log.level" {
                return Err(Status::permission_denied(
                    "read-only access: config set needs write access",
                ));
            }
            Ok(Response::new(SetConfigResponse {
                config_path: "/etc/blufio/blufiod.toml".into(),
                entry: Some(entry("log.level", &format!("\"{}\"", request.value), false)),
                applied_live: true,
                restart_required: vec![],
                overridden_by_env: "BLUFIO_LOG__LEVEL".into(),
            }))
        }

        async fn validate_config(
            &self,
            request: Request<ValidateConfigRequest>,
        ) -> Result<Response<ValidateConfigResponse>, Status> {
            let request = request.into_inner();
            let response = if request.toml.contains("bad") {
                ValidateConfigResponse {
                    valid: false,
                    errors: vec![
                        format!("{}: line 1: unknown key `bad`", request.name),
                        "second problem".into(),
                    ],
                }
            } else {
                ValidateConfigResponse {
                    valid: true,
                    errors: vec![],
                }
            };
            Ok(Response::new(response))
        }

        async fn reload_config(
            &self,
            _request: Request<ReloadConfigRequest>,
        ) -> Result<Response<ReloadConfigResponse>, Status> {
            // A hung daemon: never answer within any test's patience.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Response::new(ReloadConfigResponse::default()))
        }
    }
}

fn against(daemon: &fake::FakeDaemon) -> Command {
    let mut command = blufioctl();
    command.arg("--socket").arg(daemon.socket());
    command
}

#[test]
fn status_json_from_a_live_socket() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["status", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.ends_with("}\n"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("one json document");
    assert_eq!(json["state"], "ready");
    assert_eq!(json["version"], "9.9.9");
    assert_eq!(json["uptime_seconds"], 192);
    assert_eq!(json["sessions"], serde_json::Value::Null);
    assert_eq!(json["subsystems"][0]["name"], "control");
    assert_eq!(json["caller_access"], "read-only");
}

#[test]
fn status_human_from_a_live_socket() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["status", "--plain"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("state: ready\nversion: 9.9.9\n"), "{text}");
    assert!(text.contains("uptime: 3m 12s\n"), "{text}");
    assert!(
        text.contains("config: /etc/blufio/blufiod.toml (not present, using defaults)\n"),
        "{text}"
    );
    assert!(
        text.contains("database: /var/lib/blufio/blufio.db (2.0 KiB)\n"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour into a pipe: {text:?}");
}

#[test]
fn config_get_one_and_all() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["config", "get", "log.level", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["config_path"], "/etc/blufio/blufiod.toml");
    assert_eq!(
        json["entries"],
        serde_json::json!([{"key": "log.level", "value": "info", "source": "file",
                            "secret": false, "restart_required": false, "unset": false,
                            "pending_restart": false}])
    );

    let output = run(against(&daemon).args(["config", "get"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("*  control.socket  \"/run/blufio/blufiod.sock\"  file\n"),
        "{text}"
    );
    assert!(text.contains("   log.level       \"info\""), "{text}");
}

#[test]
fn daemon_errors_exit_1_with_the_status_message() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["config", "get", "nope"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), "error: unknown key `nope`\n");
    assert!(output.stdout.is_empty());

    let output = run(against(&daemon).args(["config", "set", "control.socket", "/x", "--json"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).starts_with("error: read-only access: config set needs write access\n"),
        "stderr: {}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn config_set_reports_live_apply_and_env_override() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["config", "set", "log.level", "debug"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "set log.level = \"debug\" in /etc/blufio/blufiod.toml\napplied live\n"
    );
    assert!(
        stderr(&output).starts_with("warning: BLUFIO_LOG__LEVEL overrides log.level"),
        "stderr: {}",
        stderr(&output)
    );
}

#[test]
fn config_validate_file_and_daemon_file() {
    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "bad = 1\n").expect("write");

    let output = run(against(&daemon).args(["config", "validate"]).arg(&bad));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    // The file's path travels as the document name, and every problem gets its own line.
    assert_eq!(
        stderr(&output),
        format!(
            "error: {}: line 1: unknown key `bad`\nerror: second problem\n",
            bad.display()
        )
    );

    let output = run(against(&daemon).args(["config", "validate", "--json"]).arg(&bad));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["valid"], false);
    assert_eq!(json["file"], bad.display().to_string());
    assert_eq!(json["errors"].as_array().map(Vec::len), Some(2));

    let output = run(against(&daemon).args(["config", "validate", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json, serde_json::json!({"valid": true, "file": null, "errors": []}));
}

#[test]
fn hung_daemon_times_out_with_exit_1() {
    let daemon = fake::FakeDaemon::start();
    let started = std::time::Instant::now();
    let output = run(against(&daemon).args(["config", "reload", "--timeout", "1"]));
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).starts_with(&format!(
            "error: blufiod at {} did not answer within 1s\n",
            daemon.socket().display()
        )),
        "stderr: {}",
        stderr(&output)
    );
    assert!(elapsed < std::time::Duration::from_secs(10), "took {elapsed:?}");
}

/// docs/cli-json.md is the `# JSON output` section of output.rs, so the two cannot drift.
#[test]
fn json_docs_match_the_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/output.rs")).unwrap();
    let doc: Vec<&str> = source
        .lines()
        .take_while(|line| line.starts_with("//!"))
        .map(|line| line.strip_prefix("//! ").unwrap_or(line.trim_start_matches("//!")))
        .collect();
    let start = doc.iter().position(|line| *line == "# JSON output").unwrap() + 1;
    let section = doc[start..].join("\n");
    let docs = std::fs::read_to_string(root.join("../docs/cli-json.md")).unwrap();
    assert!(
        docs.contains(section.trim()),
        "docs/cli-json.md differs from the `# JSON output` section of blufioctl/src/output.rs; copy it over"
    );
}
