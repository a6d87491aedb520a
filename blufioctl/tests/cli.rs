//! `blufioctl` as users meet it, without a daemon: exit codes and messages when blufiod is not
//! reachable, usage errors, completions, the man page and `--help`, and every command against a
//! fake daemon (the generated gRPC service with canned answers) and, for `remote`, a fake gateway
//! that checks signatures with the shared verifier. Tests against a live daemon live in
//! `blufiod/tests`.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

/// The built `blufioctl`, with the environment that would change its behaviour cleared.
fn blufioctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blufioctl"));
    command
        .env_remove("BLUFIO_SOCKET")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("NO_COLOR")
        .env_remove("BLUFIO_REMOTE_URL")
        .env_remove("BLUFIO_REMOTE_KEY")
        .env_remove("BLUFIO_REMOTE_PIN")
        .env_remove("BLUFIO_REMOTE_KEYID")
        .env_remove("BLUFIOCTL_SOCKET")
        .env_remove("BLUFIOCTL_REMOTE_URL")
        .env_remove("BLUFIOCTL_REMOTE_KEY")
        .env_remove("BLUFIOCTL_REMOTE_PIN")
        .env_remove("BLUFIOCTL_REMOTE_KEYID");
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
    // Deprecation warnings come first.
    let stderr: String = stderr
        .lines()
        .filter(|line| !line.starts_with("warning: "))
        .map(|line| format!("{line}\n"))
        .collect();
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
        &["sessions", "list", "--json"],
        &["sessions", "show", "s1", "--json"],
        &["sessions", "delete", "s1", "--json"],
        &["usage", "--json"],
        &["config", "list-secrets", "--json"],
        &["config", "delete-secret", "x", "--json"],
        &["config", "set-secret", "x", "--json"],
        &["vault", "status", "--json"],
        &["vault", "rekey", "--json"],
        &["chat", "--json", "hi"],
        &["shell"],
    ] {
        let output = run(blufioctl().args(args).arg("--socket").arg(&socket));
        assert_unreachable(&output, &socket);
    }
}

#[test]
fn socket_comes_from_env_then_default_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_env = dir.path().join("from-env.sock");
    let output = run(blufioctl().arg("status").env("BLUFIOCTL_SOCKET", &from_env));
    assert_unreachable(&output, &from_env);

    // The name from before BLUFIOCTL_ still works, with a warning; the new name wins.
    let output = run(blufioctl().arg("status").env("BLUFIO_SOCKET", &from_env));
    assert_unreachable(&output, &from_env);
    assert!(
        stderr(&output).contains("BLUFIO_SOCKET is deprecated") && stderr(&output).contains("BLUFIOCTL_SOCKET"),
        "{}",
        stderr(&output)
    );
    let newer = dir.path().join("newer.sock");
    let output = run(blufioctl()
        .arg("status")
        .env("BLUFIO_SOCKET", &from_env)
        .env("BLUFIOCTL_SOCKET", &newer));
    assert_unreachable(&output, &newer);
    assert!(!stderr(&output).contains("deprecated"), "{}", stderr(&output));

    // Under systemd, $RUNTIME_DIRECTORY wins over everything else in the default.
    let output = run(blufioctl().arg("status").env("RUNTIME_DIRECTORY", dir.path()));
    assert_unreachable(&output, &dir.path().join("blufiod.sock"));

    // --socket wins over the environment.
    let flag = dir.path().join("flag.sock");
    let output = run(blufioctl()
        .args(["status", "--socket"])
        .arg(&flag)
        .env("BLUFIOCTL_SOCKET", &from_env));
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
fn a_secret_on_the_command_line_is_a_usage_error() {
    for args in [
        &["config", "set-secret", "anthropic", "sk-in-argv"][..],
        &["config", "set-secret", "anthropic", "--value", "sk-in-argv"],
        &["vault", "rekey", "--new-passphrase", "in argv too"],
    ] {
        let output = run(blufioctl().args(args));
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("unexpected argument"), "{}", stderr(&output));
    }
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

    // One page per subcommand, for `man blufioctl-doctor`.
    let dir = tempfile::tempdir().unwrap();
    let output = run(blufioctl().args(["man", "--dir"]).arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    for page in [
        "blufioctl.1",
        "blufioctl-doctor.1",
        "blufioctl-config-get.1",
        "blufioctl-hooks-test.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|error| panic!("{page}: {error}"));
        assert!(text.starts_with(".ie") || text.starts_with(".TH"), "{page}");
    }
    assert!(
        !dir.path().join("blufioctl-man.1").exists(),
        "hidden commands get no page"
    );
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let output = run(blufioctl().arg("--help"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let help = stdout(&output);
    for command in [
        "status",
        "config",
        "chat",
        "shell",
        "sessions",
        "device",
        "remote",
        "usage",
        "vault",
        "backup",
        "restore",
        "completions",
    ] {
        assert!(help.contains(command), "missing {command}: {help}");
    }
    assert!(!help.contains("\n  man "), "man is hidden: {help}");
    assert!(help.contains("--socket"), "{help}");
    assert!(help.contains("BLUFIOCTL_SOCKET"), "{help}");
    assert!(help.contains("Exit status:"), "{help}");
    for code in ["  0  ", "  1  ", "  2  ", "  3  "] {
        assert!(help.contains(code), "missing exit code {code:?}: {help}");
    }
    assert!(help.contains("not reachable"), "{help}");
    assert!(help.contains("  130  "), "{help}");

    let output = run(blufioctl().args(["config", "--help"]));
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for command in [
        "get",
        "set",
        "validate",
        "reload",
        "set-secret",
        "list-secrets",
        "delete-secret",
    ] {
        assert!(help.contains(command), "missing config {command}: {help}");
    }

    let output = run(blufioctl().args(["vault", "--help"]));
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for command in ["status", "rekey"] {
        assert!(help.contains(command), "missing vault {command}: {help}");
    }
    let output = run(blufioctl().args(["vault", "rekey", "--help"]));
    let help = stdout(&output);
    assert!(
        help.contains("--new-passphrase") && help.contains("--new-key <FILE>"),
        "{help}"
    );
}

/// A stand-in for blufiod: the real generated `Control` service with canned answers, served on a
/// Unix socket in a temp dir from a background thread. It tests the client's wire path (socket
/// connector, `:authority`, status mapping, timeouts), not the daemon's behaviour.
mod fake {
    use std::os::unix::net::UnixListener as StdUnixListener;
    use std::path::{Path, PathBuf};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use blufio_proto::backup::{self as archive, DaemonIdentity, Manifest, Member, VaultSummary};
    use blufio_proto::control::v1::control_server::{Control, ControlServer};
    use blufio_proto::control::v1::send_message_response::Event;
    use blufio_proto::control::v1::{
        Accepted, AddDeviceRequest, AddDeviceResponse, BackupChunk, BackupRequest, BackupStarted, BackupStatus,
        ChatMessage, CheckLevel, CheckResult, ConfigEntry, CostStatus, CreateSessionRequest, CreateSessionResponse,
        DaemonState, DayUsage, DeleteSecretRequest, DeleteSecretResponse, DeleteSessionRequest, DeleteSessionResponse,
        Device, GatewayStatus, GetConfigRequest, GetConfigResponse, GetMetricsRequest, GetMetricsResponse,
        GetSessionRequest, GetSessionResponse, GetStatusRequest, GetStatusResponse, GetUsageRequest, GetUsageResponse,
        GetVaultStatusRequest, GetVaultStatusResponse, ListDevicesRequest, ListDevicesResponse, ListSecretsRequest,
        ListSecretsResponse, ListSessionsRequest, ListSessionsResponse, LogLevel, LogLine, ModelUsage, PendingVaultKey,
        ReadLogsRequest, RekeyVaultRequest, RekeyVaultResponse, ReloadConfigRequest, ReloadConfigResponse,
        RestoreChunk, RestoreProgress, RestoreResponse, RevokeDeviceRequest, RevokeDeviceResponse, RunChecksRequest,
        RunChecksResponse, SecretInfo, SendMessageRequest, SendMessageResponse, Session, SessionUsage,
        SetConfigRequest, SetConfigResponse, SetSecretRequest, SetSecretResponse, SubsystemStatus, TextDelta,
        TokenUsage, ToolActivity, ToolCall, TurnCompleted, ValidateConfigRequest, ValidateConfigResponse, backup_chunk,
        restore_chunk, restore_progress,
    };
    use blufio_proto::httpsig;
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

    /// The canned sessions; "s1" has messages.
    fn session(id: &str, title: &str, updated_at: i64) -> Session {
        Session {
            id: id.into(),
            title: title.into(),
            created_at: 1_764_000_000,
            updated_at,
            model: "fake-model".into(),
            state: "idle".into(),
            message_count: 4,
        }
    }

    fn event(event: Event) -> Result<SendMessageResponse, Status> {
        Ok(SendMessageResponse { event: Some(event) })
    }

    /// A registered device; "laptop" is active and was used, "old-phone" is revoked.
    fn device(name: &str, last_used_at: i64, revoked_at: i64) -> Device {
        Device {
            name: name.into(),
            keyid: format!("SHA256:{name}"),
            fingerprint: format!("SHA256:{name}"),
            added_at: 1_764_000_000,
            last_used_at,
            revoked_at,
        }
    }

    /// The certificate fingerprint the fake's gateway reports.
    pub const GATEWAY_PIN: &str =
        "3F:A2:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:01:23:45:67:89:AB:CD:EF:10:20:30:40:50:9C";
    /// A device name `AddDevice` refuses as taken.
    pub const TAKEN: &str = "taken";

    /// The only secret value, passphrase and key material the fake accepts, so that tests see
    /// exactly what arrived (without the newline that stdin or a file added).
    pub const SECRET_VALUE: &str = "sk-fake-value";
    pub const PASSPHRASE: &str = "correct horse battery";
    pub const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    /// The secret that exists already (`SetSecret` replaces it) and that provider.api_key names.
    pub const NAMED: &str = "anthropic";

    /// Session ids that make `SendMessage` misbehave, for the error paths.
    pub const OVER_BUDGET: &str = "over-budget";
    pub const NO_CREDENTIALS: &str = "no-credentials";
    pub const NO_ANSWER: &str = "no-answer";
    pub const FAILS_MIDWAY: &str = "fails-midway";
    pub const HANGS: &str = "hangs";

    /// The archive `Backup` streams and `Restore` expects: a database of several chunks and a
    /// config file, built with the shared archive writer.
    pub fn archive() -> (Manifest, Vec<u8>) {
        let database: Vec<u8> = (0..600_000u32).map(|idx| (idx * 7 % 251) as u8).collect();
        let config = b"[log]\nlevel = \"info\"\n".to_vec();
        let member = |name: &str, data: &[u8]| {
            let (sha256, bytes) = archive::sha256_of(data).expect("hashes");
            Member {
                name: name.to_owned(),
                bytes,
                sha256,
            }
        };
        let manifest = Manifest {
            format: archive::FORMAT.to_owned(),
            format_version: archive::FORMAT_VERSION,
            blufio_version: "9.9.9".to_owned(),
            schema_version: 4,
            created_at: 1_764_000_000,
            daemon: DaemonIdentity {
                hostname: "fakehost".to_owned(),
                database_path: "/var/lib/blufio/blufio.db".to_owned(),
            },
            members: vec![member(archive::DATABASE, &database), member(archive::CONFIG, &config)],
            vault: Some(VaultSummary {
                sealed_with: "generated".to_owned(),
                entries: 2,
            }),
        };
        let bytes = archive::write(Vec::new(), &manifest, |name| {
            let data = if name == archive::DATABASE { &database } else { &config };
            Ok(Box::new(std::io::Cursor::new(data.clone())) as Box<dyn std::io::Read>)
        })
        .expect("writes the archive");
        (manifest, bytes)
    }

    /// The daemon's chunk size.
    const CHUNK_BYTES: usize = 256 * 1024;
    /// The message of a backup that breaks off (`--include-tls`).
    pub const BACKUP_BROKE: &str = "cannot read /etc/blufio/tls/key.pem for the archive";
    /// The message of a restore the fake refuses (`--restore-config`).
    pub const BAD_CONFIG: &str =
        "the archive's config file is invalid (unknown key `bad`); restore without it; nothing was changed";

    /// The message of a restore refused mid-way (`--without-secrets --restore-config`).
    pub const BUSY: &str = "a backup or restore is already running; try again when it ends";

    type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Control for Fake {
        type SendMessageStream =
            std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SendMessageResponse, Status>> + Send>>;
        type BackupStream = Stream<BackupChunk>;
        type RestoreStream = Stream<RestoreProgress>;
        type ReadLogsStream = Stream<LogLine>;

        async fn list_hooks(
            &self,
            _request: Request<blufio_proto::control::v1::ListHooksRequest>,
        ) -> Result<Response<blufio_proto::control::v1::ListHooksResponse>, Status> {
            Err(Status::unimplemented(
                "tried against the real daemon in blufiod/tests/hooks.rs",
            ))
        }

        async fn test_hook(
            &self,
            _request: Request<blufio_proto::control::v1::TestHookRequest>,
        ) -> Result<Response<blufio_proto::control::v1::TestHookResponse>, Status> {
            Err(Status::unimplemented(
                "tried against the real daemon in blufiod/tests/hooks.rs",
            ))
        }

        /// Three lines (info, warn, error) filtered and tailed as asked; following adds one
        /// debug line that missed four before it, then ends.
        async fn read_logs(&self, request: Request<ReadLogsRequest>) -> Result<Response<Self::ReadLogsStream>, Status> {
            let ReadLogsRequest {
                lines,
                min_level,
                follow,
            } = request.into_inner();
            let line = |seq: u64, level: LogLevel, text: &str, missed: u64| LogLine {
                seq,
                unix_ms: 1_796_072_779_123 + seq as i64,
                level: level.into(),
                text: text.to_owned(),
                missed,
            };
            let recent = [
                line(0, LogLevel::Info, "blufiod::daemon: ready", 0),
                line(1, LogLevel::Warn, "blufiod::vault: the key sits beside the data", 0),
                line(2, LogLevel::Error, "blufiod::agent: provider failed\u{1b}[2J", 0),
            ];
            let mut sent: Vec<LogLine> = recent.into_iter().filter(|line| line.level <= min_level).collect();
            sent.drain(..sent.len().saturating_sub(lines as usize));
            if follow {
                sent.push(line(7, LogLevel::Debug, "blufiod::control: followed", 4));
            }
            Ok(Response::new(Box::pin(tokio_stream::iter(sent.into_iter().map(Ok)))))
        }

        /// `started`, then [`archive`] in chunks of 256 KiB. With `include_tls` the stream breaks
        /// off with an error after the first chunk; with `include_tls` and `without_config` it
        /// hangs there instead.
        async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
            use tokio_stream::StreamExt as _;
            // A daemon that passes no descriptor: the client must take the stream.
            let BackupRequest {
                without_config,
                include_tls,
                descriptor: _,
                check_alongside: _,
            } = request.into_inner();
            let (manifest, bytes) = archive();
            let mut chunks = vec![Ok(BackupChunk {
                chunk: Some(backup_chunk::Chunk::Started(BackupStarted {
                    archive_bytes: bytes.len() as u64,
                    manifest_json: serde_json::to_string(&manifest).expect("serializes"),
                    ..BackupStarted::default()
                })),
            })];
            chunks.extend(bytes.chunks(CHUNK_BYTES).map(|data| {
                Ok(BackupChunk {
                    chunk: Some(backup_chunk::Chunk::Data(data.to_vec())),
                })
            }));
            if include_tls {
                chunks.truncate(2);
                if without_config {
                    return Ok(Response::new(Box::pin(
                        tokio_stream::iter(chunks).chain(tokio_stream::pending()),
                    )));
                }
                chunks.push(Err(Status::internal(BACKUP_BROKE)));
            }
            Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
        }

        /// Like the daemon: answers once `start` arrived, then receives the archive, refuses any
        /// bytes but [`archive`]'s (and `restore_config`, with [`BAD_CONFIG`]; with
        /// `without_secrets` too, with [`BUSY`] before receiving), and streams the phases and the
        /// result.
        async fn restore(
            &self,
            request: Request<tonic::Streaming<RestoreChunk>>,
        ) -> Result<Response<Self::RestoreStream>, Status> {
            let mut incoming = request.into_inner();
            let Some(RestoreChunk {
                chunk: Some(restore_chunk::Chunk::Start(start)),
            }) = incoming.message().await?
            else {
                return Err(Status::invalid_argument("a restore stream starts with `start`"));
            };
            let (sender, receiver) = tokio::sync::mpsc::channel(8);
            tokio::spawn(async move {
                let phase = |name: &str| {
                    Ok(RestoreProgress {
                        progress: Some(restore_progress::Progress::Phase(name.to_owned())),
                    })
                };
                let _ = sender.send(phase("receiving")).await;
                if start.without_secrets && start.restore_config {
                    // Refused while the archive is still on its way.
                    let _ = sender.send(Err(Status::unavailable(BUSY))).await;
                    return;
                }
                let mut received = Vec::new();
                loop {
                    match incoming.message().await {
                        Ok(Some(RestoreChunk {
                            chunk: Some(restore_chunk::Chunk::Data(data)),
                        })) if data.len() <= CHUNK_BYTES => received.extend(data),
                        Ok(Some(other)) => {
                            let refused =
                                Status::invalid_argument(format!("unexpected chunk {:?}", other.chunk.map(|_| ())));
                            let _ = sender.send(Err(refused)).await;
                            return;
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
                let (manifest, expected) = archive();
                if received != expected || start.archive_bytes != expected.len() as u64 {
                    let refused = Status::invalid_argument(format!(
                        "received {} bytes (announced {}) that are not the fake's archive",
                        received.len(),
                        start.archive_bytes
                    ));
                    let _ = sender.send(Err(refused)).await;
                    return;
                }
                let _ = sender.send(phase("verifying")).await;
                if start.restore_config {
                    let _ = sender.send(Err(Status::invalid_argument(BAD_CONFIG))).await;
                    return;
                }
                for name in ["waiting for turns", "swapping", "migrating"] {
                    let _ = sender.send(phase(name)).await;
                }
                let done = RestoreResponse {
                    manifest_json: serde_json::to_string(&manifest).expect("serializes"),
                    safety_copy: "/var/lib/blufio/blufio.db.before-restore".into(),
                    schema_version_from: 4,
                    schema_version_now: 5,
                    secrets_restored: !start.without_secrets,
                    config_restored: false,
                    tls_restored: false,
                    turns_finished: 1,
                };
                let _ = sender
                    .send(Ok(RestoreProgress {
                        progress: Some(restore_progress::Progress::Done(done)),
                    }))
                    .await;
            });
            Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
                receiver,
            ))))
        }

        /// accepted → two text deltas ("echo: ", then the message) → a tool that started and
        /// failed → completed; or an error, chosen by the session id.
        async fn send_message(
            &self,
            request: Request<SendMessageRequest>,
        ) -> Result<Response<Self::SendMessageStream>, Status> {
            let request = request.into_inner();
            let session_id = match request.session_id.as_str() {
                "" => "sess-new".to_owned(),
                OVER_BUDGET => {
                    return Err(Status::resource_exhausted(
                        "budget exhausted until 2026-11-29T00:00:00Z",
                    ));
                }
                NO_CREDENTIALS => {
                    return Err(Status::failed_precondition(
                        "no provider credentials: set BLUFIO_PROVIDER__API_KEY",
                    ));
                }
                "missing" => return Err(Status::not_found("unknown session `missing`")),
                other => other.to_owned(),
            };
            let mut events = vec![
                event(Event::Accepted(Accepted {
                    session_id: session_id.clone(),
                    message_id: "msg-in".into(),
                })),
                event(Event::TextDelta(TextDelta { text: "echo: ".into() })),
                event(Event::TextDelta(TextDelta { text: request.text })),
            ];
            match session_id.as_str() {
                NO_ANSWER => {}
                HANGS => {
                    use tokio_stream::StreamExt as _;
                    let events = tokio_stream::iter(events).chain(tokio_stream::pending());
                    return Ok(Response::new(Box::pin(events)));
                }
                FAILS_MIDWAY => events.push(Err(Status::unavailable("the provider failed: overloaded"))),
                _ => {
                    let tool = ToolActivity {
                        id: "call-1".into(),
                        name: "http_get".into(),
                        phase: "started".into(),
                        is_error: false,
                        summary: String::new(),
                    };
                    events.push(event(Event::Tool(tool.clone())));
                    events.push(event(Event::Tool(ToolActivity {
                        phase: "finished".into(),
                        is_error: true,
                        summary: "connection refused".into(),
                        ..tool
                    })));
                    events.push(event(Event::Completed(TurnCompleted {
                        message_id: "msg-out".into(),
                        usage: Some(TokenUsage {
                            input_tokens: 1200,
                            output_tokens: 80,
                            cache_creation_input_tokens: 10,
                            cache_read_input_tokens: 1024,
                        }),
                        cost_usd: 0.0123,
                        provider_calls: 2,
                        stop_reason: "end_turn".into(),
                        model: "fake-model".into(),
                    })));
                }
            }
            Ok(Response::new(Box::pin(tokio_stream::iter(events))))
        }

        async fn create_session(
            &self,
            request: Request<CreateSessionRequest>,
        ) -> Result<Response<CreateSessionResponse>, Status> {
            Ok(Response::new(CreateSessionResponse {
                session: Some(session("sess-new", &request.into_inner().title, 1_764_000_000)),
            }))
        }

        /// Two sessions; `limit` 1 returns the first with a cursor, so tests see the flag arrive.
        async fn list_sessions(
            &self,
            request: Request<ListSessionsRequest>,
        ) -> Result<Response<ListSessionsResponse>, Status> {
            let mut sessions = vec![
                session("s1", "Weather in Paris", 1_764_000_100),
                session("s2", "", 1_764_000_000),
            ];
            let mut next_cursor = String::new();
            if request.into_inner().limit == 1 {
                sessions.truncate(1);
                next_cursor = "cursor-1".into();
            }
            Ok(Response::new(ListSessionsResponse { sessions, next_cursor }))
        }

        async fn get_session(
            &self,
            request: Request<GetSessionRequest>,
        ) -> Result<Response<GetSessionResponse>, Status> {
            let request = request.into_inner();
            // The sessions whose turns the fake scripts exist too, empty (shell checks them).
            if [OVER_BUDGET, NO_CREDENTIALS, NO_ANSWER, FAILS_MIDWAY, HANGS].contains(&request.id.as_str()) {
                return Ok(Response::new(GetSessionResponse {
                    session: Some(session(&request.id, "scripted", 1_764_000_100)),
                    messages: vec![],
                    next_cursor: String::new(),
                }));
            }
            if request.id != "s1" {
                return Err(Status::not_found(format!("unknown session `{}`", request.id)));
            }
            let message = |id: &str, role: &str, text: &str| ChatMessage {
                id: id.into(),
                role: role.into(),
                text: text.into(),
                created_at: 1_764_000_000,
                ..ChatMessage::default()
            };
            Ok(Response::new(GetSessionResponse {
                session: Some(session("s1", "Weather in Paris", 1_764_000_100)),
                messages: vec![
                    message("m1", "user", "Weather in Paris?"),
                    ChatMessage {
                        tool_calls: vec![ToolCall {
                            id: "call-1".into(),
                            name: "http_get".into(),
                            input_json: r#"{"url": "https://wttr.in/Paris"}"#.into(),
                        }],
                        ..message("m2", "assistant", "Let me check.")
                    },
                    ChatMessage {
                        tool_call_id: "call-1".into(),
                        ..message("m3", "tool", "Sunny, 21 C")
                    },
                    message("m4", "assistant", "It is sunny."),
                ],
                next_cursor: String::new(),
            }))
        }

        async fn delete_session(
            &self,
            request: Request<DeleteSessionRequest>,
        ) -> Result<Response<DeleteSessionResponse>, Status> {
            let id = request.into_inner().id;
            if id != "s1" {
                return Err(Status::not_found(format!("unknown session `{id}`")));
            }
            Ok(Response::new(DeleteSessionResponse {}))
        }

        /// A canned exposition with a control character in a label value.
        async fn get_metrics(&self, _: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
            Ok(Response::new(GetMetricsResponse {
                text: "# HELP blufio_up Whether blufiod is up.\n# TYPE blufio_up gauge\nblufio_up{model=\"m\u{1b}]0;x\u{7}\"} 1\n"
                    .to_owned(),
            }))
        }

        /// Two quick checks, one of them a warning; `deep` adds a failing integrity check, and an
        /// unknown name in `only` is refused as the daemon refuses it.
        async fn run_checks(&self, request: Request<RunChecksRequest>) -> Result<Response<RunChecksResponse>, Status> {
            let RunChecksRequest { deep, only } = request.into_inner();
            let check = |name: &str, level: CheckLevel, detail: &str, hint: &str| CheckResult {
                name: name.to_owned(),
                level: level.into(),
                detail: detail.to_owned(),
                hint: hint.to_owned(),
                duration_seconds: 0.004,
                deep: name == "integrity",
            };
            let mut checks = vec![
                check("storage", CheckLevel::Ok, "the writer and a reader answer", ""),
                check(
                    "vault",
                    CheckLevel::Warn,
                    "the key sits beside the data",
                    "use a systemd credential",
                ),
            ];
            if deep {
                checks.push(check(
                    "integrity",
                    CheckLevel::Fail,
                    "the database is damaged",
                    "restore a backup",
                ));
            }
            if let Some(unknown) = only
                .iter()
                .find(|name| !checks.iter().any(|check| &check.name == *name))
            {
                return Err(Status::invalid_argument(format!(
                    "run the checks: there is no check named {unknown:?}; the checks are storage, vault, integrity"
                )));
            }
            if !only.is_empty() {
                checks.retain(|check| only.contains(&check.name));
            }
            Ok(Response::new(RunChecksResponse { checks }))
        }

        /// Canned usage; the first day's `calls` echo the requested days, so tests see the flag.
        async fn get_usage(&self, request: Request<GetUsageRequest>) -> Result<Response<GetUsageResponse>, Status> {
            let tokens = TokenUsage {
                input_tokens: 12_345,
                output_tokens: 678,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 2_000,
            };
            Ok(Response::new(GetUsageResponse {
                days: vec![
                    DayUsage {
                        day: "2026-11-27".into(),
                        cost_usd: 0.5,
                        usage: Some(tokens),
                        calls: u64::from(request.into_inner().days),
                    },
                    DayUsage {
                        day: "2026-11-28".into(),
                        cost_usd: 0.25,
                        usage: Some(tokens),
                        calls: 3,
                    },
                ],
                models: vec![ModelUsage {
                    provider: "anthropic".into(),
                    model: "fake-model".into(),
                    cost_usd: 0.75,
                    usage: Some(tokens),
                    calls: 10,
                }],
                sessions: vec![
                    SessionUsage {
                        session_id: "s1".into(),
                        title: "Weather in Paris".into(),
                        cost_usd: 0.7,
                        calls: 9,
                        deleted: false,
                    },
                    SessionUsage {
                        session_id: "s-gone".into(),
                        title: String::new(),
                        cost_usd: 0.05,
                        calls: 1,
                        deleted: true,
                    },
                ],
                cost: Some(CostStatus {
                    today_usd: 0.25,
                    month_usd: 3.5,
                    daily_cap_usd: 1.0,
                    monthly_cap_usd: 0.0,
                    reserved_usd: 0.02,
                }),
            }))
        }

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
                gateway: Some(GatewayStatus {
                    listen: "0.0.0.0:8443".into(),
                    scheme: "https".into(),
                    tls_fingerprint_sha256: GATEWAY_PIN.into(),
                    active_devices: 0,
                    problem: "no device is registered, so every /v1/ request is refused".into(),
                }),
                backup: Some(BackupStatus {
                    schedule: "every 24 h into /var/lib/blufio/backups, keeping 7".into(),
                    last_success_at: 1_764_000_000,
                    last_size_bytes: 3 * 1024 * 1024,
                    last_duration_seconds: 2.5,
                    last_error: String::new(),
                    last_error_at: 0,
                    restore_phase: String::new(),
                }),
                ..GetStatusResponse::default()
            }))
        }

        /// Registers nothing: answers with a device whose keyid and fingerprint are computed
        /// from the PEM received, so tests can check which key arrived. A private key (or
        /// anything else that is not a public key) is refused.
        async fn add_device(&self, request: Request<AddDeviceRequest>) -> Result<Response<AddDeviceResponse>, Status> {
            let request = request.into_inner();
            if request.name == TAKEN {
                return Err(Status::already_exists(format!("device `{TAKEN}` exists already")));
            }
            let key = httpsig::verifying_key_from_pem(&request.public_key_pem)
                .map_err(|error| Status::invalid_argument(format!("public_key_pem: {error}")))?;
            let fingerprint = httpsig::key_fingerprint(&key);
            Ok(Response::new(AddDeviceResponse {
                device: Some(Device {
                    name: request.name,
                    keyid: fingerprint.clone(),
                    fingerprint,
                    added_at: 1_764_000_000,
                    last_used_at: 0,
                    revoked_at: 0,
                }),
            }))
        }

        async fn list_devices(
            &self,
            _request: Request<ListDevicesRequest>,
        ) -> Result<Response<ListDevicesResponse>, Status> {
            Ok(Response::new(ListDevicesResponse {
                devices: vec![
                    device("laptop", 1_764_000_100, 0),
                    device("old-phone", 0, 1_764_000_200),
                ],
            }))
        }

        async fn revoke_device(
            &self,
            request: Request<RevokeDeviceRequest>,
        ) -> Result<Response<RevokeDeviceResponse>, Status> {
            let name = request.into_inner().name;
            if name != "laptop" {
                return Err(Status::not_found(format!("no active device `{name}`")));
            }
            Ok(Response::new(RevokeDeviceResponse {
                device: Some(device("laptop", 1_764_000_100, 1_764_000_300)),
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

        async fn unset_config(
            &self,
            _request: Request<blufio_proto::control::v1::UnsetConfigRequest>,
        ) -> Result<Response<SetConfigResponse>, Status> {
            Err(Status::unimplemented("not faked"))
        }

        async fn rename_session(
            &self,
            _request: Request<blufio_proto::control::v1::RenameSessionRequest>,
        ) -> Result<Response<blufio_proto::control::v1::RenameSessionResponse>, Status> {
            Err(Status::unimplemented("not faked"))
        }

        async fn rename_device(
            &self,
            _request: Request<blufio_proto::control::v1::RenameDeviceRequest>,
        ) -> Result<Response<blufio_proto::control::v1::RenameDeviceResponse>, Status> {
            Err(Status::unimplemented("not faked"))
        }

        async fn remove_device(
            &self,
            _request: Request<blufio_proto::control::v1::RemoveDeviceRequest>,
        ) -> Result<Response<blufio_proto::control::v1::RemoveDeviceResponse>, Status> {
            Err(Status::unimplemented("not faked"))
        }

        async fn prune_sessions(
            &self,
            _request: Request<blufio_proto::control::v1::PruneSessionsRequest>,
        ) -> Result<Response<blufio_proto::control::v1::PruneSessionsResponse>, Status> {
            Err(Status::unimplemented("not faked"))
        }

        async fn set_config(&self, request: Request<SetConfigRequest>) -> Result<Response<SetConfigResponse>, Status> {
            let request = request.into_inner();
            let overridden_by_env = match request.key.as_str() {
                "log.level" => "BLUFIO_LOG__LEVEL",
                "provider.api_key" => "",
                _ => {
                    return Err(Status::permission_denied(
                        "read-only access: config set needs write access",
                    ));
                }
            };
            Ok(Response::new(SetConfigResponse {
                config_path: "/etc/blufio/blufiod.toml".into(),
                entry: Some(entry(&request.key, &format!("\"{}\"", request.value), false)),
                applied_live: true,
                restart_required: vec![],
                overridden_by_env: overridden_by_env.into(),
            }))
        }

        async fn set_secret(&self, request: Request<SetSecretRequest>) -> Result<Response<SetSecretResponse>, Status> {
            let request = request.into_inner();
            if request.value != SECRET_VALUE {
                return Err(Status::invalid_argument(format!(
                    "unexpected value {:?}",
                    request.value
                )));
            }
            let named = request.name == NAMED;
            Ok(Response::new(SetSecretResponse {
                created: !named,
                referenced_by: if named { vec!["provider.api_key".into()] } else { vec![] },
            }))
        }

        async fn list_secrets(
            &self,
            _request: Request<ListSecretsRequest>,
        ) -> Result<Response<ListSecretsResponse>, Status> {
            Ok(Response::new(ListSecretsResponse {
                secrets: vec![
                    SecretInfo {
                        name: NAMED.into(),
                        created_at: 1_764_000_000,
                        updated_at: 1_764_000_100,
                        last_used_at: 1_764_000_200,
                        referenced_by: vec!["provider.api_key".into()],
                        preview: "…alue".into(),
                    },
                    SecretInfo {
                        name: "metrics".into(),
                        created_at: 1_764_000_000,
                        updated_at: 1_764_000_000,
                        last_used_at: 0,
                        referenced_by: vec![],
                        preview: String::new(),
                    },
                ],
            }))
        }

        async fn delete_secret(
            &self,
            request: Request<DeleteSecretRequest>,
        ) -> Result<Response<DeleteSecretResponse>, Status> {
            let DeleteSecretRequest { name, force } = request.into_inner();
            match name.as_str() {
                NAMED if !force => Err(Status::failed_precondition(format!(
                    "secret `{name}` is named by provider.api_key; give that key another secret (or unset it) first, \
                     or delete with --force; nothing was deleted"
                ))),
                NAMED => Ok(Response::new(DeleteSecretResponse {
                    referenced_by: vec!["provider.api_key".into()],
                })),
                "metrics" => Ok(Response::new(DeleteSecretResponse::default())),
                _ => Err(Status::not_found(format!("no secret named `{name}` in the vault"))),
            }
        }

        async fn get_vault_status(
            &self,
            _request: Request<GetVaultStatusRequest>,
        ) -> Result<Response<GetVaultStatusResponse>, Status> {
            Ok(Response::new(GetVaultStatusResponse {
                key_source: "generated".into(),
                key_source_detail: "generated key file /var/lib/blufio/vault.key".into(),
                key_beside_data: true,
                kdf: "hkdf-sha256".into(),
                cipher: "xchacha20-poly1305".into(),
                entries: 2,
                key_created_at: 1_764_000_000,
                pending: Some(PendingVaultKey {
                    key_source: "passphrase".into(),
                    created_at: 1_764_000_300,
                }),
                ..GetVaultStatusResponse::default()
            }))
        }

        /// Completes a generated key; a passphrase or key material is pending, when it is the
        /// expected one.
        async fn rekey_vault(
            &self,
            request: Request<RekeyVaultRequest>,
        ) -> Result<Response<RekeyVaultResponse>, Status> {
            use blufio_proto::control::v1::rekey_vault_request::NewKey;
            let pending = |kind: &str| RekeyVaultResponse {
                completed: false,
                pending_key_source: kind.into(),
                next_step: format!("supply the new {kind} and restart blufiod"),
            };
            let response = match request.into_inner().new_key {
                Some(NewKey::Generate(true)) => RekeyVaultResponse {
                    completed: true,
                    pending_key_source: String::new(),
                    next_step: "the new key is in place".into(),
                },
                Some(NewKey::Passphrase(passphrase)) if passphrase == PASSPHRASE => pending("passphrase"),
                Some(NewKey::Key(key)) if key == KEY_HEX.as_bytes() => pending("credential"),
                other => return Err(Status::invalid_argument(format!("unexpected new key {other:?}"))),
            };
            Ok(Response::new(response))
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

/// Runs `command` with `input` on its stdin (a pipe, not a terminal).
fn run_with_stdin(command: &mut Command, input: &str) -> Output {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

#[test]
fn set_secret_reads_the_value_from_stdin() {
    let daemon = fake::FakeDaemon::start();
    let value = fake::SECRET_VALUE;
    let output = run_with_stdin(
        against(&daemon).args(["config", "set-secret", "metrics", "--json"]),
        &format!("{value}\r\n"),
    );
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"name": "metrics", "created": true, "referenced_by": [], "config_set": null})
    );

    let output = run_with_stdin(
        against(&daemon).args(["config", "set-secret", fake::NAMED]),
        &format!("{value}\n"),
    );
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "replaced secret anthropic\nreferenced by: provider.api_key\n"
    );

    // --for also points the key at the secret, and both answers are printed.
    let output = run_with_stdin(
        against(&daemon).args(["config", "set-secret", "openai", "--for", "provider.api_key", "--json"]),
        value,
    );
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["created"], true);
    assert_eq!(json["config_set"]["entry"]["key"], "provider.api_key");
    assert_eq!(json["config_set"]["entry"]["value"], "secret:openai");
    let output = run_with_stdin(
        against(&daemon).args(["config", "set-secret", "openai", "--for", "provider.api_key"]),
        value,
    );
    assert_eq!(
        stdout(&output),
        "created secret openai\nset provider.api_key = \"secret:openai\" in /etc/blufio/blufiod.toml\napplied live\n"
    );

    // The secret is stored even when the key cannot be set; the error says both.
    let output = run_with_stdin(
        against(&daemon).args(["config", "set-secret", "openai", "--for", "control.socket"]),
        value,
    );
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).starts_with(
            "error: created secret `openai`, but cannot set control.socket: read-only access: config set needs write access\n"
        ),
        "stderr: {}",
        stderr(&output)
    );

    let output = run(against(&daemon).args(["config", "set-secret", "metrics"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "error: no value for secret `metrics` on stdin (it is read from there when stdin is not a terminal); \
         nothing was sent\n"
    );
}

#[test]
fn list_and_delete_secrets() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["config", "list-secrets", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"secrets": [
            {"name": "anthropic", "created_at": 1_764_000_000, "updated_at": 1_764_000_100,
             "last_used_at": 1_764_000_200, "referenced_by": ["provider.api_key"], "preview": "…alue"},
            {"name": "metrics", "created_at": 1_764_000_000, "updated_at": 1_764_000_000,
             "last_used_at": null, "referenced_by": [], "preview": null}
        ]})
    );
    let output = run(against(&daemon).args(["config", "list-secrets", "--plain"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with("NAME\tCREATED\tUPDATED\tLAST USED\tREFERENCED BY\tPREVIEW\nanthropic\t"),
        "{text}"
    );
    assert!(text.contains("\tprovider.api_key\t…alue\n"), "{text}");
    assert!(text.contains("\tnever\tnone\t\n"), "{text}");

    // A secret that a key names is kept, with the daemon's reason.
    let output = run(against(&daemon).args(["config", "delete-secret", fake::NAMED, "--json"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output),
        "error: secret `anthropic` is named by provider.api_key; give that key another secret (or unset it) \
         first, or delete with --force; nothing was deleted\n"
    );
    let output = run(against(&daemon).args(["config", "delete-secret", fake::NAMED, "--force"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "deleted secret anthropic\n");
    assert!(
        stderr(&output).starts_with("warning: `secret:anthropic` is still named by provider.api_key;"),
        "{}",
        stderr(&output)
    );
    let output = run(against(&daemon).args(["config", "delete-secret", "metrics", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json, serde_json::json!({"name": "metrics", "referenced_by": []}));
    assert!(output.stderr.is_empty(), "{}", stderr(&output));

    let output = run(against(&daemon).args(["config", "delete-secret", "nope"]));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: no secret named `nope` in the vault\nhint: 'blufioctl config list-secrets' shows the secrets\n"
    );
}

#[test]
fn vault_status_and_rekey() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["vault", "status", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"key_source": "generated",
                           "key_source_detail": "generated key file /var/lib/blufio/vault.key",
                           "key_beside_data": true, "kdf": "hkdf-sha256", "argon2": null,
                           "cipher": "xchacha20-poly1305", "entries": 2, "key_created_at": 1_764_000_000,
                           "pending": {"key_source": "passphrase", "created_at": 1_764_000_300}})
    );
    let output = run(against(&daemon).args(["vault", "status"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).starts_with("key source:     generated key file /var/lib/blufio/vault.key\n"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).starts_with("warning: the vault key sits in the state directory beside the data"),
        "{}",
        stderr(&output)
    );

    let output = run(against(&daemon).args(["vault", "rekey"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "vault rekey completed\nthe new key is in place\n");

    let output = run_with_stdin(
        against(&daemon).args(["vault", "rekey", "--new-passphrase", "--json"]),
        &format!("{}\n", fake::PASSPHRASE),
    );
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"completed": false, "pending_key_source": "passphrase",
                           "next_step": "supply the new passphrase and restart blufiod"})
    );

    // Key material loses its trailing whitespace, from a file or from stdin.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("vault-key");
    std::fs::write(&key, format!("{}\n", fake::KEY_HEX)).expect("write");
    let output = run(against(&daemon).args(["vault", "rekey", "--new-key"]).arg(&key));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "vault rekey pending: blufiod waits for the new credential\nsupply the new credential and restart blufiod\n"
    );
    let output = run_with_stdin(
        against(&daemon).args(["vault", "rekey", "--new-key", "-"]),
        &format!("{} \n", fake::KEY_HEX),
    );
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));

    let output = run(against(&daemon)
        .args(["vault", "rekey", "--new-key"])
        .arg(dir.path().join("absent")));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with(&format!(
            "error: cannot read the new key from {}: ",
            dir.path().join("absent").display()
        )),
        "{}",
        stderr(&output)
    );
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

#[test]
fn chat_streams_text_and_summarizes_on_stderr() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["chat", "hello", "world"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    // The deltas in order, and a final newline so the shell prompt starts on its own line.
    assert_eq!(stdout(&output), "echo: hello world\n");
    assert_eq!(
        stderr(&output),
        "[tool http_get started]\n\
         [tool http_get finished: error]\n\
         session sess-new · 1200/80 tokens (cache w/r 10/1024) · $0.0123 · fake-model\n"
    );

    let output = run(against(&daemon).args(["chat", "--session", "s7", "again"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("session s7 · "), "stderr: {}", stderr(&output));
}

#[test]
fn chat_reads_the_message_from_stdin() {
    let daemon = fake::FakeDaemon::start();
    let mut child = against(&daemon)
        .args(["chat", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"from\nstdin\n").expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["text"], "echo: from\nstdin");

    let output = run(against(&daemon).args(["chat", "-"]).stdin(std::process::Stdio::null()));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), "error: the message is empty\n");
}

#[test]
fn chat_json_is_one_document() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["chat", "--json", "hi"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(output.stderr.is_empty(), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one json document");
    assert_eq!(
        json,
        serde_json::json!({
            "session_id": "sess-new",
            "message_id": "msg-out",
            "user_message_id": "msg-in",
            "text": "echo: hi",
            "tools": [{"id": "call-1", "name": "http_get", "is_error": true, "summary": "connection refused"}],
            "usage": {"input_tokens": 1200, "output_tokens": 80, "cache_creation_input_tokens": 10,
                      "cache_read_input_tokens": 1024},
            "cost_usd": 0.0123,
            "stop_reason": "end_turn",
            "model": "fake-model",
            "provider_calls": 2
        })
    );
}

#[test]
fn chat_errors_exit_1_with_the_daemons_message() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["chat", "--session", fake::OVER_BUDGET, "hi"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output),
        "error: budget exhausted until 2026-11-29T00:00:00Z\n\
         hint: 'blufioctl usage' shows the spend against the caps\n"
    );

    let output = run(against(&daemon).args(["chat", "--json", "--session", fake::OVER_BUDGET, "hi"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty(), "no json document for a failed turn");

    let output = run(against(&daemon).args(["chat", "--session", fake::NO_CREDENTIALS, "hi"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "error: no provider credentials: set BLUFIO_PROVIDER__API_KEY\n"
    );

    let output = run(against(&daemon).args(["chat", "--session", "missing", "hi"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "error: unknown session `missing`\nhint: 'blufioctl sessions list' shows the sessions\n"
    );
}

#[test]
fn chat_that_ends_without_completed_fails() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["chat", "--session", fake::NO_ANSWER, "hi"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    // What streamed stays visible, on a line of its own.
    assert_eq!(stdout(&output), "echo: hi\n");
    assert_eq!(
        stderr(&output),
        "error: the turn ended without an answer\nhint: your message is stored in session no-answer; 'chat --session no-answer' continues it\n"
    );

    let output = run(against(&daemon).args(["chat", "--session", fake::FAILS_MIDWAY, "hi"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "echo: hi\n");
    assert_eq!(
        stderr(&output),
        "error: the provider failed: overloaded\nhint: your message is stored in session fails-midway; 'chat --session fails-midway' continues it\n"
    );
}

#[test]
fn chat_is_not_bound_by_the_call_timeout_but_needs_a_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("missing.sock");
    let output = run(blufioctl().args(["chat", "hi", "--socket"]).arg(&socket));
    assert_unreachable(&output, &socket);

    let output = run(blufioctl().args(["chat", "--help"]));
    assert!(stdout(&output).contains("no deadline"), "{}", stdout(&output));
}

#[test]
fn shell_reads_lines_and_runs_commands() {
    let daemon = fake::FakeDaemon::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = against(&daemon)
        .arg("shell")
        .env("XDG_STATE_HOME", state.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = "/session\nhello there\n/session\nsecond\n/new\n/session\n/bogus\n\n/quit\nnot sent\n";
    std::io::Write::write_all(&mut stdin, lines.as_bytes()).expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "no session yet; the next message starts one\n\
         echo: hello there\n\
         sess-new\n\
         echo: second\n\
         the next message starts a new session\n\
         no session yet; the next message starts one\n"
    );
    let stderr = stderr(&output);
    // The second message went to the session the first one created.
    assert_eq!(
        stderr.matches("session sess-new · 1200/80 tokens").count(),
        2,
        "stderr: {stderr}"
    );
    assert!(stderr.contains("error: unknown command /bogus"), "stderr: {stderr}");
    let history = std::fs::read_to_string(state.path().join("blufio/shell_history")).expect("history file");
    assert!(
        history.contains("hello there\n") && history.contains("/quit"),
        "{history}"
    );
    assert!(!history.contains("not sent"), "{history}");
}

#[test]
fn shell_keeps_going_after_a_failed_turn_and_exits_1_on_eof() {
    let daemon = fake::FakeDaemon::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = against(&daemon)
        .args(["shell", "--session", fake::OVER_BUDGET])
        .env("XDG_STATE_HOME", state.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"one\n/session\n").expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    // It kept going (the /session after the failure ran), and its status says a turn failed.
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}\n", fake::OVER_BUDGET));
    assert!(
        stderr(&output).contains("error: budget exhausted until 2026-11-29T00:00:00Z\n"),
        "stderr: {}",
        stderr(&output)
    );
}

#[test]
fn shell_ctrl_c_cancels_the_streaming_turn() {
    use std::io::{Read as _, Write as _};

    let daemon = fake::FakeDaemon::start();
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = against(&daemon)
        .args(["shell", "--session", fake::HANGS])
        .env("XDG_STATE_HOME", state.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut child_stdout = child.stdout.take().expect("stdout");
    let (chunks, received) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 256];
        while let Ok(n_read @ 1..) = child_stdout.read(&mut buffer) {
            if chunks.send(buffer[..n_read].to_vec()).is_err() {
                break;
            }
        }
    });
    stdin.write_all(b"hi\n").expect("write stdin");
    stdin.flush().expect("flush stdin");

    // Wait until the turn is streaming (its first text arrived), then press Ctrl-C.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("echo: hi") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let chunk = received.recv_timeout(left).expect("the turn should start streaming");
        seen.extend(chunk);
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");

    // The shell survives and keeps its session.
    stdin.write_all(b"/session\n").expect("write stdin");
    drop(stdin);
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    seen.extend(received.try_iter().flatten());
    let mut child_stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut child_stderr).expect("stderr");
    }
    assert_eq!(status.code(), Some(0), "stderr: {child_stderr}");
    assert_eq!(String::from_utf8_lossy(&seen), format!("echo: hi\n{}\n", fake::HANGS));
    assert!(child_stderr.contains("[cancelled]\n"), "stderr: {child_stderr}");
}

#[test]
fn sessions_list_show_delete_json() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["sessions", "list", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["next_cursor"], serde_json::Value::Null);
    assert_eq!(json["sessions"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        json["sessions"][0],
        serde_json::json!({"id": "s1", "title": "Weather in Paris", "created_at": 1_764_000_000,
                           "updated_at": 1_764_000_100, "model": "fake-model", "state": "idle",
                           "message_count": 4})
    );

    let output = run(against(&daemon).args(["sessions", "list", "--limit", "1", "--json"]));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["next_cursor"], "cursor-1");
    assert_eq!(json["sessions"].as_array().map(Vec::len), Some(1));

    let output = run(against(&daemon).args(["sessions", "show", "s1", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["session"]["id"], "s1");
    assert_eq!(json["messages"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        json["messages"][1]["tool_calls"],
        serde_json::json!([{"id": "call-1", "name": "http_get", "input": {"url": "https://wttr.in/Paris"}}])
    );
    assert_eq!(json["messages"][2]["tool_call_id"], "call-1");
    assert_eq!(json["messages"][0]["tool_call_id"], serde_json::Value::Null);

    let output = run(against(&daemon).args(["sessions", "delete", "s1", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json, serde_json::json!({"session_id": "s1", "deleted": true}));

    let output = run(against(&daemon).args(["sessions", "delete", "nope", "--json"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output),
        "error: unknown session `nope`\nhint: 'blufioctl sessions list' shows the sessions\n"
    );
}

#[test]
fn sessions_human_output() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["sessions", "list", "--plain"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("ID\tUPDATED\tSTATE\tMESSAGES\tTITLE\ns1\t"), "{text}");
    assert!(text.contains("\tidle\t4\tWeather in Paris\n"), "{text}");

    let output = run(against(&daemon).args(["sessions", "show", "s1"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("session s1\n"), "{text}");
    assert!(text.contains("\nyou: Weather in Paris?\n"), "{text}");
    assert!(
        text.contains("\nblufio: Let me check.\n  → http_get {\"url\":\"https://wttr.in/Paris\"}\n"),
        "{text}"
    );
    assert!(text.contains("\ntool http_get: Sunny, 21 C\n"), "{text}");
}

#[test]
fn metrics_prints_the_exposition_without_control_characters() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).arg("metrics"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "# HELP blufio_up Whether blufiod is up.\n# TYPE blufio_up gauge\nblufio_up{model=\"m^[]0;x^G\"} 1\n"
    );
}

#[test]
fn usage_json_and_tables() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["usage", "--days", "7", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["days"][0]["calls"], 7, "--days reaches the daemon");
    assert_eq!(
        json["days"][1],
        serde_json::json!({"day": "2026-11-28", "calls": 3, "cost_usd": 0.25,
                           "usage": {"input_tokens": 12345, "output_tokens": 678,
                                     "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2000}})
    );
    assert_eq!(json["models"][0]["model"], "fake-model");
    // A deleted session keeps its id, and says it is deleted.
    assert_eq!(json["sessions"][1]["session_id"], "s-gone");
    assert_eq!(json["sessions"][1]["deleted"], true);
    assert_eq!(
        json["cost"],
        serde_json::json!({"today_usd": 0.25, "month_usd": 3.5, "daily_cap_usd": 1.0, "monthly_cap_usd": 0.0,
                           "reserved_usd": 0.02})
    );

    let output = run(against(&daemon).arg("usage"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("today:       $0.25 of $1.00 (25%)\n"), "{text}");
    assert!(
        text.contains("\n2026-11-28  3      12.3k  678   0/2.0k     $0.2500\n"),
        "{text}"
    );
    assert!(text.contains("(deleted)"), "{text}");
}

#[test]
fn status_shows_the_gateway() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["status", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json["gateway"],
        serde_json::json!({"listen": "0.0.0.0:8443", "scheme": "https",
                           "tls_fingerprint_sha256": fake::GATEWAY_PIN, "active_devices": 0,
                           "problem": "no device is registered, so every /v1/ request is refused"})
    );

    let output = run(against(&daemon).args(["status", "--plain"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("\ngateway: https://0.0.0.0:8443, 0 active devices\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\n  pin sha256: {}\n", fake::GATEWAY_PIN)),
        "{text}"
    );
    assert_eq!(
        stderr(&output),
        "warning: gateway: no device is registered, so every /v1/ request is refused\n"
    );
}

#[test]
fn device_add_writes_a_private_key_and_registers_only_its_public_half() {
    use std::os::unix::fs::PermissionsExt as _;

    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("laptop.pem");
    let output = run(against(&daemon)
        .args(["device", "add", "laptop", "--json", "--key-out"])
        .arg(&key_file));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");

    let mode = std::fs::metadata(&key_file).expect("key file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let pem = std::fs::read_to_string(&key_file).expect("reads");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let key = blufio_proto::httpsig::signing_key_from_pkcs8_pem(&pem).expect("PKCS#8 PEM");
    // The fake answers with the fingerprint of the public key it received.
    let fingerprint = blufio_proto::httpsig::key_fingerprint(&key.verifying_key());
    let canonical = std::fs::canonicalize(&key_file).expect("canonical");
    assert_eq!(
        json,
        serde_json::json!({
            "device": {"name": "laptop", "keyid": fingerprint, "fingerprint": fingerprint,
                       "added_at": 1_764_000_000, "last_used_at": null, "revoked_at": null, "state": "active"},
            "key_file": canonical.display().to_string(),
        })
    );

    // Never overwrite, and say so before talking to the daemon.
    let output = run(against(&daemon)
        .args(["device", "add", "again", "--key-out"])
        .arg(&key_file));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).starts_with(&format!(
            "error: key file {} already exists; refusing to overwrite it\nhint: ",
            key_file.display()
        )),
        "stderr: {}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&key_file).expect("reads"), pem, "left alone");

    // A refused registration leaves no key file behind.
    let refused = dir.path().join("taken.pem");
    let output = run(against(&daemon)
        .args(["device", "add", fake::TAKEN, "--key-out"])
        .arg(&refused));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).starts_with("error: device `taken` exists already\n"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("hint: 'blufioctl device list'"),
        "{}",
        stderr(&output)
    );
    assert!(!refused.exists());

    // So does an unreachable daemon.
    let missing = dir.path().join("missing.sock");
    let output = run(blufioctl()
        .args(["device", "add", "x", "--socket"])
        .arg(&missing)
        .arg("--key-out")
        .arg(&refused));
    assert_eq!(output.status.code(), Some(3), "stderr: {}", stderr(&output));
    assert!(!refused.exists());
}

#[test]
fn device_add_human_output_names_the_next_step() {
    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("laptop.pem");
    let output = run(against(&daemon)
        .args(["device", "add", "laptop", "--plain", "--key-out"])
        .arg(&key_file));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    let canonical = std::fs::canonicalize(&key_file).expect("canonical");
    assert!(text.starts_with("added device laptop\nkeyid: SHA256:"), "{text}");
    assert!(text.contains("\nfingerprint: SHA256:"), "{text}");
    assert!(
        text.ends_with(&format!(
            "  blufioctl remote --url https://HOST:8443 --key {} --pin {} sessions list\n",
            canonical.display(),
            fake::GATEWAY_PIN
        )),
        "{text}"
    );
}

#[test]
fn device_add_registers_an_existing_public_key() {
    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let public = dir.path().join("phone.pub");
    std::fs::write(
        &public,
        blufio_proto::httpsig::verifying_key_to_pem(&key.verifying_key()).expect("pem"),
    )
    .expect("writes");
    let output = run(against(&daemon)
        .args(["device", "add", "phone", "--json", "--public-key"])
        .arg(&public));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json["device"]["fingerprint"],
        blufio_proto::httpsig::key_fingerprint(&key.verifying_key())
    );
    assert_eq!(json["key_file"], serde_json::Value::Null);

    // A private key is not sent, not even by mistake.
    let private = dir.path().join("phone.pem");
    std::fs::write(
        &private,
        blufio_proto::httpsig::signing_key_to_pkcs8_pem(&key)
            .expect("pem")
            .as_bytes(),
    )
    .expect("writes");
    let output = run(against(&daemon)
        .args(["device", "add", "phone", "--public-key"])
        .arg(&private));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("holds a private key"), "{}", stderr(&output));

    let output = run(against(&daemon).args(["device", "add", "phone"]));
    assert_eq!(output.status.code(), Some(2), "a key source is required");
}

#[test]
fn device_list_and_revoke() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["device", "list", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"devices": [
            {"name": "laptop", "keyid": "SHA256:laptop", "fingerprint": "SHA256:laptop", "added_at": 1_764_000_000,
             "last_used_at": 1_764_000_100, "revoked_at": null, "state": "active"},
            {"name": "old-phone", "keyid": "SHA256:old-phone", "fingerprint": "SHA256:old-phone",
             "added_at": 1_764_000_000, "last_used_at": null, "revoked_at": 1_764_000_200, "state": "revoked"}
        ]})
    );

    let output = run(against(&daemon).args(["device", "list", "--plain"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with("NAME\tKEYID\tADDED\tLAST USED\tSTATE\nlaptop\tSHA256:laptop\t"),
        "{text}"
    );
    assert!(text.contains("\tnever\trevoked\n"), "{text}");

    let output = run(against(&daemon).args(["device", "revoke", "laptop", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["device"]["state"], "revoked");
    assert_eq!(json["device"]["revoked_at"], 1_764_000_300);

    let output = run(against(&daemon).args(["device", "revoke", "laptop"]));
    assert!(
        stdout(&output).starts_with("revoked device laptop (keyid SHA256:laptop)"),
        "{}",
        stdout(&output)
    );

    let output = run(against(&daemon).args(["device", "revoke", "nope", "--json"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output),
        "error: no active device `nope`\nhint: 'blufioctl device list' shows the registered devices\n"
    );
}

/// docs/cli-json.md is the `# JSON output` section of output.rs, so the two cannot drift.
/// A stand-in for blufiod's gateway over plain HTTP (which `remote` accepts for a loopback
/// gateway behind a proxy): a thread that answers canned responses, after checking each request's
/// signature with the shared verifier and the one registered key. It tests the client's signing,
/// problem documents and event stream, not the daemon's behaviour (blufiod/tests has those).
mod fake_gateway {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use blufio_proto::httpsig;
    use ed25519_dalek::VerifyingKey;
    use http::header::{HeaderMap, HeaderName, HeaderValue};

    pub struct FakeGateway {
        pub url: String,
        /// Every request as "METHOD /path body", in order.
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    impl FakeGateway {
        pub fn start(key: VerifyingKey) -> FakeGateway {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("address"));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&requests);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let seen = Arc::clone(&seen);
                    std::thread::spawn(move || serve(stream, key, &seen));
                }
            });
            FakeGateway { url, requests }
        }
    }

    fn serve(stream: TcpStream, key: VerifyingKey, seen: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = HeaderMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || line.trim_end().is_empty() {
                break;
            }
            if let Some((name, value)) = line.trim_end().split_once(':')
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.trim().as_bytes()),
                    HeaderValue::from_str(value.trim()),
                )
            {
                headers.append(name, value);
            }
        }
        let length = headers
            .get("content-length")
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock()
            .expect("lock")
            .push(format!("{method} {target} {}", String::from_utf8_lossy(&body)));
        let response = match check_signature(&method, &target, &headers, &body, &key) {
            Err(detail) => problem(401, "signature-invalid", &detail),
            Ok(()) => respond(&method, &target, &body),
        };
        let mut stream = stream;
        let _ = stream.write_all(response.as_bytes());
    }

    fn check_signature(
        method: &str,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
        key: &VerifyingKey,
    ) -> Result<(), String> {
        let input = headers.get("signature-input").ok_or("no signature-input")?;
        let signature = headers.get("signature").ok_or("no signature")?;
        let parsed = httpsig::parse(input, signature).map_err(|error| error.to_string())?;
        let signature = parsed.first().ok_or("no signature")?;
        if signature.params().keyid.as_deref() != Some(httpsig::key_fingerprint(key).as_str()) {
            return Err("unknown keyid".into());
        }
        if !body.is_empty() {
            let digest = headers.get("content-digest").ok_or("no content-digest")?;
            httpsig::digest::verify_content_digest(digest, body).map_err(|error| error.to_string())?;
        }
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let authority = headers.get("host").and_then(|value| value.to_str().ok()).unwrap_or("");
        let parts = httpsig::RequestParts {
            method,
            scheme: "http",
            authority,
            path,
            query,
            headers,
        };
        httpsig::verify(&parts, signature, key).map_err(|error| error.to_string())
    }

    fn respond(method: &str, target: &str, body: &[u8]) -> String {
        let session = |id: &str, title: &str| {
            serde_json::json!({"id": id, "title": title, "created_at": 1_764_000_000, "updated_at": 1_764_000_100,
                               "model": "fake-model", "state": "idle", "message_count": 2})
        };
        match (method, target) {
            ("GET", "/v1/sessions") => json(
                200,
                &serde_json::json!({"sessions": [session("r1", "Remote one")], "next_cursor": null}),
            ),
            ("POST", "/v1/sessions") => {
                let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                let title = request["title"].as_str().unwrap_or("new session").to_owned();
                json(201, &session("r-new", &title))
            }
            ("GET", "/v1/sessions/r1") => json(
                200,
                &serde_json::json!({"session": session("r1", "Remote one"), "messages": [
                    {"id": "m1", "role": "user", "created_at": 1_764_000_000, "text": "Hi?"},
                    {"id": "m2", "role": "assistant", "created_at": 1_764_000_001, "text": "Hello."}
                ]}),
            ),
            ("DELETE", "/v1/sessions/r1" | "/v1/sessions/r-new") => {
                "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
            }
            ("POST", "/v1/sessions/over-budget/messages") => {
                problem(402, "budget-exhausted", "the daily budget of $1.00 is spent")
            }
            // A gateway that takes the message and never starts the stream.
            ("POST", "/v1/sessions/silent/messages") => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                problem(500, "late", "too late")
            }
            ("POST", "/v1/sessions/fails/messages") => sse(&[
                (
                    "accepted",
                    serde_json::json!({"session_id": "fails", "message_id": "in"}),
                ),
                ("text_delta", serde_json::json!({"text": "partial"})),
                (
                    "error",
                    serde_json::json!({"status": 502, "type": "provider-failed", "detail": "the provider failed"}),
                ),
            ]),
            ("POST", path) if path.starts_with("/v1/sessions/") && path.ends_with("/messages") => {
                let id = path.trim_start_matches("/v1/sessions/").trim_end_matches("/messages");
                let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                let text = request["text"].as_str().unwrap_or("").to_owned();
                sse(&[
                    (
                        "accepted",
                        serde_json::json!({"session_id": id, "message_id": "msg-in"}),
                    ),
                    ("text_delta", serde_json::json!({"text": "echo: "})),
                    ("text_delta", serde_json::json!({"text": text})),
                    (
                        "tool",
                        serde_json::json!({"id": "c1", "name": "http_get", "phase": "started", "is_error": false,
                                           "summary": null}),
                    ),
                    (
                        "completed",
                        serde_json::json!({"message_id": "msg-out", "usage": {"input_tokens": 12,
                            "output_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4},
                            "cost_usd": 0.001, "provider_calls": 1, "stop_reason": "end_turn",
                            "model": "fake-model"}),
                    ),
                ])
            }
            (_, path) => problem(404, "session-not-found", &format!("no session at {path}")),
        }
    }

    fn json(status: u16, value: &serde_json::Value) -> String {
        let body = value.to_string();
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn problem(status: u16, kind: &str, detail: &str) -> String {
        let body = serde_json::json!({"type": format!("https://blufio.invalid/problems/{kind}"), "title": "Refused",
                                      "status": status, "detail": detail})
        .to_string();
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn sse(events: &[(&str, serde_json::Value)]) -> String {
        let mut out = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_owned();
        for (name, data) in events {
            out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        }
        out
    }
}

/// A key file for `remote --key`, and the gateway that knows its public half.
fn remote_setup() -> (tempfile::TempDir, std::path::PathBuf, fake_gateway::FakeGateway) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let path = dir.path().join("device.pem");
    std::fs::write(
        &path,
        blufio_proto::httpsig::signing_key_to_pkcs8_pem(&key)
            .expect("pem")
            .as_bytes(),
    )
    .expect("writes");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let gateway = fake_gateway::FakeGateway::start(key.verifying_key());
    (dir, path, gateway)
}

fn remote_against(gateway: &fake_gateway::FakeGateway, key: &Path) -> Command {
    let mut command = blufioctl();
    command.args(["remote", "--url", &gateway.url, "--key"]).arg(key);
    command
}

#[test]
fn remote_chat_creates_a_session_and_streams_signed() {
    let (_dir, key, gateway) = remote_setup();
    let output = run(remote_against(&gateway, &key).args(["chat", "hello", "there"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "echo: hello there\n");
    let errors = stderr(&output);
    assert!(errors.contains("[tool http_get started]\n"), "{errors}");
    assert!(
        errors.contains("session r-new · 12/3 tokens (cache w/r 0/4) · $0.0010 · fake-model\n"),
        "{errors}"
    );
    let requests = gateway.requests.lock().expect("lock").clone();
    assert_eq!(
        requests,
        [
            r#"POST /v1/sessions {"title":"hello there"}"#,
            r#"POST /v1/sessions/r-new/messages {"text":"hello there"}"#
        ]
    );

    let output = run(remote_against(&gateway, &key).args(["chat", "--session", "r1", "--json", "again"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"session_id": "r1", "message_id": "msg-out", "user_message_id": "msg-in",
                           "text": "echo: again",
                           "tools": [{"id": "c1", "name": "http_get", "is_error": false, "summary": null}],
                           "usage": {"input_tokens": 12, "output_tokens": 3, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 4},
                           "cost_usd": 0.001, "stop_reason": "end_turn", "model": "fake-model",
                           "provider_calls": 1})
    );
}

#[test]
fn remote_over_plain_http_needs_no_certificate_authorities() {
    let (dir, key, gateway) = remote_setup();
    // A host without a CA bundle: the platform verifier would find no certificate to trust.
    let empty = dir.path().join("no-authorities.pem");
    std::fs::write(&empty, "").expect("writes");
    let output = run(remote_against(&gateway, &key)
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", dir.path().join("absent"))
        .args(["sessions", "list"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
}

#[test]
fn a_remote_turn_whose_stream_never_starts_times_out() {
    let (_dir, key, gateway) = remote_setup();
    let started = std::time::Instant::now();
    let output = run(remote_against(&gateway, &key).args(["--timeout", "1", "chat", "--session", "silent", "hi"]));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("did not answer within 1s"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn remote_chat_failures_exit_1_with_the_detail() {
    let (_dir, key, gateway) = remote_setup();
    let output = run(remote_against(&gateway, &key).args(["chat", "--session", "over-budget", "hi"]));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: the daily budget of $1.00 is spent\n\
         hint: 'blufioctl usage' on the daemon's host shows the spend against the caps\n"
    );

    let output = run(remote_against(&gateway, &key).args(["chat", "--session", "fails", "--json", "hi"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no document for a failed turn");
    assert_eq!(
        stderr(&output),
        "error: the provider failed\nhint: your message is stored in session fails; 'chat --session fails' continues it\n"
    );
}

#[test]
fn remote_sessions_list_show_delete() {
    let (_dir, key, gateway) = remote_setup();
    let output = run(remote_against(&gateway, &key).args(["sessions", "list", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"sessions": [{"id": "r1", "title": "Remote one", "created_at": 1_764_000_000,
                                         "updated_at": 1_764_000_100, "model": "fake-model", "state": "idle",
                                         "message_count": 2}],
                           "next_cursor": null})
    );

    let output = run(remote_against(&gateway, &key).args(["sessions", "show", "r1"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("session r1\n"), "{text}");
    assert!(text.contains("\nyou: Hi?\n\nblufio: Hello.\n"), "{text}");

    let output = run(remote_against(&gateway, &key).args(["sessions", "delete", "r1", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json, serde_json::json!({"session_id": "r1", "deleted": true}));

    let output = run(remote_against(&gateway, &key).args(["sessions", "show", "nope"]));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: no session at /v1/sessions/nope\nhint: 'blufioctl remote ... sessions list' shows the sessions\n"
    );
    let requests = gateway.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 4, "{requests:?}");
}

#[test]
fn remote_with_an_unregistered_key_is_refused() {
    let (dir, _key, gateway) = remote_setup();
    let other = dir.path().join("other.pem");
    let key = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
    std::fs::write(
        &other,
        blufio_proto::httpsig::signing_key_to_pkcs8_pem(&key)
            .expect("pem")
            .as_bytes(),
    )
    .expect("writes");
    let output = run(remote_against(&gateway, &other).args(["sessions", "list"]));
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    assert!(errors.contains("error: unknown keyid\n"), "{errors}");
    assert!(
        errors.starts_with("warning: key file"),
        "a key file others may read is warned about: {errors}"
    );
}

#[test]
fn remote_unreachable_exits_3_and_names_the_url() {
    let (dir, key, _gateway) = remote_setup();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let output = run(blufioctl()
        .args(["remote", "--url", &url, "--key"])
        .arg(&key)
        .args(["sessions", "list", "--json"]));
    assert_eq!(output.status.code(), Some(3), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty());
    let errors = stderr(&output);
    assert!(
        errors.starts_with(&format!("error: cannot reach the gateway at {url}: ")),
        "{errors}"
    );
    assert!(errors.contains(&format!("hint: check --url {url}")), "{errors}");

    let output = run(blufioctl()
        .args(["remote", "--url", &url, "--key"])
        .arg(dir.path().join("absent.pem"))
        .args(["sessions", "list"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("error: cannot read key file "),
        "{}",
        stderr(&output)
    );

    let output = run(blufioctl().args(["remote", "--url", &url, "--key"]).arg(&key).args([
        "--pin",
        "not-a-pin",
        "sessions",
        "list",
    ]));
    assert_eq!(output.status.code(), Some(2), "a malformed pin is a usage error");
}

#[test]
fn remote_reads_its_variables_under_both_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("missing-key.pem");
    for (url, key_name) in [
        ("BLUFIOCTL_REMOTE_URL", "BLUFIOCTL_REMOTE_KEY"),
        ("BLUFIO_REMOTE_URL", "BLUFIO_REMOTE_KEY"),
    ] {
        let output = run(blufioctl()
            .args(["remote", "sessions", "list"])
            .env(url, "https://127.0.0.1:9")
            .env(key_name, &key));
        let stderr = stderr(&output);
        // Both were taken from the environment: the key file is what is missing, not an argument.
        assert!(!stderr.contains("required"), "{url}: {stderr}");
        assert!(stderr.contains("missing-key.pem"), "{url}: {stderr}");
        assert_eq!(
            stderr.contains(&format!("{url} is deprecated")),
            url.starts_with("BLUFIO_"),
            "{url}: {stderr}"
        );
    }
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> std::process::Stdio {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    std::process::Stdio::from(write)
}

#[test]
fn a_closed_stdout_or_stderr_is_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Output to stdout: completions are long enough to need several writes.
    let output = blufioctl()
        .args(["completions", "bash"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .output()
        .expect("run blufioctl");
    assert_eq!(output.status.code(), Some(0));
    // An error and its hint go to stderr; the exit code still says what happened.
    let output = blufioctl()
        .args(["status", "--socket"])
        .arg(dir.path().join("missing.sock"))
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .output()
        .expect("run blufioctl");
    assert_eq!(output.status.code(), Some(3));
}

#[test]
fn singular_and_plural_command_names_are_both_taken() {
    for args in [&["session", "list", "--help"][..], &["devices", "list", "--help"]] {
        let output = run(blufioctl().args(args));
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", stderr(&output));
    }
}

/// The `blufioctl ...` lines of the README's `sh` blocks, split into words the way a shell
/// would for these simple lines (single and double quotes, a trailing `# comment`).
fn readme_commands() -> Vec<Vec<String>> {
    let readme = include_str!("../../README.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        if let Some(info) = line.strip_prefix("```") {
            in_sh = !in_sh && info.trim() == "sh";
            continue;
        }
        if !in_sh || !line.starts_with("blufioctl ") {
            continue;
        }
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quote = None;
        let mut pending = false;
        for c in line.chars() {
            match (quote, c) {
                (None, '#') if !pending => break,
                (None, '\'' | '"') => {
                    quote = Some(c);
                    pending = true;
                }
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if pending {
                        words.push(std::mem::take(&mut word));
                        pending = false;
                    }
                }
                (_, c) => {
                    word.push(c);
                    pending = true;
                }
            }
        }
        if pending {
            words.push(word);
        }
        // Placeholders stand for what the reader fills in.
        for word in &mut words {
            if word == "<fingerprint>" {
                *word = "ab".repeat(32);
            } else if word.starts_with('<') && word.ends_with('>') {
                *word = "placeholder".to_owned();
            }
        }
        commands.push(words.into_iter().skip(1).collect());
    }
    commands
}

#[test]
fn every_command_in_the_readme_parses() {
    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "the README's examples were not found: {commands:?}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for args in commands {
        // No daemon and no gateway listen here: a command that parses ends as unreachable (3),
        // or succeeds; a usage error is 2.
        let output = run(blufioctl()
            .current_dir(dir.path())
            .args(&args)
            .arg("--socket")
            .arg(dir.path().join("none.sock"))
            .stdin(std::process::Stdio::null()));
        assert_ne!(
            output.status.code(),
            Some(2),
            "README example {args:?}: {}",
            stderr(&output)
        );
        assert!(output.status.code().is_some(), "README example {args:?} crashed");
    }
}

#[test]
fn a_fallback_socket_directory_owned_by_another_user_is_refused() {
    use std::os::unix::process::CommandExt as _;
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test switches users"
        );
        return;
    }
    // uid 65534 has no XDG_RUNTIME_DIR here, so its socket falls back to /tmp/blufio-65534, which
    // another user (uid 4242) got to first and listens in.
    let victim = 65534;
    let squatted = std::path::PathBuf::from(format!("/tmp/blufio-{victim}"));
    let _ = std::fs::remove_dir_all(&squatted);
    std::fs::create_dir(&squatted).expect("create the squatted directory");
    let listener = std::os::unix::net::UnixListener::bind(squatted.join("blufiod.sock")).expect("bind");
    std::fs::set_permissions(
        squatted.join("blufiod.sock"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("open the socket to everybody");
    nix::unistd::chown(&squatted, Some(nix::unistd::Uid::from_raw(4242)), None).expect("chown");
    std::fs::set_permissions(&squatted, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let output = blufioctl()
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .arg("status")
        .uid(victim)
        .gid(victim)
        .output()
        .expect("run blufioctl as the victim");
    drop(listener);
    let _ = std::fs::remove_dir_all(&squatted);
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing /tmp/blufio-65534"), "{stderr}");
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn backup_writes_exactly_the_streamed_archive_and_it_verifies() {
    use std::os::unix::fs::PermissionsExt as _;

    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.tar");
    let output = run(against(&daemon).args(["backup", "--json"]).arg(&path));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let (manifest, bytes) = fake::archive();
    assert_eq!(std::fs::read(&path).expect("the archive"), bytes);
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert_eq!(entries(dir.path()), ["b.tar"], "no temporary file is left");

    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let canonical = std::fs::canonicalize(&path).expect("canonical");
    assert_eq!(json["path"], canonical.display().to_string());
    assert_eq!(json["bytes"], bytes.len());
    assert_eq!(json["created_at"], 1_764_000_000);
    assert_eq!(json["blufio_version"], "9.9.9");
    assert_eq!(json["schema_version"], 4);
    assert_eq!(json["hostname"], "fakehost");
    assert_eq!(
        json["members"],
        serde_json::json!([
            {"name": "blufio.db", "bytes": 600_000, "sha256": manifest.members[0].sha256},
            {"name": "blufiod.toml", "bytes": manifest.members[1].bytes, "sha256": manifest.members[1].sha256}
        ])
    );
    assert_eq!(
        json["vault"],
        serde_json::json!({"sealed_with": "generated", "entries": 2})
    );
    assert!(json["duration_seconds"].as_f64().is_some(), "{json}");

    let output = run(blufioctl().args(["backup", "--verify"]).arg(&path));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).starts_with(&format!(
            "{}: verified, every member matches its manifest\n",
            path.display()
        )),
        "{}",
        stdout(&output)
    );
    let output = run(blufioctl().args(["backup", "--verify", "--json"]).arg(&path));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["verified"], true);
    assert_eq!(json["bytes"], bytes.len());
    assert_eq!(json["members"][0]["sha256"], manifest.members[0].sha256);

    // Without PATH: the default name, in the current directory or in a directory PATH names.
    let output = run(against(&daemon).arg("backup").current_dir(dir.path()));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let output = run(against(&daemon).arg("backup").arg(&sub));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    for (dir, others) in [(dir.path(), 2), (sub.as_path(), 0)] {
        let names = entries(dir);
        assert_eq!(names.len(), others + 1, "{names:?}");
        let name = names
            .iter()
            .find(|name| name.starts_with("blufio-backup-"))
            .expect("a default name");
        // blufio-backup-YYYYMMDDTHHMMSSZ.tar
        assert_eq!(name.len(), "blufio-backup-20261128T080000Z.tar".len(), "{name}");
        assert!(name.ends_with("Z.tar") && name.as_bytes()[22] == b'T', "{name}");
        assert_eq!(std::fs::read(dir.join(name)).expect("reads"), bytes);
    }
    let text = stdout(&output);
    assert!(text.starts_with("wrote /"), "{text}");
    assert!(text.contains("\nmembers:\n  blufio.db:"), "{text}");
}

#[test]
fn a_backup_that_breaks_off_leaves_nothing_behind() {
    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.tar");
    let output = run(against(&daemon).args(["backup", "--include-tls"]).arg(&path));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), format!("error: {}\n", fake::BACKUP_BROKE));
    assert!(output.stdout.is_empty());
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));

    // Nor does a daemon that is not there (exit 3), or a backup to stdout that breaks off.
    let output = run(blufioctl()
        .args(["backup", "--json", "--socket"])
        .arg(dir.path().join("missing.sock"))
        .arg(&path));
    assert_unreachable(&output, &dir.path().join("missing.sock"));
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    let output = run(against(&daemon).args(["backup", "-", "--include-tls"]));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains(fake::BACKUP_BROKE), "{}", stderr(&output));
}

#[test]
fn ctrl_c_stops_a_backup_and_removes_its_temporary_file() {
    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.tar");
    // The fake sends a chunk, then hangs.
    let child = against(&daemon)
        .args(["backup", "--include-tls", "--without-config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while entries(dir.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(entries(dir.path())[0].starts_with(".blufio-backup-"));
    // Let it receive the first chunk and wait for more.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(130), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!("error: interrupted: no backup was written to {}\n", path.display())
    );
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn backup_refuses_to_overwrite_without_force() {
    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.tar");
    std::fs::write(&path, "an older archive").expect("write");
    let output = run(against(&daemon).arg("backup").arg(&path));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!(
            "error: {} already exists; refusing to overwrite it\nhint: pass --force to replace it once the new \
             archive is verified, or choose another PATH\n",
            path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).expect("reads"), "an older archive");
    assert_eq!(entries(dir.path()), ["b.tar"]);

    let output = run(against(&daemon).args(["backup", "--force"]).arg(&path));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(std::fs::read(&path).expect("reads"), fake::archive().1);
    assert_eq!(entries(dir.path()), ["b.tar"]);
}

#[test]
fn backup_to_stdout_writes_the_archive_there() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["backup", "-"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(output.stdout == fake::archive().1, "stdout holds exactly the archive");
    assert!(
        stderr(&output).starts_with("wrote the backup to stdout\n"),
        "{}",
        stderr(&output)
    );

    // Both would want stdout.
    let output = run(against(&daemon).args(["backup", "-", "--json"]));
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty());
    assert!(stderr(&output).contains("--json"), "{}", stderr(&output));

    // And `--verify -` reads stdin.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.tar");
    std::fs::write(&path, fake::archive().1).expect("write");
    let output = run(blufioctl()
        .args(["backup", "--verify", "-", "--json"])
        .stdin(std::fs::File::open(&path).expect("open")));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["path"], serde_json::Value::Null);
    assert_eq!(json["verified"], true);
}

#[test]
fn verify_names_what_is_wrong_with_an_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, bytes) = fake::archive();
    let check = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let output = run(blufioctl().args(["backup", "--verify", "--json"]).arg(&path));
        assert_eq!(output.status.code(), Some(1), "{name}: {}", stderr(&output));
        assert!(output.stdout.is_empty(), "{name}");
        let stderr = stderr(&output);
        assert!(
            stderr.starts_with(&format!("error: {} failed verification: ", path.display())),
            "{name}: {stderr}"
        );
        stderr
    };
    let truncated = check("truncated.tar", &bytes[..bytes.len() / 2]);
    assert!(truncated.contains("the archive is truncated"), "{truncated}");
    let mut flipped = bytes.clone();
    flipped[5000] ^= 0x10;
    let flipped = check("flipped.tar", &flipped);
    assert!(
        flipped.contains("member blufio.db does not match the manifest (its SHA-256 differs): the archive is damaged"),
        "{flipped}"
    );
    let stranger = check("notes.txt", b"just some notes, not a tar file at all");
    assert!(
        stranger.contains("not a blufio backup") || stranger.contains("truncated"),
        "{stranger}"
    );
    let output = run(blufioctl()
        .args(["backup", "--verify"])
        .arg(dir.path().join("absent.tar")));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with(&format!(
            "error: cannot open {}: ",
            dir.path().join("absent.tar").display()
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn restore_streams_the_whole_file_and_reports_each_phase() {
    let daemon = fake::FakeDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.tar");
    std::fs::write(&path, fake::archive().1).expect("write");
    // The fake refuses any bytes but the archive's, so success means all of them arrived.
    let output = run(against(&daemon).arg("restore").arg(&path));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "restore: receiving\nrestore: verifying\nrestore: waiting for turns\nrestore: swapping\nrestore: migrating\n"
    );
    let canonical = std::fs::canonicalize(&path).expect("canonical");
    assert_eq!(
        stdout(&output),
        format!(
            "restored {}: the backup of fakehost from 2025-11-24 16:00 UTC (blufiod 9.9.9)\n\
             schema:       4, migrated to 5\n\
             secrets:      restored\n\
             config:       not restored\n\
             tls:          not restored\n\
             waited for:   1 running turn to finish\n\
             safety copy:  /var/lib/blufio/blufio.db.before-restore (the database it replaced)\n",
            canonical.display()
        )
    );

    let output = run(against(&daemon)
        .args(["restore", "--without-secrets", "--json"])
        .arg(&path));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "path": canonical.display().to_string(),
            "archive": {"created_at": 1_764_000_000, "hostname": "fakehost", "blufio_version": "9.9.9",
                        "schema_version": 4},
            "safety_copy": "/var/lib/blufio/blufio.db.before-restore",
            "schema_version_from": 4, "schema_version_now": 5, "secrets_restored": false,
            "config_restored": false, "tls_restored": false, "turns_finished": 1
        })
    );
    let output = run(against(&daemon).args(["restore", "--without-secrets"]).arg(&path));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).ends_with(
            "restore: migrating\nwarning: the archive's secrets were not restored: store each one again with \
             'blufioctl config set-secret NAME'\n"
        ),
        "{}",
        stderr(&output)
    );

    // The daemon's refusal, with its message.
    let output = run(against(&daemon).args(["restore", "--restore-config"]).arg(&path));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).ends_with(&format!("restore: verifying\nerror: {}\n", fake::BAD_CONFIG)),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());

    // Refused while the archive is still being sent: the daemon's status, not a short send.
    let output = run(against(&daemon)
        .args(["restore", "--without-secrets", "--restore-config"])
        .arg(&path));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!(
            "restore: receiving\nerror: {}\nhint: 'blufioctl status' shows the turns in flight and a backup or \
             restore in progress\n",
            fake::BUSY
        )
    );
}

#[test]
fn restore_refuses_a_damaged_archive_without_contacting_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, bytes) = fake::archive();
    let path = dir.path().join("b.tar");
    let mut flipped = bytes.clone();
    flipped[300_000] ^= 0x01;
    std::fs::write(&path, &flipped).expect("write");
    // No daemon listens: had it tried to connect, the exit code would be 3.
    let missing = dir.path().join("missing.sock");
    let output = run(blufioctl().args(["restore", "--socket"]).arg(&missing).arg(&path));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!(
            "error: {} failed verification; nothing was sent: member blufio.db does not match the manifest (its \
             SHA-256 differs): the archive is damaged\n",
            path.display()
        )
    );
    std::fs::write(&path, &bytes[..bytes.len() - 2000]).expect("write");
    let output = run(blufioctl().args(["restore", "--socket"]).arg(&missing).arg(&path));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("truncated"), "{}", stderr(&output));

    // A sound archive gets as far as the missing daemon.
    std::fs::write(&path, &bytes).expect("write");
    let output = run(blufioctl().args(["restore", "--socket"]).arg(&missing).arg(&path));
    assert_unreachable(&output, &missing);

    let output = run(blufioctl().args(["restore", "-"]));
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
}

#[test]
fn status_shows_the_backups() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["status", "--json"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        json["backup"],
        serde_json::json!({"schedule": "every 24 h into /var/lib/blufio/backups, keeping 7",
                           "last_success_at": 1_764_000_000, "last_size_bytes": 3 * 1024 * 1024,
                           "last_duration_seconds": 2.5, "last_error": null, "last_error_at": null,
                           "restore_phase": null})
    );
    let output = run(against(&daemon).args(["status", "--plain"]));
    let text = stdout(&output);
    assert!(
        text.contains("\nbackup: every 24 h into /var/lib/blufio/backups, keeping 7\n  last: "),
        "{text}"
    );
    assert!(text.contains(" (3.0 MiB in 2.5s)\naccess: "), "{text}");
}

#[test]
fn doctor_prints_a_line_per_check_and_exits_1_when_one_fails() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["--plain", "doctor"]));
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning is not a failure: {}",
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(
        text.contains("ok\tstorage\t4 ms\tthe writer and a reader answer\n"),
        "{text}"
    );
    assert!(
        text.contains("warn\tvault\t4 ms\tthe key sits beside the data (fix: use a systemd credential)\n"),
        "{text}"
    );
    assert!(text.ends_with("1 ok, 1 to look at, 0 failed\n"), "{text}");

    let output = run(against(&daemon).args(["doctor", "--deep", "--json"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["fail"], 1);
    assert_eq!(json["checks"][2]["name"], "integrity");
    assert_eq!(json["checks"][2]["level"], "fail");
    assert_eq!(json["checks"][2]["deep"], true);
    assert_eq!(json["checks"][0]["hint"], serde_json::Value::Null);

    let output = run(against(&daemon).args(["doctor", "--only", "storage,vault", "--json"]));
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["checks"].as_array().unwrap().len(), 2);

    let output = run(against(&daemon).args(["doctor", "--only", "nope"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no check named \"nope\""),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn logs_prints_the_daemons_lines_and_says_what_a_follower_missed() {
    let daemon = fake::FakeDaemon::start();
    let output = run(against(&daemon).args(["--plain", "logs", "-n", "2", "--level", "warn"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "2026-11-30T21:06:19.124Z  WARN blufiod::vault: the key sits beside the data\n\
         2026-11-30T21:06:19.125Z ERROR blufiod::agent: provider failed^[[2J\n"
    );
    let output = run(against(&daemon).args(["logs", "-n", "1"]));
    assert_eq!(stdout(&output).lines().count(), 1, "{}", stdout(&output));
    assert!(stdout(&output).contains("provider failed"));

    let output = run(against(&daemon).args(["logs", "-n", "0", "-f", "--level", "debug", "--json"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", stdout(&output));
    assert_eq!(lines[0]["level"], "debug");
    assert_eq!(lines[0]["missed"], 4);
    assert_eq!(lines[0]["text"], "blufiod::control: followed");
    assert!(stderr(&output).contains("4 lines missed here"), "{}", stderr(&output));
}

#[test]
fn doctor_without_a_daemon_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let output = run(blufioctl().arg("--socket").arg(&socket).args(["--plain", "doctor"]));
    // The offline checks first (tests/doctor_offline.rs in blufiod tries them for real), then
    // the usual error and hint, exit 3.
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!(
            "fail\tdaemon\t0 ms\tblufiod does not answer at {}",
            socket.display()
        )),
        "{text}"
    );
    assert!(text.contains("\nok\tlock\t"), "{text}");
    assert!(
        stderr(&output).contains(&format!("error: cannot reach blufiod at {}: ", socket.display())),
        "{}",
        stderr(&output)
    );
}
