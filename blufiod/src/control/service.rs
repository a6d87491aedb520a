//! The `blufio.control.v1.Control` service: authorization of each call, then conversion between
//! proto messages and the daemon's internal types, and precise status codes for failures.

use std::sync::Arc;

use blufio_proto::control::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{Peer, Policy};
use crate::config::{self, Access, ConfigEntry, ConfigError, ConfigWriteError};
use crate::error_chain;
use crate::state::{Phase, ReloadError, Shared};

/// The control service.
pub struct ControlService {
    shared: Arc<Shared>,
    policy: Policy,
}

impl ControlService {
    pub(super) fn new(shared: Arc<Shared>, policy: Policy) -> Self {
        Self { shared, policy }
    }

    /// Checks that the caller may make a call needing `needed`; returns the caller's access.
    fn authorize<T>(&self, request: &Request<T>, needed: Access, method: &str) -> Result<Access, Status> {
        let credentials = request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        let Some(credentials) = credentials else {
            return Err(Status::permission_denied(
                "the caller's credentials are unknown, so the call is refused; connect over the Unix socket",
            ));
        };
        let peer = Peer {
            uid: credentials.uid(),
            gid: credentials.gid(),
            pid: credentials.pid(),
        };
        let access = self
            .policy
            .access_of(peer, self.shared.config().config.control.group_access);
        if access >= needed {
            return Ok(access);
        }
        tracing::warn!(uid = peer.uid, method, "control call denied");
        Err(Status::permission_denied(format!(
            "uid {} has {} access but {method} needs {}: {}",
            peer.uid,
            access.as_str(),
            needed.as_str(),
            self.policy.hint(peer)
        )))
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let access = self.authorize(&request, Access::ReadOnly, "GetStatus")?;
        let status = self.shared.status();
        Ok(Response::new(pb::GetStatusResponse {
            state: phase_to_proto(status.phase) as i32,
            version: status.version.to_owned(),
            pid: status.pid,
            uptime_seconds: status.uptime.as_secs(),
            config_path: status.paths.config.display().to_string(),
            config_file_present: status.config_file_present,
            database_path: status.paths.database.display().to_string(),
            database_size_bytes: status.database_size_bytes,
            socket_path: status.paths.socket.display().to_string(),
            state_dir: status.paths.state_dir.display().to_string(),
            subsystems: status
                .subsystems
                .into_iter()
                .map(|(name, status)| pb::SubsystemStatus {
                    name: name.to_owned(),
                    status,
                })
                .collect(),
            sessions: None,
            memory: None,
            cost: None,
            previous_run_unclean: status.previous_run_unclean,
            caller_access: access.as_str().to_owned(),
        }))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        self.authorize(&request, Access::ReadOnly, "GetConfig")?;
        let key = request.into_inner().key;
        let key = (!key.is_empty()).then_some(key);
        let entries = self.shared.config_entries(key.as_deref()).ok_or_else(|| {
            Status::not_found(format!(
                "no config key {:?}; run `blufioctl config get` to list the keys",
                key.unwrap_or_default()
            ))
        })?;
        Ok(Response::new(pb::GetConfigResponse {
            entries: entries
                .into_iter()
                .map(|(entry, pending)| entry_to_proto(entry, pending))
                .collect(),
            config_path: self.shared.paths.config.display().to_string(),
        }))
    }

    async fn set_config(
        &self,
        request: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        self.authorize(&request, Access::Full, "SetConfig")?;
        let pb::SetConfigRequest { key, value } = request.into_inner();
        let outcome = self
            .shared
            .set_key(&key, &value)
            .await
            .map_err(|error| write_error_to_status(&error))?;
        let pending = !outcome.applied_live && outcome.entry.spec.restart_required;
        Ok(Response::new(pb::SetConfigResponse {
            config_path: self.shared.paths.config.display().to_string(),
            entry: Some(entry_to_proto(outcome.entry, pending)),
            applied_live: outcome.applied_live,
            restart_required: outcome.restart_required.into_iter().map(str::to_owned).collect(),
            overridden_by_env: outcome.overridden_by_env.unwrap_or_default(),
        }))
    }

    async fn validate_config(
        &self,
        request: Request<pb::ValidateConfigRequest>,
    ) -> Result<Response<pb::ValidateConfigResponse>, Status> {
        self.authorize(&request, Access::ReadOnly, "ValidateConfig")?;
        let pb::ValidateConfigRequest { toml, name } = request.into_inner();
        let outcome = if toml.is_empty() {
            self.shared.validate_own_file()
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
        Ok(Response::new(pb::ValidateConfigResponse {
            valid: errors.is_empty(),
            errors,
        }))
    }

    type SendMessageStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SendMessageResponse, Status>> + Send + 'static>>;

    async fn create_session(
        &self,
        _request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        Err(Status::unimplemented("in progress"))
    }

    async fn list_sessions(
        &self,
        _request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented("in progress"))
    }

    async fn get_session(
        &self,
        _request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        Err(Status::unimplemented("in progress"))
    }

    async fn delete_session(
        &self,
        _request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        Err(Status::unimplemented("in progress"))
    }

    async fn send_message(
        &self,
        _request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        Err(Status::unimplemented("in progress"))
    }

    async fn get_usage(
        &self,
        _request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        Err(Status::unimplemented("in progress"))
    }

    async fn reload_config(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        self.authorize(&request, Access::Full, "ReloadConfig")?;
        let change = self.shared.reload().await.map_err(|error| match &error {
            ReloadError::Load { source } => Status::failed_precondition(format!("{}:\n{}", error, error_chain(source))),
        })?;
        Ok(Response::new(pb::ReloadConfigResponse {
            applied: change.applied.into_iter().map(str::to_owned).collect(),
            restart_required: change.restart_required.into_iter().map(str::to_owned).collect(),
        }))
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
        ConfigWriteError::UnknownKey { .. } | ConfigWriteError::Rejected { .. } => Status::invalid_argument(message),
        ConfigWriteError::ParseFile { .. } | ConfigWriteError::Read { .. } => Status::failed_precondition(message),
        ConfigWriteError::Write { source, .. } => match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Status::resource_exhausted(message),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Status::failed_precondition(message)
            }
            _ => Status::internal(message),
        },
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
