//! The `blufio.control.v1.Control` service: authorization of each call, then conversion between
//! proto messages and the daemon's internal types, and precise status codes for failures.

/// Largest TOML document `ValidateConfig` parses for a client: parsing costs memory in proportion
/// to the document, and any caller with read access may send one.
const MAX_CLIENT_DOCUMENT_BYTES: usize = 64 * 1024;

use std::sync::Arc;
use std::time::Duration;

use blufio_proto::control::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::ControlDeps;
use super::auth::{self, Policy};
use tokio_stream::StreamExt as _;

use crate::agent::budget::dollars;
use crate::agent::model::{Channel, ContentBlock, Message, Session, TurnEvent, Usage, UsageTotals};
use crate::agent::{AgentError, ErrorKind};
use crate::backup::restore::{Online, RestoreError, RestoreOptions};
use crate::backup::{BackupError, Backups, CHUNK_BYTES, Contents, Destination};
use crate::config::ReloadError;
use crate::config::{self, ConfigEntry, ConfigError, ConfigWriteError};
use crate::devices::{DeviceError, DeviceRecord};
use crate::error_chain;
use crate::events::Event;
use crate::health::{Cost, DoctorError, Level};
use crate::lifecycle::{Phase, VERSION};
use crate::logging::{Line, Ring};
use crate::secrets::references;
use crate::storage::StorageErrorKind;
use crate::vault::crypto::Kdf;
use crate::vault::{NewKey, Rekeyed, VaultError, VaultStatus};

/// The control service.
pub struct ControlService {
    deps: ControlDeps,
    policy: Policy,
    /// Cancelled when the daemon stops: streams that would never end (`logs -f`) end then.
    shutdown: CancellationToken,
    /// `ReadLogs` streams open at once: each can hold a copy of the ring.
    log_streams: Arc<tokio::sync::Semaphore>,
}

impl ControlService {
    pub(super) fn new(deps: ControlDeps, policy: Policy, shutdown: CancellationToken) -> Self {
        Self {
            deps,
            policy,
            shutdown,
            log_streams: Arc::new(tokio::sync::Semaphore::new(MAX_LOG_STREAMS)),
        }
    }

    fn set_response(&self, outcome: config::SetOutcome) -> pb::SetConfigResponse {
        let pending = !outcome.applied_live && outcome.entry.spec.restart_required;
        pb::SetConfigResponse {
            config_path: self.deps.lifecycle.paths.config.display().to_string(),
            entry: Some(entry_to_proto(outcome.entry, pending)),
            applied_live: outcome.applied_live,
            restart_required: outcome.restart_required.into_iter().map(str::to_owned).collect(),
            overridden_by_env: outcome.overridden_by_env.unwrap_or_default(),
        }
    }

    /// Checks that the caller may make `method` (see [`auth::ACCESS`]); returns the caller.
    fn authorize<T>(&self, request: &Request<T>, method: &str) -> Result<auth::Caller, Status> {
        auth::authorize(
            &self.policy,
            self.deps.live.get().config.control.group_access,
            request.extensions(),
            method,
        )
    }
}

/// Refuses a change to an owner's key (see [`config::KeySpec::owner_only`]) from anyone else.
fn require_owner_for_key(caller: auth::Caller, key: &str) -> Result<(), Status> {
    match config::key_path(key) {
        Some((spec, _)) if spec.owner_only => caller.require_owner(&format!("change {}", spec.key)),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let caller = self.authorize(&request, "GetStatus")?;
        let lifecycle = &self.deps.lifecycle;
        let paths = &lifecycle.paths;
        let agent = self.deps.agent.status();
        let caps = self.deps.live.get().config.budget.clone();
        let total_sessions = self.deps.agent.count_sessions().await;
        Ok(Response::new(pb::GetStatusResponse {
            state: phase_to_proto(lifecycle.phase()) as i32,
            version: VERSION.to_owned(),
            pid: lifecycle.pid,
            uptime_seconds: lifecycle.uptime().as_secs(),
            config_path: paths.config.display().to_string(),
            config_file_present: paths.config.exists(),
            database_path: paths.database.display().to_string(),
            database_size_bytes: self.deps.storage.size_bytes(),
            socket_path: paths.socket.display().to_string(),
            state_dir: paths.state_dir.display().to_string(),
            subsystems: subsystem_lines(&self.deps, health_line(&self.deps.health).await),
            sessions: Some(pb::SessionsStatus {
                active_sessions: agent.active_sessions as u64,
                turns_in_flight: agent.turns_in_flight as u64,
                total_sessions: total_sessions.map_err(|error| agent_error_to_status(&error))?,
                turns_queued: agent.turns_queued as u64,
                provider: agent.provider.to_owned(),
                model: agent.model,
                provider_problem: agent.provider_problem.unwrap_or_default(),
                provider_key_source: agent.provider_key_source.unwrap_or_default(),
            }),
            memory: Some(memory_status(&self.deps.memory.observe())),
            cost: Some(pb::CostStatus {
                today_usd: agent.budget.today_usd,
                month_usd: agent.budget.month_usd,
                daily_cap_usd: caps.daily_usd,
                monthly_cap_usd: caps.monthly_usd,
                reserved_usd: agent.budget.reserved_usd,
            }),
            previous_run_unclean: lifecycle.previous_run_unclean,
            caller_access: if caller.owner { "owner" } else { caller.access.as_str() }.to_owned(),
            backup: Some({
                let backups = &self.deps.backups;
                let last = backups.last();
                pb::BackupStatus {
                    schedule: backups.schedule(),
                    last_success_at: last.success_at.unwrap_or(0),
                    last_size_bytes: last.size_bytes,
                    last_duration_seconds: last.duration.as_secs_f64(),
                    last_error: last.error.as_ref().map(|(error, _)| error.clone()).unwrap_or_default(),
                    last_error_at: last.error.as_ref().map_or(0, |(_, at)| *at),
                    restore_phase: backups.restore_phase().unwrap_or_default().to_owned(),
                }
            }),
            gateway: match &self.deps.gateway {
                None => None,
                Some(gateway) => {
                    let active_devices = self
                        .deps
                        .devices
                        .count_active()
                        .await
                        .map_err(|error| device_error_to_status(&error))?;
                    Some(pb::GatewayStatus {
                        listen: gateway.address.to_string(),
                        scheme: gateway.scheme.to_owned(),
                        tls_fingerprint_sha256: gateway
                            .cert
                            .as_ref()
                            .map(|cert| cert.fingerprint())
                            .unwrap_or_default(),
                        active_devices,
                        problem: if active_devices == 0 {
                            "no device is registered, so every /v1/ request is refused; add one with `blufioctl device add NAME`"
                                .to_owned()
                        } else {
                            String::new()
                        },
                    })
                }
            },
        }))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        self.authorize(&request, "GetConfig")?;
        let key = request.into_inner().key;
        let key = (!key.is_empty()).then_some(key);
        let entries = self.deps.live.entries(key.as_deref()).ok_or_else(|| {
            let key = key.unwrap_or_default();
            Status::not_found(format!("no config key {key:?}; {}", config::keys_suggest(&key)))
        })?;
        Ok(Response::new(pb::GetConfigResponse {
            entries: entries
                .into_iter()
                .map(|(entry, pending)| entry_to_proto(entry, pending))
                .collect(),
            config_path: self.deps.lifecycle.paths.config.display().to_string(),
        }))
    }

    async fn set_config(
        &self,
        request: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let caller = self.authorize(&request, "SetConfig")?;
        let pb::SetConfigRequest { key, value } = request.into_inner();
        require_owner_for_key(caller, &key)?;
        let outcome = self
            .deps
            .live
            .set_key(&key, &value)
            .await
            .map_err(|error| write_error_to_status(&error))?;
        Ok(Response::new(self.set_response(outcome)))
    }

    async fn unset_config(
        &self,
        request: Request<pb::UnsetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let caller = self.authorize(&request, "UnsetConfig")?;
        let key = request.into_inner().key;
        require_owner_for_key(caller, &key)?;
        let outcome = self
            .deps
            .live
            .unset_key(&key)
            .await
            .map_err(|error| write_error_to_status(&error))?;
        Ok(Response::new(self.set_response(outcome)))
    }

    async fn validate_config(
        &self,
        request: Request<pb::ValidateConfigRequest>,
    ) -> Result<Response<pb::ValidateConfigResponse>, Status> {
        self.authorize(&request, "ValidateConfig")?;
        let pb::ValidateConfigRequest { toml, name } = request.into_inner();
        if toml.len() > MAX_CLIENT_DOCUMENT_BYTES {
            return Err(Status::invalid_argument(format!(
                "the document is {} bytes; the daemon checks documents of at most {MAX_CLIENT_DOCUMENT_BYTES} bytes (a real config file is a few KiB); check a larger file offline with blufiod --check-config --config FILE",
                toml.len()
            )));
        }
        let parsed_client_document = !toml.is_empty();
        let outcome = if toml.is_empty() {
            self.deps.live.validate_file()
        } else {
            let name = (!name.is_empty()).then(|| std::path::PathBuf::from(name));
            // A client's document is checked on its own: the daemon's environment is not the
            // environment the document will run under.
            config::load_from(Some(&toml), name.as_deref(), false).map(drop)
        };
        let errors = match outcome {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid { problems }) => problems,
            Err(other) => vec![error_chain(&other)],
        };
        if parsed_client_document {
            // Parsing is transient work whose pages the allocator would otherwise keep.
            crate::memory::release();
        }
        Ok(Response::new(pb::ValidateConfigResponse {
            valid: errors.is_empty(),
            errors,
        }))
    }

    type SendMessageStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SendMessageResponse, Status>> + Send + 'static>>;

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        self.authorize(&request, "CreateSession")?;
        let session = self
            .deps
            .agent
            .create_session(&request.into_inner().title)
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(session_to_proto(session)),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.authorize(&request, "ListSessions")?;
        let pb::ListSessionsRequest { limit, cursor } = request.into_inner();
        let limit = if limit == 0 {
            DEFAULT_SESSION_PAGE
        } else {
            limit.min(MAX_SESSION_PAGE)
        };
        let cursor = (!cursor.is_empty()).then_some(cursor);
        let (sessions, next) = self
            .deps
            .agent
            .list_sessions(limit, cursor.as_deref())
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.into_iter().map(session_to_proto).collect(),
            next_cursor: next.unwrap_or_default(),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        self.authorize(&request, "GetSession")?;
        let pb::GetSessionRequest {
            id,
            message_limit,
            cursor,
        } = request.into_inner();
        let limit = if message_limit == 0 {
            DEFAULT_MESSAGE_PAGE
        } else {
            message_limit.min(MAX_MESSAGE_PAGE)
        };
        let (session, messages, next_cursor) = self
            .deps
            .agent
            .get_session(&id, limit, Some(cursor.as_str()).filter(|cursor| !cursor.is_empty()))
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session_to_proto(session)),
            messages: messages.into_iter().map(message_to_proto).collect(),
            next_cursor: next_cursor.unwrap_or_default(),
        }))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        self.authorize(&request, "DeleteSession")?;
        self.deps
            .agent
            .delete_session(&request.into_inner().id)
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }

    async fn rename_session(
        &self,
        request: Request<pb::RenameSessionRequest>,
    ) -> Result<Response<pb::RenameSessionResponse>, Status> {
        self.authorize(&request, "RenameSession")?;
        let pb::RenameSessionRequest { id, title } = request.into_inner();
        let session = self
            .deps
            .agent
            .rename_session(&id, &title)
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        Ok(Response::new(pb::RenameSessionResponse {
            session: Some(session_to_proto(session)),
        }))
    }

    async fn prune_sessions(
        &self,
        request: Request<pb::PruneSessionsRequest>,
    ) -> Result<Response<pb::PruneSessionsResponse>, Status> {
        self.authorize(&request, "PruneSessions")?;
        let days = request.into_inner().older_than_days;
        if days == 0 {
            return Err(Status::invalid_argument(
                "older_than_days must be at least 1; `sessions delete ID` deletes one session",
            ));
        }
        let deleted = self
            .deps
            .agent
            .prune_sessions(days)
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        Ok(Response::new(pb::PruneSessionsResponse { deleted }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        let caller = self.authorize(&request, "SendMessage")?;
        let principal = if caller.owner {
            config::Principal::Owner
        } else {
            config::Principal::Group
        };
        let pb::SendMessageRequest { session_id, text } = request.into_inner();
        let session_id = (!session_id.is_empty()).then_some(session_id);
        let events = self
            .deps
            .agent
            .send_message(Channel::Control, principal, session_id.as_deref(), &text)
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        // Dropping this stream (the client went away or cancelled) drops the receiver, which
        // cancels the turn; the stored message stays.
        let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(turn_event_to_proto);
        Ok(Response::new(Box::pin(stream)))
    }

    type BackupStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send + 'static>>;

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let caller = self.authorize(&request, "Backup")?;
        // Only the call's own connection can carry the descriptor to the caller.
        let outbox = request
            .extensions()
            .get::<super::incoming::ConnectionInfo>()
            .map(|info| info.outbox.clone());
        let pb::BackupRequest {
            without_config,
            include_tls,
            descriptor,
            check_alongside,
        } = request.into_inner();
        if include_tls {
            caller.require_owner("put the gateway's TLS private key in a backup")?;
        }
        // The config file is the owner's as written: URL credentials and any literal token in
        // it are masked everywhere else a member looks.
        if !without_config {
            caller.require_owner(
                "put the config file in a backup (it holds the owner's settings unmasked); back up with --without-config",
            )?;
        }
        let contents = Contents {
            config: !without_config,
            tls: include_tls,
        };
        // The snapshot can take longer than a call may before it answers: the stream answers at
        // once and carries everything, errors included.
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        // Only the owner is handed the snapshot; a member's backup is streamed (and does not
        // count as the daemon's last backup either way).
        let handover = outbox.filter(|_| descriptor && caller.owner).map(|outbox| Handover {
            outbox,
            shutdown: self.shutdown.clone(),
            check_alongside,
        });
        tokio::spawn(stream_backup(
            self.deps.backups.clone(),
            contents,
            caller.owner,
            handover,
            sender,
        ));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }

    type RestoreStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::RestoreProgress, Status>> + Send + 'static>>;

    async fn restore(
        &self,
        request: Request<tonic::Streaming<pb::RestoreChunk>>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        let caller = self.authorize(&request, "Restore")?;
        let mut incoming = request.into_inner();
        let Some(pb::RestoreChunk {
            chunk: Some(pb::restore_chunk::Chunk::Start(start)),
        }) = incoming.message().await?
        else {
            return Err(Status::invalid_argument(
                "a restore stream starts with `start`, then the archive's bytes",
            ));
        };
        // An archive's config file names hooks, paths and hosts, and its TLS files are the
        // gateway's identity: installing either is the owner's choice.
        if start.restore_config {
            caller.require_owner("restore a config file from an archive")?;
        }
        if start.restore_tls {
            caller.require_owner("restore the gateway's TLS certificate and key from an archive")?;
        }
        let options = RestoreOptions {
            without_secrets: start.without_secrets,
            restore_config: start.restore_config,
            restore_tls: start.restore_tls,
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        let turn_timeout = Duration::from_secs(self.deps.live.get().config.daemon.shutdown_timeout_secs);
        tokio::spawn(run_restore(
            self.deps.backups.clone(),
            self.deps.agent.clone(),
            self.deps.secrets.vault().clone(),
            incoming,
            options,
            turn_timeout,
            sender,
        ));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        self.authorize(&request, "GetMetrics")?;
        Ok(Response::new(pb::GetMetricsResponse {
            text: self.deps.metrics.render(),
        }))
    }

    type ReadLogsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogLine, Status>> + Send + 'static>>;

    async fn read_logs(&self, request: Request<pb::ReadLogsRequest>) -> Result<Response<Self::ReadLogsStream>, Status> {
        self.authorize(&request, "ReadLogs")?;
        let pb::ReadLogsRequest {
            lines,
            min_level,
            follow,
        } = request.into_inner();
        let level = match pb::LogLevel::try_from(min_level) {
            Ok(pb::LogLevel::Error) => tracing::Level::ERROR,
            Ok(pb::LogLevel::Warn) => tracing::Level::WARN,
            Ok(pb::LogLevel::Unspecified | pb::LogLevel::Info) => tracing::Level::INFO,
            Ok(pb::LogLevel::Debug) => tracing::Level::DEBUG,
            Ok(pb::LogLevel::Trace) => tracing::Level::TRACE,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown log level {min_level}; use 1 (error) to 5 (trace), or 0 for info"
                )));
            }
        };
        let Ok(permit) = self.log_streams.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{MAX_LOG_STREAMS} log streams are open already; close one (a `blufioctl logs -f` left running?)"
            )));
        };
        let ring = self.deps.logs.clone();
        // Subscribed before the tail is read, so that no line falls between the two.
        let changes = ring.subscribe();
        let (recent, next) = ring.tail(usize::try_from(lines).unwrap_or(usize::MAX), level);
        let (sender, receiver) = tokio::sync::mpsc::channel(LOG_STREAM_BUFFER);
        let follow = follow.then(|| Follow {
            ring,
            changes,
            next,
            level,
            shutdown: self.shutdown.clone(),
        });
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stream_logs(recent, follow, sender) => {}
                () = shutdown.cancelled() => {}
            }
            drop(permit);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }

    async fn list_hooks(
        &self,
        request: Request<pb::ListHooksRequest>,
    ) -> Result<Response<pb::ListHooksResponse>, Status> {
        self.authorize(&request, "ListHooks")?;
        let config = self.deps.live.get();
        let hooks = &config.config.hooks;
        let mut last = self.deps.hooks.last_runs();
        Ok(Response::new(pb::ListHooksResponse {
            hooks: crate::config::HOOK_NAMES
                .iter()
                .map(|name| pb::HookInfo {
                    name: (*name).to_owned(),
                    commands: hooks
                        .commands(name)
                        .iter()
                        .map(|argv| pb::HookCommand { argv: argv.clone() })
                        .collect(),
                    last_run: last.remove(name).map(hook_run_to_proto),
                })
                .collect(),
            timeout_seconds: hooks.timeout_secs,
            max_concurrent: hooks.max_concurrent,
        }))
    }

    async fn test_hook(&self, request: Request<pb::TestHookRequest>) -> Result<Response<pb::TestHookResponse>, Status> {
        self.authorize(&request, "TestHook")?;
        let name = request.into_inner().name;
        let Some((hook, details)) = crate::hooks::sample_details(&name) else {
            return Err(Status::invalid_argument(format!(
                "no hook named {name:?}; the hooks are {}",
                crate::config::HOOK_NAMES.join(", ")
            )));
        };
        if self.deps.live.get().config.hooks.commands(hook).is_empty() {
            return Err(Status::failed_precondition(format!(
                "hooks.{hook} has no commands; set it first, for example: blufioctl config set hooks.{hook} '[[\"/usr/bin/logger\", \"-t\", \"blufio\", \"{hook}\"]]'"
            )));
        }
        tracing::info!(hook, "running a hook for a test");
        let runs = self.deps.hooks.run(hook, details).await;
        Ok(Response::new(pb::TestHookResponse {
            runs: runs.into_iter().map(hook_run_to_proto).collect(),
        }))
    }

    async fn run_checks(
        &self,
        request: Request<pb::RunChecksRequest>,
    ) -> Result<Response<pb::RunChecksResponse>, Status> {
        self.authorize(&request, "RunChecks")?;
        let pb::RunChecksRequest { deep, only } = request.into_inner();
        let reports = self
            .deps
            .health
            .doctor(deep, &only)
            .await
            .map_err(|error| match error {
                DoctorError::UnknownCheck { .. } => Status::invalid_argument(error.to_string()),
                DoctorError::DeepBusy => Status::resource_exhausted(error.to_string()),
            })?;
        let checks = reports
            .into_iter()
            .map(|report| pb::CheckResult {
                name: report.name.to_owned(),
                level: match report.finding.level {
                    Level::Ok => pb::CheckLevel::Ok,
                    Level::Warn => pb::CheckLevel::Warn,
                    Level::Fail => pb::CheckLevel::Fail,
                }
                .into(),
                detail: report.finding.detail,
                hint: report.finding.hint.unwrap_or_default(),
                duration_seconds: report.duration.as_secs_f64(),
                deep: report.cost == Cost::Deep,
            })
            .collect();
        Ok(Response::new(pb::RunChecksResponse { checks }))
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SetSecretResponse>, Status> {
        self.authorize(&request, "SetSecret")?;
        let pb::SetSecretRequest { name, value } = request.into_inner();
        let value = config::Secret(value);
        crate::vault::check_name(&name).map_err(|error| vault_error_to_status(&error))?;
        let config = self.deps.live.get();
        if let Some(problem) = crate::secrets::value_problem(&config.config, &name, &value) {
            return Err(Status::invalid_argument(format!("{problem}; nothing was stored")));
        }
        let vault = self.deps.secrets.vault();
        let created = vault
            .set(&name, &value)
            .await
            .map_err(|error| vault_error_to_status(&error))?;
        tracing::info!(secret = %name, created, "secret stored in the vault");
        Ok(Response::new(pb::SetSecretResponse {
            created,
            referenced_by: referring_keys(&config.config, &name),
        }))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        self.authorize(&request, "ListSecrets")?;
        let config = self.deps.live.get();
        let secrets = self
            .deps
            .secrets
            .vault()
            .list()
            .into_iter()
            .map(|entry| pb::SecretInfo {
                referenced_by: referring_keys(&config.config, &entry.name),
                name: entry.name,
                created_at: entry.created_at,
                updated_at: entry.updated_at,
                last_used_at: entry.last_used_at.unwrap_or(0),
                preview: entry.preview,
            })
            .collect();
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        self.authorize(&request, "DeleteSecret")?;
        let pb::DeleteSecretRequest { name, force } = request.into_inner();
        crate::vault::check_name(&name).map_err(|error| vault_error_to_status(&error))?;
        let referenced_by = referring_keys(&self.deps.live.get().config, &name);
        if !referenced_by.is_empty() && !force {
            return Err(Status::failed_precondition(format!(
                "secret `{name}` is named by {}; give that key another secret (or unset it) first, or delete with --force; nothing was deleted",
                referenced_by.join(", ")
            )));
        }
        self.deps
            .secrets
            .vault()
            .delete(&name)
            .await
            .map_err(|error| vault_error_to_status(&error))?;
        tracing::info!(secret = %name, still_named_by = ?referenced_by, "secret deleted from the vault");
        Ok(Response::new(pb::DeleteSecretResponse { referenced_by }))
    }

    async fn get_vault_status(
        &self,
        request: Request<pb::GetVaultStatusRequest>,
    ) -> Result<Response<pb::GetVaultStatusResponse>, Status> {
        self.authorize(&request, "GetVaultStatus")?;
        Ok(Response::new(vault_status_to_proto(self.deps.secrets.vault().status())))
    }

    async fn rekey_vault(
        &self,
        request: Request<pb::RekeyVaultRequest>,
    ) -> Result<Response<pb::RekeyVaultResponse>, Status> {
        self.authorize(&request, "RekeyVault")?;
        use pb::rekey_vault_request::NewKey as Given;
        let new = match request.into_inner().new_key {
            None | Some(Given::Generate(_)) => NewKey::Generate,
            Some(Given::Passphrase(passphrase)) => NewKey::Passphrase(zeroize::Zeroizing::new(passphrase)),
            Some(Given::Key(key)) => {
                let mut key = zeroize::Zeroizing::new(key);
                let kept = key.trim_ascii_end().len();
                zeroize::Zeroize::zeroize(&mut key[kept..]);
                key.truncate(kept);
                NewKey::Material(key)
            }
        };
        let vault = self.deps.secrets.vault();
        let rekeyed = vault.rekey(new).await.map_err(|error| vault_error_to_status(&error));
        // A new passphrase's Argon2id took 19 MiB or more that the allocator would otherwise keep.
        crate::memory::release();
        let rekeyed = rekeyed?;
        let response = match rekeyed {
            Rekeyed::Completed => pb::RekeyVaultResponse {
                completed: true,
                pending_key_source: String::new(),
                next_step: format!(
                    "the new key is in place ({}); the old key no longer opens the vault, so back up the new one with the database",
                    vault.status().source.describe()
                ),
            },
            Rekeyed::Pending(kind) => pb::RekeyVaultResponse {
                completed: false,
                pending_key_source: kind.as_str().to_owned(),
                next_step: format!(
                    "supply {} and restart blufiod: it then opens the vault with the new key and the old one stops working; until then the current key opens it",
                    kind.how_to_supply()
                ),
            },
        };
        tracing::info!(completed = response.completed, pending = %response.pending_key_source, "vault rekeyed");
        Ok(Response::new(response))
    }

    async fn get_usage(&self, request: Request<pb::GetUsageRequest>) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.authorize(&request, "GetUsage")?;
        let days = request.into_inner().days;
        let days = if days == 0 {
            DEFAULT_USAGE_DAYS
        } else {
            days.min(MAX_USAGE_DAYS)
        };
        let (report, budget) = self
            .deps
            .agent
            .usage(days)
            .await
            .map_err(|error| agent_error_to_status(&error))?;
        let caps = self.deps.live.get().config.budget.clone();
        Ok(Response::new(pb::GetUsageResponse {
            days: report
                .days
                .into_iter()
                .map(|(day, totals)| pb::DayUsage {
                    day,
                    cost_usd: dollars(totals.cost_micros),
                    usage: Some(totals_to_proto(&totals)),
                    calls: totals.calls,
                })
                .collect(),
            models: report
                .models
                .into_iter()
                .map(|usage| pb::ModelUsage {
                    provider: usage.provider,
                    model: usage.model,
                    cost_usd: dollars(usage.totals.cost_micros),
                    usage: Some(totals_to_proto(&usage.totals)),
                    calls: usage.totals.calls,
                })
                .collect(),
            sessions: report
                .sessions
                .into_iter()
                .map(|usage| pb::SessionUsage {
                    session_id: usage.session_id,
                    title: usage.title,
                    deleted: usage.deleted,
                    cost_usd: dollars(usage.totals.cost_micros),
                    calls: usage.totals.calls,
                })
                .collect(),
            cost: Some(pb::CostStatus {
                today_usd: budget.today_usd,
                month_usd: budget.month_usd,
                daily_cap_usd: caps.daily_usd,
                monthly_cap_usd: caps.monthly_usd,
                reserved_usd: budget.reserved_usd,
            }),
        }))
    }

    async fn add_device(
        &self,
        request: Request<pb::AddDeviceRequest>,
    ) -> Result<Response<pb::AddDeviceResponse>, Status> {
        self.authorize(&request, "AddDevice")?;
        let pb::AddDeviceRequest { name, public_key_pem } = request.into_inner();
        let device = self
            .deps
            .devices
            .add(&name, &public_key_pem)
            .await
            .map_err(|error| device_error_to_status(&error))?;
        tracing::info!(name = %device.name, fingerprint = %device.fingerprint, "device registered");
        self.deps.events.publish(Event::DeviceAdded {
            name: device.name.clone(),
            keyid: device.keyid.clone(),
        });
        Ok(Response::new(pb::AddDeviceResponse {
            device: Some(device_to_proto(device)),
        }))
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        self.authorize(&request, "ListDevices")?;
        let devices = self
            .deps
            .devices
            .list()
            .await
            .map_err(|error| device_error_to_status(&error))?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: devices.into_iter().map(device_to_proto).collect(),
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        self.authorize(&request, "RevokeDevice")?;
        let device = self
            .deps
            .devices
            .revoke(&request.into_inner().name)
            .await
            .map_err(|error| device_error_to_status(&error))?;
        tracing::info!(name = %device.name, "device revoked");
        self.deps.events.publish(Event::DeviceRevoked {
            name: device.name.clone(),
            keyid: device.keyid.clone(),
        });
        Ok(Response::new(pb::RevokeDeviceResponse {
            device: Some(device_to_proto(device)),
        }))
    }

    async fn rename_device(
        &self,
        request: Request<pb::RenameDeviceRequest>,
    ) -> Result<Response<pb::RenameDeviceResponse>, Status> {
        self.authorize(&request, "RenameDevice")?;
        let pb::RenameDeviceRequest { name, new_name } = request.into_inner();
        let device = self
            .deps
            .devices
            .rename(&name, &new_name)
            .await
            .map_err(|error| device_error_to_status(&error))?;
        tracing::info!(from = %name, to = %device.name, "device renamed");
        Ok(Response::new(pb::RenameDeviceResponse {
            device: Some(device_to_proto(device)),
        }))
    }

    async fn remove_device(
        &self,
        request: Request<pb::RemoveDeviceRequest>,
    ) -> Result<Response<pb::RemoveDeviceResponse>, Status> {
        self.authorize(&request, "RemoveDevice")?;
        let name = request.into_inner().name;
        let removed = self
            .deps
            .devices
            .remove(&name)
            .await
            .map_err(|error| device_error_to_status(&error))?;
        tracing::info!(%name, removed, "revoked device entries removed");
        Ok(Response::new(pb::RemoveDeviceResponse { removed }))
    }

    async fn reload_config(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        self.authorize(&request, "ReloadConfig")?;
        let change = self.deps.lifecycle.reload().await.map_err(|error| match &error {
            ReloadError::Load { source } => Status::failed_precondition(format!("{}:\n{}", error, error_chain(source))),
            ReloadError::Refused { .. } => Status::failed_precondition(error.to_string()),
        })?;
        Ok(Response::new(pb::ReloadConfigResponse {
            applied: change.applied.into_iter().map(str::to_owned).collect(),
            restart_required: change.restart_required.into_iter().map(str::to_owned).collect(),
        }))
    }
}

/// What each subsystem is doing, a line each, for `GetStatus`.
fn subsystem_lines(deps: &ControlDeps, health: String) -> Vec<pb::SubsystemStatus> {
    let pending = deps.live.pending_restart();
    let config = if let Some(problems) = deps.live.file_problems() {
        format!(
            "the file on disk is invalid ({}{}); running on the configuration read before, and a restart would fail: fix the file, then `blufioctl config reload`",
            problems[0],
            match problems.len() {
                1 => String::new(),
                more => format!(", and {} more", more - 1),
            }
        )
    } else if pending.is_empty() {
        "up to date".to_owned()
    } else {
        format!("restart needed for {}", pending.join(", "))
    };
    let gateway = match &deps.gateway {
        Some(gateway) => format!("{} on {}", gateway.scheme, gateway.address),
        None => "disabled (gateway.enabled = false)".to_owned(),
    };
    [
        (
            "control",
            format!("listening on {}", deps.lifecycle.paths.socket.display()),
        ),
        ("gateway", gateway),
        ("storage", format!("sqlite (WAL) at {}", deps.storage.path().display())),
        ("watchdog", deps.lifecycle.watchdog.describe()),
        ("config", config),
        ("health", health),
    ]
    .into_iter()
    .map(|(name, status)| pb::SubsystemStatus {
        name: name.to_owned(),
        status,
    })
    .collect()
}

/// The status line of the health registry: `ok`, or each readiness check that is not ok with
/// what it found and how long it took.
async fn health_line(health: &crate::health::Health) -> String {
    let reports = health
        .run(|check| check.readiness.is_some(), crate::health::CHEAP_DEADLINE)
        .await;
    let problems: Vec<String> = reports
        .iter()
        .filter(|report| report.finding.level != crate::health::Level::Ok)
        .map(|report| {
            let level = match report.finding.level {
                crate::health::Level::Fail => "fail",
                _ => "warn",
            };
            let hint = report
                .finding
                .hint
                .as_deref()
                .map(|hint| format!("; {hint}"))
                .unwrap_or_default();
            format!(
                "{}: {level}, {}{hint} ({:.1} ms)",
                report.name,
                report.finding.detail,
                report.duration.as_secs_f64() * 1000.0
            )
        })
        .collect();
    if problems.is_empty() {
        format!("ok ({} checks)", reports.len())
    } else {
        problems.join(" | ")
    }
}

/// Sessions per ListSessions page by default, and at most.
const DEFAULT_SESSION_PAGE: u32 = 50;
const MAX_SESSION_PAGE: u32 = 500;
/// Messages per GetSession by default, and at most.
const DEFAULT_MESSAGE_PAGE: u32 = 200;
const MAX_MESSAGE_PAGE: u32 = 2_000;
/// The memory monitor's reading as `GetStatus` reports it.
fn memory_status(reading: &crate::memory::Reading) -> pb::MemoryStatus {
    pb::MemoryStatus {
        rss_bytes: reading.used.rss_bytes,
        allocated_bytes: reading.used.heap_bytes,
        limit_bytes: reading.thresholds.limit_bytes,
        under_pressure: reading.pressure == crate::memory::Pressure::Limit,
        allocator_resident_bytes: reading.used.allocator_resident_bytes,
        warn_bytes: reading.thresholds.warn_bytes,
        refuse_bytes: reading.thresholds.refuse_bytes,
        pressure: reading.pressure.as_str().to_owned(),
        pressure_seconds: reading.since.as_secs(),
    }
}

/// Days per GetUsage by default, and at most.
const DEFAULT_USAGE_DAYS: u32 = 30;
const MAX_USAGE_DAYS: u32 = 366;

fn session_to_proto(session: Session) -> pb::Session {
    pb::Session {
        id: session.id,
        title: session.title,
        created_at: session.created_at,
        updated_at: session.updated_at,
        model: session.model,
        state: session.state.as_str().to_owned(),
        message_count: session.message_count,
    }
}

fn message_to_proto(message: Message) -> pb::ChatMessage {
    let mut proto = pb::ChatMessage {
        id: message.id,
        role: message.role.as_str().to_owned(),
        created_at: message.created_at,
        ..pb::ChatMessage::default()
    };
    let mut texts = Vec::new();
    for block in message.blocks {
        match block {
            ContentBlock::Text { text } => texts.push(text),
            ContentBlock::ToolUse { id, name, input } => proto.tool_calls.push(pb::ToolCall {
                id,
                name,
                input_json: input.to_string(),
            }),
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                // A stored tool message holds the results of one model request; each is shown
                // with its call id, the first one also in the message's own fields.
                if proto.tool_call_id.is_empty() {
                    proto.tool_call_id = tool_use_id;
                    proto.is_error = is_error;
                }
                texts.push(content);
            }
        }
    }
    proto.text = texts.join("\n");
    proto
}

fn usage_to_proto(usage: &Usage) -> pb::TokenUsage {
    pb::TokenUsage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cache_creation_input_tokens: usage.cache_creation_input_tokens,
        cache_read_input_tokens: usage.cache_read_input_tokens,
    }
}

fn totals_to_proto(totals: &UsageTotals) -> pb::TokenUsage {
    usage_to_proto(&totals.usage)
}

fn turn_event_to_proto(event: TurnEvent) -> Result<pb::SendMessageResponse, Status> {
    use pb::send_message_response::Event;
    let event = match event {
        TurnEvent::Accepted { session_id, message_id } => Event::Accepted(pb::Accepted { session_id, message_id }),
        TurnEvent::TextDelta(text) => Event::TextDelta(pb::TextDelta { text }),
        TurnEvent::Tool {
            id,
            name,
            phase,
            is_error,
            summary,
        } => Event::Tool(pb::ToolActivity {
            id,
            name,
            phase: phase.as_str().to_owned(),
            is_error,
            summary,
        }),
        TurnEvent::Completed(summary) => Event::Completed(pb::TurnCompleted {
            message_id: summary.message_id,
            usage: Some(usage_to_proto(&summary.usage)),
            cost_usd: dollars(summary.cost_micros),
            provider_calls: summary.provider_calls,
            stop_reason: summary.stop_reason.as_str().to_owned(),
            model: summary.model,
        }),
        TurnEvent::Failed(error) => return Err(agent_error_to_status(&error)),
    };
    Ok(pb::SendMessageResponse { event: Some(event) })
}

fn device_to_proto(device: DeviceRecord) -> pb::Device {
    pb::Device {
        name: device.name,
        keyid: device.keyid,
        fingerprint: device.fingerprint,
        added_at: device.added_at,
        last_used_at: device.last_used_at.unwrap_or(0),
        revoked_at: device.revoked_at.unwrap_or(0),
    }
}

fn device_error_to_status(error: &DeviceError) -> Status {
    let message = error_chain(error);
    match error {
        DeviceError::InvalidName { .. } | DeviceError::InvalidKey { .. } => Status::invalid_argument(message),
        DeviceError::Duplicate { .. } | DeviceError::DuplicateKey => Status::already_exists(message),
        DeviceError::NothingRevoked { .. } => Status::failed_precondition(message),
        DeviceError::NotFound { .. } => Status::not_found(message),
        DeviceError::Storage(_) => Status::internal(message),
    }
}

/// Maps an agent failure to the status code a client can act on: by its kind, the one mapping
/// of this transport.
fn agent_error_to_status(error: &AgentError) -> Status {
    let message = error_chain(error);
    match error.kind() {
        ErrorKind::SessionNotFound => Status::not_found(message),
        ErrorKind::InvalidMessage => Status::invalid_argument(message),
        ErrorKind::ProviderNotConfigured | ErrorKind::UnpricedModel | ErrorKind::SessionBusy => {
            Status::failed_precondition(message)
        }
        ErrorKind::BudgetExhausted | ErrorKind::QueueFull | ErrorKind::MemoryPressure | ErrorKind::StorageFull => {
            Status::resource_exhausted(message)
        }
        ErrorKind::ProviderFailed | ErrorKind::ShuttingDown | ErrorKind::Restoring => Status::unavailable(message),
        ErrorKind::StorageFailed => Status::internal(message),
    }
}

/// Maps a vault failure to the status code a client can act on.
fn vault_error_to_status(error: &VaultError) -> Status {
    let message = error_chain(error);
    match error {
        VaultError::InvalidName { .. } | VaultError::InvalidValue { .. } | VaultError::KeySource { .. } => {
            Status::invalid_argument(message)
        }
        VaultError::NotFound { .. } => Status::not_found(message),
        VaultError::Full => Status::resource_exhausted(message),
        VaultError::RekeyNeedsKey { .. } | VaultError::RekeyPending { .. } => Status::failed_precondition(message),
        VaultError::WriteKey { source, .. } => match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Status::resource_exhausted(message),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Status::failed_precondition(message)
            }
            _ => Status::internal(message),
        },
        VaultError::Storage { source, .. } if source.kind() == StorageErrorKind::Full => {
            Status::resource_exhausted(message)
        }
        VaultError::Storage { .. }
        | VaultError::NoKey { .. }
        | VaultError::WrongKey { .. }
        | VaultError::Damaged { .. }
        | VaultError::Derive { .. } => Status::internal(message),
    }
}

/// A client's backup: a snapshot taken, then handed over (checked before or while the client
/// copies) or checked and streamed into `sender` (`started`, then the archive in chunks). Only
/// the owner's (`by_owner`) counts as the daemon's last backup.
async fn stream_backup(
    backups: Arc<Backups>,
    contents: Contents,
    by_owner: bool,
    handover: Option<Handover>,
    sender: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
) {
    let report = async |error: BackupError| {
        // Another backup or restore running is not a failed backup.
        if !matches!(error, BackupError::Busy) {
            backups.finish_client(by_owner, Err(&error));
        }
        let _ = sender.send(Err(backup_error_to_status(&error))).await;
    };
    let taken = match backups.take(contents).await {
        Ok(taken) => taken,
        Err(error) => return report(error).await,
    };
    if let Some(handover) = handover {
        let kept = hand_over_backup(&backups, taken, handover, &sender).await;
        let _ = tokio::task::spawn_blocking(move || drop(kept)).await;
        return;
    }
    let prepared = match taken.check().await {
        Ok(prepared) => prepared,
        Err(error) => return report(error).await,
    };
    let started = pb::BackupChunk {
        chunk: Some(pb::backup_chunk::Chunk::Started(pb::BackupStarted {
            archive_bytes: prepared.archive_bytes,
            manifest_json: serde_json::to_string(&prepared.manifest).expect("a manifest serializes"),
            ..pb::BackupStarted::default()
        })),
    };
    if sender.send(Ok(started)).await.is_err() {
        return;
    }
    // At the daemon's own priority, unlike the snapshot: the client waits on every chunk.
    let chunks = sender.clone();
    let written = tokio::task::spawn_blocking(move || {
        let result = prepared.write_to(ChunkWriter::new(chunks)).and_then(|mut writer| {
            std::io::Write::flush(&mut writer).map_err(|source| crate::backup::BackupError::Write {
                path: "the control socket".into(),
                source,
            })
        });
        (prepared, result)
    })
    .await;
    let Ok((prepared, result)) = written else {
        return;
    };
    match result {
        Ok(_) => backups.finish_client(by_owner, Ok((&prepared, Destination::Streamed))),
        Err(error) => {
            // A client that went away is not a failed backup.
            if !sender.is_closed() {
                backups.finish_client(by_owner, Err(&error));
                // Never waits: a client that took nothing for a minute would otherwise hold
                // the snapshot and the one backup place for as long as its connection lives.
                let _ = sender.try_send(Err(backup_error_to_status(&error)));
            }
        }
    }
    drop_off_runtime(prepared).await;
}

/// A backup whose snapshot goes to the caller as a descriptor.
struct Handover {
    /// The caller's connection's.
    outbox: super::incoming::Outbox,
    /// The daemon's stop ends the hand-over (and empties the snapshot).
    shutdown: CancellationToken,
    /// Hand the snapshot over before its check, which runs while the caller copies.
    check_alongside: bool,
}

/// The snapshot of a hand-over: checked before it is handed over, or while the caller copies.
enum HandedOver {
    Unchecked(crate::backup::Unchecked),
    Prepared(crate::backup::Prepared),
}

/// Passes the snapshot's descriptor on the caller's connection with `started`, checked first
/// unless the caller copies while it is checked (then `checked` follows once the check passes),
/// then keeps the snapshot until the caller ends the call, its deadline passes or the daemon
/// stops. Returns what holds the snapshot: dropping it empties the snapshot, so a descriptor
/// kept beyond that reads nothing and holds no disk. The backup counts as made only when the
/// check passed and the client confirmed it had the whole archive.
async fn hand_over_backup(
    backups: &Backups,
    taken: crate::backup::Unchecked,
    Handover {
        outbox,
        shutdown,
        check_alongside,
    }: Handover,
    sender: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
) -> Option<HandedOver> {
    let fail = async |error: BackupError| {
        backups.finish(Err(&error));
        let _ = sender.send(Err(backup_error_to_status(&error))).await;
    };
    let handed = if check_alongside {
        HandedOver::Unchecked(taken)
    } else {
        match taken.check().await {
            Ok(prepared) => HandedOver::Prepared(prepared),
            Err(error) => {
                fail(error).await;
                return None;
            }
        }
    };
    let (opened, manifest, archive_bytes, small_members) = match &handed {
        HandedOver::Unchecked(taken) => (
            taken.open_snapshot(),
            &taken.manifest,
            taken.archive_bytes,
            taken.small_members(),
        ),
        HandedOver::Prepared(prepared) => (
            prepared.open_snapshot(),
            &prepared.manifest,
            prepared.archive_bytes,
            prepared.small_members(),
        ),
    };
    let opened = opened.and_then(|snapshot| {
        let failed = |source| BackupError::Read {
            path: "the snapshot's descriptor".into(),
            source,
        };
        // The copy kept here shares the file offset with the caller's.
        let kept = snapshot.try_clone().map_err(failed)?;
        let metadata = snapshot.metadata().map_err(failed)?;
        Ok((snapshot, kept, metadata))
    });
    let (snapshot, kept, metadata) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            fail(error).await;
            return Some(handed);
        }
    };
    if outbox.put(snapshot.into()).is_err() {
        let _ = sender
            .send(Err(Status::failed_precondition(
                "another descriptor is waiting on this connection; ask for one backup at a time per connection",
            )))
            .await;
        return Some(handed);
    }
    let deadline = handover_deadline(archive_bytes);
    let deadline_at = tokio::time::Instant::now() + deadline;
    let started = pb::BackupChunk {
        chunk: Some(pb::backup_chunk::Chunk::Started(pb::BackupStarted {
            archive_bytes,
            manifest_json: serde_json::to_string(manifest).expect("a manifest serializes"),
            descriptor: true,
            members: small_members
                .iter()
                .map(|(name, data)| pb::BackupMember {
                    name: name.clone(),
                    data: data.clone(),
                })
                .collect(),
            descriptor_deadline_seconds: deadline.as_secs(),
            descriptor_device: std::os::unix::fs::MetadataExt::dev(&metadata),
            descriptor_inode: std::os::unix::fs::MetadataExt::ino(&metadata),
            check_pending: matches!(handed, HandedOver::Unchecked(_)),
        })),
    };
    if sender.send(Ok(started)).await.is_err() {
        // The caller went away before its descriptor was written; the connection may live on.
        drop(outbox.take());
        return Some(handed);
    }
    let stopping = || Status::unavailable("blufiod is stopping; the snapshot was emptied: back up again once it runs");
    let prepared = match handed {
        HandedOver::Prepared(prepared) => prepared,
        HandedOver::Unchecked(taken) => {
            // Dropping the check (the caller went away, the daemon stops) empties the snapshot.
            let checked = tokio::select! {
                checked = taken.check() => checked,
                () = sender.closed() => return None,
                () = shutdown.cancelled() => {
                    let _ = sender.try_send(Err(stopping()));
                    return None;
                }
            };
            match checked {
                Ok(prepared) => {
                    let database_sha256 = prepared
                        .manifest
                        .members
                        .iter()
                        .find(|member| member.name == blufio_proto::backup::DATABASE)
                        .map(|member| member.sha256.clone())
                        .unwrap_or_default();
                    let checked = pb::BackupChunk {
                        chunk: Some(pb::backup_chunk::Chunk::Checked(pb::BackupChecked { database_sha256 })),
                    };
                    if sender.send(Ok(checked)).await.is_err() {
                        return Some(HandedOver::Prepared(prepared));
                    }
                    prepared
                }
                Err(error) => {
                    // A client that copies while the check runs keeps nothing without `checked`.
                    fail(error).await;
                    return None;
                }
            }
        }
    };
    let cut_short = tokio::select! {
        () = sender.closed() => None,
        () = tokio::time::sleep_until(deadline_at) => {
            let error = BackupError::HandoverDeadline { after: deadline };
            backups.finish(Err(&error));
            Some(Status::deadline_exceeded(error_chain(&error)))
        }
        () = shutdown.cancelled() => Some(stopping()),
    };
    if outbox.take().is_some() {
        // Never written: the connection took no more bytes before the call ended.
        return Some(HandedOver::Prepared(prepared));
    }
    match cut_short {
        Some(status) => {
            let _ = sender.try_send(Err(status));
        }
        // The client seeks to the end once it has the whole archive, verified.
        None if std::io::Seek::stream_position(&mut &kept).ok() == Some(metadata.len()) => {
            backups.finish(Ok((&prepared, Destination::HandedOver)));
        }
        None => tracing::debug!("a client ended its backup call before it confirmed the archive"),
    }
    Some(HandedOver::Prepared(prepared))
}

/// Drops a prepared backup on a blocking thread: emptying a large snapshot takes a while.
async fn drop_off_runtime(prepared: crate::backup::Prepared) {
    let _ = tokio::task::spawn_blocking(move || drop(prepared)).await;
}

/// How long a caller given the snapshot's descriptor may keep the one backup-or-restore place:
/// [`STREAM_STALL`], and a second for every 2 MiB of the archive (a disk slower than that is
/// better served by the stream, whose stall limit counts progress).
fn handover_deadline(archive_bytes: u64) -> Duration {
    STREAM_STALL + Duration::from_secs(archive_bytes / (2 << 20))
}

/// How long a backup waits for its client to take the next chunk, and a restore for the next
/// chunk from its client: a client that stops must not hold the one backup-or-restore place.
const STREAM_STALL: Duration = Duration::from_secs(60);

/// Sends what is written to it as `data` chunks of at most [`CHUNK_BYTES`] (from a blocking
/// thread), giving up when the client has taken nothing for [`STREAM_STALL`].
struct ChunkWriter {
    sender: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
    buffer: Vec<u8>,
    runtime: tokio::runtime::Handle,
}

impl ChunkWriter {
    fn new(sender: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>) -> Self {
        Self {
            sender,
            buffer: Vec::with_capacity(CHUNK_BYTES),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        let chunk = Ok(pb::BackupChunk {
            chunk: Some(pb::backup_chunk::Chunk::Data(data)),
        });
        self.runtime
            .block_on(self.sender.send_timeout(chunk, STREAM_STALL))
            .map_err(|error| match error {
                tokio::sync::mpsc::error::SendTimeoutError::Timeout(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client took nothing for {STREAM_STALL:?}"),
                ),
                tokio::sync::mpsc::error::SendTimeoutError::Closed(_) => {
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
                }
            })
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Reads the `data` chunks a client streams, for the blocking archive reader.
struct ChunkReader {
    receiver: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let read = std::io::Read::read(&mut self.current, buffer)?;
            if read > 0 || buffer.is_empty() {
                return Ok(read);
            }
            match self.receiver.blocking_recv() {
                Some(next) => self.current = std::io::Cursor::new(next),
                None => return Ok(0),
            }
        }
    }
}

/// Receives an archive from `incoming`, then restores it, sending each phase and the result.
async fn run_restore(
    backups: Arc<Backups>,
    agent: Arc<crate::agent::Agent>,
    vault: Arc<crate::vault::Vault>,
    mut incoming: tonic::Streaming<pb::RestoreChunk>,
    options: RestoreOptions,
    turn_timeout: Duration,
    sender: tokio::sync::mpsc::Sender<Result<pb::RestoreProgress, Status>>,
) {
    let phase = |name: &str| {
        Ok(pb::RestoreProgress {
            progress: Some(pb::restore_progress::Progress::Phase(name.to_owned())),
        })
    };
    let _ = sender.send(phase("receiving")).await;
    let (chunks, receiver) = tokio::sync::mpsc::channel(8);
    let receiving = {
        let backups = backups.clone();
        tokio::task::spawn_blocking(move || {
            backups.receive(ChunkReader {
                receiver,
                current: std::io::Cursor::new(Vec::new()),
            })
        })
    };
    loop {
        let Ok(message) = tokio::time::timeout(STREAM_STALL, incoming.message()).await else {
            tracing::warn!("a restore's client sent nothing for {STREAM_STALL:?}; nothing was changed");
            let _ = sender
                .send(Err(Status::deadline_exceeded(format!(
                    "nothing arrived for {STREAM_STALL:?}; nothing was changed"
                ))))
                .await;
            return;
        };
        match message {
            Ok(Some(pb::RestoreChunk {
                chunk: Some(pb::restore_chunk::Chunk::Data(data)),
            })) => {
                if chunks.send(data).await.is_err() {
                    break;
                }
            }
            Ok(Some(_)) => {
                let _ = sender
                    .send(Err(Status::invalid_argument(
                        "after `start`, a restore stream carries only data",
                    )))
                    .await;
                return;
            }
            Ok(None) => break,
            Err(status) => {
                // The client stopped sending: nothing was changed.
                tracing::warn!(%status, "a restore's archive stream broke off; nothing was changed");
                return;
            }
        }
    }
    drop(chunks);
    let received = match receiving.await {
        Ok(Ok(received)) => received,
        Ok(Err(error)) => {
            let _ = sender.send(Err(restore_error_to_status(&error))).await;
            return;
        }
        Err(_) => return,
    };
    let mut phases = backups.restore_phases();
    let restore = backups.restore(
        received,
        options,
        Online {
            agent: &agent,
            vault: &vault,
            turn_timeout,
        },
    );
    tokio::pin!(restore);
    let result = loop {
        tokio::select! {
            result = &mut restore => break result,
            changed = phases.changed() => {
                let now = *phases.borrow_and_update();
                if let (Ok(()), Some(now)) = (changed, now) {
                    let _ = sender.send(phase(now)).await;
                }
            }
        }
    };
    let message = result
        .map(|restored| pb::RestoreProgress {
            progress: Some(pb::restore_progress::Progress::Done(pb::RestoreResponse {
                manifest_json: serde_json::to_string(&restored.manifest).expect("a manifest serializes"),
                safety_copy: restored.safety_copy.display().to_string(),
                schema_version_from: restored.schema_from,
                schema_version_now: restored.schema_now,
                secrets_restored: restored.secrets_restored,
                config_restored: restored.config_restored,
                tls_restored: restored.tls_restored,
                turns_finished: u32::try_from(restored.turns_finished).unwrap_or(u32::MAX),
            })),
        })
        .map_err(|error| restore_error_to_status(&error));
    let _ = sender.send(message).await;
}

fn backup_error_to_status(error: &BackupError) -> Status {
    let message = error_chain(error);
    if error.is_full() {
        return Status::resource_exhausted(message);
    }
    match error {
        BackupError::Busy => Status::unavailable(message),
        BackupError::Integrity { .. } => Status::data_loss(message),
        _ => Status::internal(message),
    }
}

fn restore_error_to_status(error: &RestoreError) -> Status {
    let message = error_chain(error);
    match error {
        _ if error.is_refusal() => Status::invalid_argument(message),
        RestoreError::NewerSchema { .. } | RestoreError::ForeignVault { .. } => Status::failed_precondition(message),
        RestoreError::Busy | RestoreError::TurnsRunning { .. } => Status::unavailable(message),
        RestoreError::File { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) =>
        {
            Status::resource_exhausted(message)
        }
        _ => Status::internal(message),
    }
}

/// The config keys of `config` that name the secret `name`.
fn referring_keys(config: &config::Config, name: &str) -> Vec<String> {
    references(config)
        .into_iter()
        .filter(|(_, named)| named == name)
        .map(|(key, _)| key.to_owned())
        .collect()
}

fn vault_status_to_proto(status: VaultStatus) -> pb::GetVaultStatusResponse {
    let (argon2_memory_kib, argon2_iterations, argon2_parallelism) = match status.current.kdf {
        Kdf::Argon2id(params) => (params.m_cost_kib, params.t_cost, params.p_cost),
        Kdf::Hkdf => (0, 0, 0),
    };
    pb::GetVaultStatusResponse {
        key_source: status.source.kind.as_str().to_owned(),
        key_source_detail: status.source.describe(),
        key_beside_data: status.source.beside_data,
        kdf: status.current.kdf.as_str().to_owned(),
        argon2_memory_kib,
        argon2_iterations,
        argon2_parallelism,
        cipher: crate::vault::CIPHER.to_owned(),
        entries: status.entries as u64,
        key_created_at: status.current.created_at,
        pending: status.pending.map(|pending| pb::PendingVaultKey {
            key_source: pending.source.as_str().to_owned(),
            created_at: pending.created_at,
        }),
    }
}

fn phase_to_proto(phase: Phase) -> pb::DaemonState {
    match phase {
        Phase::Starting => pb::DaemonState::Starting,
        Phase::Ready => pb::DaemonState::Ready,
        Phase::Reloading => pb::DaemonState::Reloading,
        Phase::Stopping => pb::DaemonState::Stopping,
    }
}

fn entry_to_proto(entry: ConfigEntry, pending_restart: bool) -> pb::ConfigEntry {
    pb::ConfigEntry {
        key: entry.spec.key.to_owned(),
        value: entry.value_toml,
        value_json: entry.value_json,
        source: entry.source.as_str().to_owned(),
        secret: entry.spec.secret,
        restart_required: entry.spec.restart_required,
        unset: entry.unset,
        pending_restart,
    }
}

/// Maps a failed config write to the status code a client can act on.
fn write_error_to_status(error: &ConfigWriteError) -> Status {
    let message = error_chain(error);
    match error {
        ConfigWriteError::UnknownKey { .. }
        | ConfigWriteError::Rejected { .. }
        | ConfigWriteError::Refused { .. }
        | ConfigWriteError::LiteralSecret { .. } => Status::invalid_argument(message),
        ConfigWriteError::ParseFile { .. }
        | ConfigWriteError::NotATable { .. }
        | ConfigWriteError::BrokenElsewhere { .. }
        | ConfigWriteError::Read { .. } => Status::failed_precondition(message),
        ConfigWriteError::Write { source, .. } => match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Status::resource_exhausted(message),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Status::failed_precondition(message)
            }
            _ => Status::internal(message),
        },
    }
}

fn hook_run_to_proto(run: crate::hooks::Run) -> pb::HookRun {
    pb::HookRun {
        program: run.program,
        started_at: run.started_at,
        duration_seconds: run.duration.as_secs_f64(),
        outcome: run.outcome.as_str().to_owned(),
        exited: run.exit_code.is_some(),
        exit_code: run.exit_code.unwrap_or_default(),
        detail: run.detail,
    }
}

/// Log lines a `ReadLogs` stream buffers for its caller; a follower slower than that misses
/// lines (and is told how many) rather than making anything wait.
const LOG_STREAM_BUFFER: usize = 64;
/// `ReadLogs` streams open at once, all callers together.
const MAX_LOG_STREAMS: usize = 16;
/// Lines a follower takes from the ring at a time.
const LOG_FOLLOW_BATCH: usize = 256;

/// What `ReadLogs` with `follow` keeps reading after the recent lines.
struct Follow {
    ring: Arc<Ring>,
    changes: tokio::sync::watch::Receiver<u64>,
    next: u64,
    level: tracing::Level,
    shutdown: CancellationToken,
}

/// Sends the recent lines and then, following, each new one until the caller goes away or the
/// daemon stops.
async fn stream_logs(
    recent: Vec<Line>,
    follow: Option<Follow>,
    sender: tokio::sync::mpsc::Sender<Result<pb::LogLine, Status>>,
) {
    for line in recent {
        if sender.send(Ok(log_line_to_proto(line, 0))).await.is_err() {
            return;
        }
    }
    let Some(Follow {
        ring,
        mut changes,
        mut next,
        level,
        shutdown,
    }) = follow
    else {
        return;
    };
    let mut missed = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sender.closed() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        loop {
            let since = ring.since(next, level, LOG_FOLLOW_BATCH);
            missed += since.missed;
            next = since.next;
            let full = since.lines.len() == LOG_FOLLOW_BATCH;
            for line in since.lines {
                // A full buffer means a slow reader: skip the line, count it, never wait.
                match sender.try_send(Ok(log_line_to_proto(line, missed))) {
                    Ok(()) => missed = 0,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => missed += 1,
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            if !full {
                break;
            }
        }
    }
}

fn log_line_to_proto(line: Line, missed: u64) -> pb::LogLine {
    let level = match line.level {
        tracing::Level::ERROR => pb::LogLevel::Error,
        tracing::Level::WARN => pb::LogLevel::Warn,
        tracing::Level::INFO => pb::LogLevel::Info,
        tracing::Level::DEBUG => pb::LogLevel::Debug,
        tracing::Level::TRACE => pb::LogLevel::Trace,
    };
    pb::LogLine {
        seq: line.seq,
        unix_ms: line.unix_ms,
        level: level.into(),
        text: line.text.into(),
        missed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_is_resource_exhausted_and_names_the_file() {
        let error = ConfigWriteError::Write {
            path: "/etc/blufio/blufiod.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let status = write_error_to_status(&error);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("/etc/blufio/blufiod.toml"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("old file is unchanged"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn rejected_values_are_invalid_argument_with_the_problem() {
        let source = config::load_from(Some("[log]\nlevel = \"inof\"\n"), None, false).unwrap_err();
        let status = write_error_to_status(&ConfigWriteError::Rejected { source });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("log.level"), "{}", status.message());
    }
}
