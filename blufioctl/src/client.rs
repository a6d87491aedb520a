//! The connection to blufiod: a tonic channel over the daemon's Unix control socket, with connect
//! and per-call timeouts, and errors classified so that `main` can pick the exit code.
//!
//! Unary calls wait at most the per-call timeout. `SendMessage` streams a whole agent turn, and
//! `Backup` and `Restore` stream an archive, which can take minutes, so they have no deadline of
//! their own; only connecting is bounded.
//!
//! This module never prints and never decides exit codes itself; it only says whether a failure
//! means "the daemon is not reachable" ([`ClientError::Unreachable`]) or something else.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blufio_proto::UNIX_SOCKET_AUTHORITY;
use blufio_proto::control::v1::backup_chunk::Chunk;
use blufio_proto::control::v1::control_client::ControlClient;
use blufio_proto::control::v1::rekey_vault_request::NewKey;
use blufio_proto::control::v1::restore_progress::Progress;
use blufio_proto::control::v1::send_message_response::Event;
use blufio_proto::control::v1::{
    AddDeviceRequest, BackupChunk, BackupRequest, DeleteSecretRequest, DeleteSecretResponse, DeleteSessionRequest,
    Device, GetConfigRequest, GetConfigResponse, GetMetricsRequest, GetSessionRequest, GetSessionResponse,
    GetStatusRequest, GetStatusResponse, GetUsageRequest, GetUsageResponse, GetVaultStatusRequest,
    GetVaultStatusResponse, ListDevicesRequest, ListDevicesResponse, ListHooksRequest, ListHooksResponse,
    ListSecretsRequest, ListSecretsResponse, ListSessionsRequest, ListSessionsResponse, LogLevel, LogLine,
    PruneSessionsRequest, PruneSessionsResponse, ReadLogsRequest, RekeyVaultRequest, RekeyVaultResponse,
    ReloadConfigRequest, ReloadConfigResponse, RemoveDeviceRequest, RenameDeviceRequest, RenameSessionRequest,
    RenameSessionResponse, RestoreChunk, RestoreProgress, RevokeDeviceRequest, RunChecksRequest, RunChecksResponse,
    SendMessageRequest, SendMessageResponse, SetConfigRequest, SetConfigResponse, SetSecretRequest, SetSecretResponse,
    TestHookRequest, TestHookResponse, UnsetConfigRequest, ValidateConfigRequest, ValidateConfigResponse,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use blufio_proto::descriptors::{DescriptorStream, Inbox};

/// How long to wait for the socket connection and the HTTP/2 handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time `RunChecks` is given: the daemon's deadline per check (30 s) and some.
const RUN_CHECKS_TIMEOUT: Duration = Duration::from_secs(40);

/// Why talking to the daemon failed.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing answers on the socket: it is missing, nobody listens (connection refused), or the
    /// caller may not connect (permission denied).
    Unreachable { socket: PathBuf, source: io::Error },
    /// Connecting failed for another reason (for example a socket path that is too long).
    Connect {
        socket: PathBuf,
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The daemon did not answer in time.
    Timeout { socket: PathBuf, after: Duration },
    /// The daemon answered with a gRPC error, such as PERMISSION_DENIED or INVALID_ARGUMENT.
    Status(tonic::Status),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { socket, .. } => {
                write!(f, "cannot reach blufiod at {}", socket.display())
            }
            ClientError::Connect { socket, .. } => {
                write!(f, "cannot connect to blufiod at {}", socket.display())
            }
            ClientError::Timeout { socket, after } => write!(
                f,
                "blufiod at {} did not answer within {}s",
                socket.display(),
                after.as_secs()
            ),
            ClientError::Status(status) if status.message().is_empty() => f.write_str(status.code().description()),
            ClientError::Status(status) => f.write_str(status.message()),
        }
    }
}

impl StdError for ClientError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ClientError::Unreachable { source, .. } => Some(source),
            ClientError::Connect { source, .. } => Some(source.as_ref()),
            ClientError::Timeout { .. } => None,
            ClientError::Status(status) => status.source(),
        }
    }
}

/// Largest reply decoded. The daemon bounds a page of messages at 2 MiB but always sends at least
/// one message, and one message can be larger: a tool result (up to `tools.max_result_bytes`,
/// 16 MiB at most) or one stored by an older version. tonic's default of 4 MiB would make such a
/// session unreadable; this is the local daemon, which the client trusts.
const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// A connected control client.
pub struct Client {
    inner: ControlClient<Channel>,
    socket: PathBuf,
    call_timeout: Duration,
    /// Descriptors the daemon passed on the connection (`Backup` with `descriptor`).
    descriptors: Inbox,
}

impl Client {
    /// Connects to the daemon's control socket at `socket`. Each call then waits at most
    /// `call_timeout` for its answer, so that a hung daemon cannot hang the CLI.
    pub async fn connect(socket: &Path, call_timeout: Duration) -> Result<Self, ClientError> {
        // Look before connecting, so that the common "daemon not running" case reports the plain
        // io error ("No such file or directory") rather than whatever the transport wraps it in.
        if let Err(source) = std::fs::metadata(socket) {
            return Err(classify_io(socket, source));
        }

        // The URI only supplies the HTTP/2 `:authority`; the connector ignores it and dials the
        // socket. hyper's server rejects a socket path as authority, so it must be `localhost`.
        let endpoint = Endpoint::from_shared(format!("http://{UNIX_SOCKET_AUTHORITY}"))
            .map_err(|source| ClientError::Connect {
                socket: socket.to_path_buf(),
                source: Box::new(source),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        let path = socket.to_path_buf();
        let descriptors = Inbox::default();
        let inbox = descriptors.clone();
        let connector = tower::service_fn(move |_| {
            let path = path.clone();
            let inbox = inbox.clone();
            async move {
                let stream = UnixStream::connect(&path).await?;
                check_shared_fallback(&path, &stream)?;
                Ok::<_, io::Error>(TokioIo::new(DescriptorStream::new(stream, inbox)))
            }
        });
        // The endpoint's connect timeout covers the socket connect; this one also bounds the
        // HTTP/2 handshake.
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector)).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(classify_transport(socket, Box::new(error))),
            Err(_elapsed) => {
                return Err(ClientError::Timeout {
                    socket: socket.to_path_buf(),
                    after: CONNECT_TIMEOUT,
                });
            }
        };
        Ok(Client {
            inner: ControlClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES),
            socket: socket.to_path_buf(),
            call_timeout,
            descriptors,
        })
    }

    /// `GetStatus`.
    pub async fn get_status(&mut self) -> Result<GetStatusResponse, ClientError> {
        let request = tonic::Request::new(GetStatusRequest {});
        call(&self.socket, self.call_timeout, self.inner.get_status(request)).await
    }

    /// `GetConfig` for one dotted key, or for every key when `key` is empty.
    pub async fn get_config(&mut self, key: String) -> Result<GetConfigResponse, ClientError> {
        let request = tonic::Request::new(GetConfigRequest { key });
        call(&self.socket, self.call_timeout, self.inner.get_config(request)).await
    }

    /// `SetConfig`.
    pub async fn set_config(&mut self, key: String, value: String) -> Result<SetConfigResponse, ClientError> {
        let request = tonic::Request::new(SetConfigRequest { key, value });
        call(&self.socket, self.call_timeout, self.inner.set_config(request)).await
    }

    /// `UnsetConfig`.
    pub async fn unset_config(&mut self, key: String) -> Result<SetConfigResponse, ClientError> {
        let request = tonic::Request::new(UnsetConfigRequest { key });
        call(&self.socket, self.call_timeout, self.inner.unset_config(request)).await
    }

    /// `ValidateConfig`; an empty `toml` asks the daemon to validate its own config file.
    pub async fn validate_config(&mut self, toml: String, name: String) -> Result<ValidateConfigResponse, ClientError> {
        let request = tonic::Request::new(ValidateConfigRequest { toml, name });
        call(&self.socket, self.call_timeout, self.inner.validate_config(request)).await
    }

    /// `ReloadConfig`.
    pub async fn reload_config(&mut self) -> Result<ReloadConfigResponse, ClientError> {
        let request = tonic::Request::new(ReloadConfigRequest {});
        call(&self.socket, self.call_timeout, self.inner.reload_config(request)).await
    }

    /// `ListSessions`; `limit` 0 asks for the daemon's default page size, an empty `cursor` for
    /// the first page.
    pub async fn list_sessions(&mut self, limit: u32, cursor: String) -> Result<ListSessionsResponse, ClientError> {
        let request = tonic::Request::new(ListSessionsRequest { limit, cursor });
        call(&self.socket, self.call_timeout, self.inner.list_sessions(request)).await
    }

    /// `GetSession`; `message_limit` 0 asks for the daemon's default, an empty `cursor` for the
    /// latest page.
    pub async fn get_session(
        &mut self,
        id: String,
        message_limit: u32,
        cursor: String,
    ) -> Result<GetSessionResponse, ClientError> {
        let request = tonic::Request::new(GetSessionRequest {
            id,
            message_limit,
            cursor,
        });
        call(&self.socket, self.call_timeout, self.inner.get_session(request)).await
    }

    /// `DeleteSession`.
    pub async fn delete_session(&mut self, id: String) -> Result<(), ClientError> {
        let request = tonic::Request::new(DeleteSessionRequest { id });
        call(&self.socket, self.call_timeout, self.inner.delete_session(request)).await?;
        Ok(())
    }

    /// `RenameSession`.
    pub async fn rename_session(&mut self, id: String, title: String) -> Result<RenameSessionResponse, ClientError> {
        let request = tonic::Request::new(RenameSessionRequest { id, title });
        call(&self.socket, self.call_timeout, self.inner.rename_session(request)).await
    }

    /// `PruneSessions`.
    pub async fn prune_sessions(&mut self, older_than_days: u32) -> Result<PruneSessionsResponse, ClientError> {
        let request = tonic::Request::new(PruneSessionsRequest { older_than_days });
        call(&self.socket, self.call_timeout, self.inner.prune_sessions(request)).await
    }

    /// `RunChecks`: the health registry's checks. Each check has up to 30 s in the daemon, so the
    /// call waits at least 40 s whatever `--timeout` says.
    pub async fn run_checks(&mut self, deep: bool, only: Vec<String>) -> Result<RunChecksResponse, ClientError> {
        let request = tonic::Request::new(RunChecksRequest { deep, only });
        let timeout = self.call_timeout.max(RUN_CHECKS_TIMEOUT);
        call(&self.socket, timeout, self.inner.run_checks(request)).await
    }

    /// `ListHooks`: every hook, its commands and its last run.
    pub async fn list_hooks(&mut self) -> Result<ListHooksResponse, ClientError> {
        let request = tonic::Request::new(ListHooksRequest {});
        call(&self.socket, self.call_timeout, self.inner.list_hooks(request)).await
    }

    /// `TestHook`: runs one hook's commands with a sample event and waits for them (the daemon
    /// gives them up to 30 s).
    pub async fn test_hook(&mut self, name: String) -> Result<TestHookResponse, ClientError> {
        let request = tonic::Request::new(TestHookRequest { name });
        let timeout = self.call_timeout.max(RUN_CHECKS_TIMEOUT);
        call(&self.socket, timeout, self.inner.test_hook(request)).await
    }

    /// `GetMetrics`: the Prometheus text exposition.
    pub async fn get_metrics(&mut self) -> Result<String, ClientError> {
        let request = tonic::Request::new(GetMetricsRequest {});
        Ok(call(&self.socket, self.call_timeout, self.inner.get_metrics(request))
            .await?
            .text)
    }

    /// `GetUsage` for the last `days` days.
    pub async fn get_usage(&mut self, days: u32) -> Result<GetUsageResponse, ClientError> {
        let request = tonic::Request::new(GetUsageRequest { days });
        call(&self.socket, self.call_timeout, self.inner.get_usage(request)).await
    }

    /// `AddDevice`: registers `public_key_pem` (a PEM "PUBLIC KEY") under `name`. The daemon
    /// always answers with the device; a missing one is reported as an internal error.
    pub async fn add_device(&mut self, name: String, public_key_pem: String) -> Result<Device, ClientError> {
        let request = tonic::Request::new(AddDeviceRequest { name, public_key_pem });
        let response = call(&self.socket, self.call_timeout, self.inner.add_device(request)).await?;
        response.device.ok_or_else(missing_device)
    }

    /// `ListDevices`.
    pub async fn list_devices(&mut self) -> Result<ListDevicesResponse, ClientError> {
        let request = tonic::Request::new(ListDevicesRequest {});
        call(&self.socket, self.call_timeout, self.inner.list_devices(request)).await
    }

    /// `RevokeDevice`.
    pub async fn revoke_device(&mut self, name: String) -> Result<Device, ClientError> {
        let request = tonic::Request::new(RevokeDeviceRequest { name });
        let response = call(&self.socket, self.call_timeout, self.inner.revoke_device(request)).await?;
        response.device.ok_or_else(missing_device)
    }

    /// `RenameDevice`; the device as it now is.
    pub async fn rename_device(&mut self, name: String, new_name: String) -> Result<Device, ClientError> {
        let request = tonic::Request::new(RenameDeviceRequest { name, new_name });
        let response = call(&self.socket, self.call_timeout, self.inner.rename_device(request)).await?;
        response.device.ok_or_else(missing_device)
    }

    /// `RemoveDevice`; how many revoked entries went.
    pub async fn remove_device(&mut self, name: String) -> Result<u64, ClientError> {
        let request = tonic::Request::new(RemoveDeviceRequest { name });
        let response = call(&self.socket, self.call_timeout, self.inner.remove_device(request)).await?;
        Ok(response.removed)
    }

    /// `SetSecret`. The value is moved into the request, not copied; tonic drops it once encoded.
    pub async fn set_secret(&mut self, name: String, value: String) -> Result<SetSecretResponse, ClientError> {
        let request = tonic::Request::new(SetSecretRequest { name, value });
        call(&self.socket, self.call_timeout, self.inner.set_secret(request)).await
    }

    /// `ListSecrets`.
    pub async fn list_secrets(&mut self) -> Result<ListSecretsResponse, ClientError> {
        let request = tonic::Request::new(ListSecretsRequest {});
        call(&self.socket, self.call_timeout, self.inner.list_secrets(request)).await
    }

    /// `DeleteSecret`.
    pub async fn delete_secret(&mut self, name: String, force: bool) -> Result<DeleteSecretResponse, ClientError> {
        let request = tonic::Request::new(DeleteSecretRequest { name, force });
        call(&self.socket, self.call_timeout, self.inner.delete_secret(request)).await
    }

    /// `GetVaultStatus`.
    pub async fn get_vault_status(&mut self) -> Result<GetVaultStatusResponse, ClientError> {
        let request = tonic::Request::new(GetVaultStatusRequest {});
        call(&self.socket, self.call_timeout, self.inner.get_vault_status(request)).await
    }

    /// `RekeyVault` to `new_key`.
    pub async fn rekey_vault(&mut self, new_key: NewKey) -> Result<RekeyVaultResponse, ClientError> {
        let request = tonic::Request::new(RekeyVaultRequest { new_key: Some(new_key) });
        call(&self.socket, self.call_timeout, self.inner.rekey_vault(request)).await
    }

    /// `SendMessage`: starts a turn and returns its event stream. An empty `session_id` asks the
    /// daemon to create a session. Deliberately without the per-call timeout: a turn may run for
    /// minutes, and the user (or Ctrl-C) decides how long to wait. Dropping the returned
    /// [`TurnStream`] cancels the RPC.
    pub async fn send_message(&mut self, session_id: String, text: String) -> Result<TurnStream, ClientError> {
        let request = tonic::Request::new(SendMessageRequest { session_id, text });
        match self.inner.send_message(request).await {
            Ok(response) => Ok(TurnStream {
                inner: response.into_inner(),
                socket: self.socket.clone(),
            }),
            Err(status) => Err(classify_status(&self.socket, status)),
        }
    }

    /// `Backup`: the archive's stream, `started` first. Without a deadline, like a turn: the
    /// daemon answers at once and takes its snapshot before `started`, which can take a while
    /// for a large database. Dropping the returned [`BackupStream`] cancels the RPC.
    pub async fn backup(
        &mut self,
        without_config: bool,
        include_tls: bool,
        descriptor: bool,
    ) -> Result<BackupStream, ClientError> {
        let request = tonic::Request::new(BackupRequest {
            without_config,
            include_tls,
            descriptor,
            // Built here from the descriptor, the archive is kept only once the check passed.
            check_alongside: descriptor,
        });
        match self.inner.backup(request).await {
            Ok(response) => Ok(BackupStream {
                inner: response.into_inner(),
                socket: self.socket.clone(),
                descriptors: self.descriptors.clone(),
            }),
            Err(status) => Err(classify_status(&self.socket, status)),
        }
    }

    /// `ReadLogs`: the last `lines` log lines at `min_level` or above, then, with `follow`, new
    /// ones as they come. Without a deadline; the caller bounds a read that does not follow.
    pub async fn read_logs(&mut self, lines: u32, min_level: LogLevel, follow: bool) -> Result<LogStream, ClientError> {
        let request = tonic::Request::new(ReadLogsRequest {
            lines,
            min_level: min_level.into(),
            follow,
        });
        match self.inner.read_logs(request).await {
            Ok(response) => Ok(LogStream {
                inner: response.into_inner(),
                socket: self.socket.clone(),
            }),
            Err(status) => Err(classify_status(&self.socket, status)),
        }
    }

    /// `Restore`: sends `chunks` (`start`, then the archive's bytes; the stream's end is the
    /// archive's) and returns the daemon's phases and result. Without a deadline: the daemon waits
    /// for running turns before it swaps the database. Dropping the returned [`RestoreStream`]
    /// cancels the RPC.
    pub async fn restore(
        &mut self,
        chunks: impl tonic::IntoStreamingRequest<Message = RestoreChunk>,
    ) -> Result<RestoreStream, ClientError> {
        match self.inner.restore(chunks).await {
            Ok(response) => Ok(RestoreStream {
                inner: response.into_inner(),
                socket: self.socket.clone(),
            }),
            Err(status) => Err(classify_status(&self.socket, status)),
        }
    }
}

/// The chunks of one streamed backup archive.
pub struct BackupStream {
    inner: Streaming<BackupChunk>,
    socket: PathBuf,
    descriptors: Inbox,
}

impl BackupStream {
    /// The snapshot's file, once `started` said the daemon passed it and named it by `device`
    /// and `inode`.
    pub fn take_snapshot(&self, device: u64, inode: u64) -> Option<std::fs::File> {
        self.descriptors.take_file(device, inode)
    }

    /// The next chunk, or `None` when the daemon closed the stream without an error.
    pub async fn next(&mut self) -> Result<Option<Chunk>, ClientError> {
        loop {
            match self.inner.message().await {
                Ok(Some(BackupChunk { chunk: Some(chunk) })) => return Ok(Some(chunk)),
                // A kind of chunk added to the proto after this client was built: skip it.
                Ok(Some(BackupChunk { chunk: None })) => {}
                Ok(None) => return Ok(None),
                Err(status) => return Err(classify_status(&self.socket, status)),
            }
        }
    }
}

/// The lines of one `ReadLogs` call.
pub struct LogStream {
    inner: Streaming<LogLine>,
    socket: PathBuf,
}

impl LogStream {
    /// The next line, or `None` when the daemon ended the stream (all recent lines sent, or the
    /// daemon stopping while following).
    pub async fn next(&mut self) -> Result<Option<LogLine>, ClientError> {
        self.inner
            .message()
            .await
            .map_err(|status| classify_status(&self.socket, status))
    }
}

/// The phases and the result of one restore.
pub struct RestoreStream {
    inner: Streaming<RestoreProgress>,
    socket: PathBuf,
}

impl RestoreStream {
    /// The next phase or the result, or `None` when the daemon closed the stream without either.
    pub async fn next(&mut self) -> Result<Option<Progress>, ClientError> {
        loop {
            match self.inner.message().await {
                Ok(Some(RestoreProgress {
                    progress: Some(progress),
                })) => return Ok(Some(progress)),
                // A kind of progress added to the proto after this client was built: skip it.
                Ok(Some(RestoreProgress { progress: None })) => {}
                Ok(None) => return Ok(None),
                Err(status) => return Err(classify_status(&self.socket, status)),
            }
        }
    }
}

/// The events of one streamed turn.
pub struct TurnStream {
    inner: Streaming<SendMessageResponse>,
    socket: PathBuf,
}

impl TurnStream {
    /// The next event, or `None` when the daemon closed the stream without an error.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            match self.inner.message().await {
                Ok(Some(SendMessageResponse { event: Some(event) })) => return Ok(Some(event)),
                // An event of a kind added to the proto after this client was built: skip it, as
                // the compatibility rules allow the daemon to grow the oneof.
                Ok(Some(SendMessageResponse { event: None })) => {}
                Ok(None) => return Ok(None),
                Err(status) => return Err(classify_status(&self.socket, status)),
            }
        }
    }
}

/// A device RPC answered without its device, which this client cannot show.
fn missing_device() -> ClientError {
    ClientError::Status(tonic::Status::internal("the daemon's answer carries no device"))
}

/// Runs one RPC under `timeout` and classifies its failure.
///
/// The deadline is enforced here rather than sent as `grpc-timeout`: tonic's server would then
/// race us with its own CANCELLED status, and the user would get one of two different messages.
async fn call<T>(
    socket: &Path,
    timeout: Duration,
    rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, rpc).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(classify_status(socket, status)),
        Err(_elapsed) => Err(ClientError::Timeout {
            socket: socket.to_path_buf(),
            after: timeout,
        }),
    }
}

/// Maps a failed call's status. A status made by the client's own transport (the daemon went
/// away between connect and call) carries the io error in its source chain.
fn classify_status(socket: &Path, status: tonic::Status) -> ClientError {
    if let Some(io_error) = find_io_error(&status)
        && is_unreachable_kind(io_error.kind())
    {
        return ClientError::Unreachable {
            socket: socket.to_path_buf(),
            source: copy_io_error(io_error),
        };
    }
    ClientError::Status(status)
}

/// Maps an io error seen on `socket` to `Unreachable` when its kind says so.
fn classify_io(socket: &Path, source: io::Error) -> ClientError {
    if is_unreachable_kind(source.kind()) {
        ClientError::Unreachable {
            socket: socket.to_path_buf(),
            source,
        }
    } else {
        ClientError::Connect {
            socket: socket.to_path_buf(),
            source: Box::new(source),
        }
    }
}

/// Maps a transport error from connecting. tonic wraps the connector's io error (and
/// hyper-timeout's `TimedOut`) a few levels deep, so walk the source chain.
/// The per-uid directory in `/tmp` the socket falls back to without `XDG_RUNTIME_DIR` lives in
/// a directory everybody may write, so another user could create it first and listen there.
/// A socket in it is trusted only when the directory is the caller's own (or root's) and not
/// writable by others, and the process listening is the caller or root; otherwise messages,
/// config values and keys would go to whoever got there first.
fn check_shared_fallback(path: &Path, stream: &UnixStream) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let euid = nix::unistd::geteuid().as_raw();
    let fallback = PathBuf::from(format!("/tmp/blufio-{euid}"));
    if path.parent() != Some(fallback.as_path()) {
        return Ok(());
    }
    let directory = std::fs::symlink_metadata(&fallback)?;
    let owner_ok = directory.is_dir() && (directory.uid() == euid || directory.uid() == 0);
    if !owner_ok || directory.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "refusing {}: it belongs to uid {} or others may write to it, so it may not be your blufiod; remove it, or set XDG_RUNTIME_DIR or --socket",
            fallback.display(),
            directory.uid()
        )));
    }
    let peer = stream.peer_cred()?.uid();
    if peer != euid && peer != 0 {
        return Err(io::Error::other(format!(
            "refusing {}: the process listening there runs as uid {peer}, not as you; it is not your blufiod",
            path.display()
        )));
    }
    Ok(())
}

fn classify_transport(socket: &Path, error: Box<dyn StdError + Send + Sync>) -> ClientError {
    match find_io_error(error.as_ref()) {
        Some(io_error) if is_unreachable_kind(io_error.kind()) => ClientError::Unreachable {
            socket: socket.to_path_buf(),
            source: copy_io_error(io_error),
        },
        Some(io_error) if io_error.kind() == io::ErrorKind::TimedOut => ClientError::Timeout {
            socket: socket.to_path_buf(),
            after: CONNECT_TIMEOUT,
        },
        _ => ClientError::Connect {
            socket: socket.to_path_buf(),
            source: error,
        },
    }
}

/// The error kinds that mean "nothing usable listens on the socket".
fn is_unreachable_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::PermissionDenied
    )
}

/// The first `std::io::Error` in `error`'s source chain, `error` itself included.
fn find_io_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            return Some(io_error);
        }
        current = error.source();
    }
    None
}

/// `io::Error` is not `Clone`; keep the raw OS error when there is one so the message still reads
/// "No such file or directory (os error 2)".
fn copy_io_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("transport error")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn wrapped_connection_refused_is_unreachable() {
        let error = Wrapper(io::Error::from_raw_os_error(nix::libc::ECONNREFUSED));
        let classified = classify_transport(Path::new("/x.sock"), Box::new(error));
        match classified {
            ClientError::Unreachable { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
                assert!(source.to_string().contains("os error"), "{source}");
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[test]
    fn wrapped_timeout_is_a_timeout() {
        let error = Wrapper(io::Error::from(io::ErrorKind::TimedOut));
        let classified = classify_transport(Path::new("/x.sock"), Box::new(error));
        assert!(matches!(classified, ClientError::Timeout { .. }), "{classified:?}");
    }

    #[test]
    fn other_io_errors_are_not_unreachable() {
        let error = Wrapper(io::Error::from(io::ErrorKind::InvalidInput));
        let classified = classify_transport(Path::new("/x.sock"), Box::new(error));
        assert!(matches!(classified, ClientError::Connect { .. }), "{classified:?}");
    }

    #[test]
    fn status_message_is_the_display() {
        let error = ClientError::Status(tonic::Status::permission_denied("read-only access"));
        assert_eq!(error.to_string(), "read-only access");
    }
}
