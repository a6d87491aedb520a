//! The local control plane: gRPC (`blufio.control.v1`) on a Unix socket, plus the standard
//! `grpc.health.v1` health service and server reflection (v1 and v1alpha) so that stock tools
//! such as grpcurl work against the socket.
//!
//! This is the only module of the daemon that sees proto types; it converts them to and from
//! internal types. It never opens the database or the config file itself: it asks the subsystems in
//! [`ControlDeps`].

mod auth;
mod guard;
mod incoming;
mod metered;
mod service;
pub mod socket;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blufio_proto::control::v1 as pb;
use tokio_util::sync::CancellationToken;

pub use auth::{Policy, resolve_group};

use crate::agent::Agent;
use crate::config::LiveConfig;
use crate::devices::Devices;
use crate::events::EventBus;
use crate::gateway::GatewayInfo;
use crate::health::Health;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// What the control plane uses of the rest of the daemon.
#[derive(Debug)]
pub struct ControlDeps {
    /// Identity, paths, phase and reload.
    pub lifecycle: Arc<Lifecycle>,
    /// The live configuration (get, set, validate).
    pub live: Arc<LiveConfig>,
    /// Sessions and turns.
    pub agent: Arc<Agent>,
    /// The database (status figures).
    pub storage: Storage,
    /// The device registry (the same one the gateway reads).
    pub devices: Devices,
    /// The health checks (`GetStatus`'s health line).
    pub health: Arc<Health>,
    /// Where device changes are announced.
    pub events: Arc<EventBus>,
    /// The gateway's address and certificate, when it is enabled.
    pub gateway: Option<GatewayInfo>,
    /// The one metrics registry (calls on the socket, and `GetMetrics`).
    pub metrics: Arc<Metrics>,
    /// The memory monitor (`GetStatus`).
    pub memory: Arc<crate::memory::Monitor>,
    /// The secrets resolver and its vault (secret and vault RPCs, the key source in status).
    pub secrets: Arc<crate::secrets::Secrets>,
    /// Backups and restores.
    pub backups: Arc<crate::backup::Backups>,
    /// The recent log lines (`ReadLogs`).
    pub logs: Arc<crate::logging::Ring>,
    /// The hooks (`ListHooks`, `TestHook`).
    pub hooks: Arc<crate::hooks::Hooks>,
}

/// How long one control-plane request may take before the server cancels it. Long enough for a
/// config write on a slow disk; streaming RPCs of later subsystems set their own deadlines.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent requests per connection: a local client never needs more, and a runaway one
/// cannot queue without bound.
const CONCURRENCY_PER_CONNECTION: usize = 32;
/// Largest request message the daemon decodes: the largest legitimate one is a 256 KiB chat
/// message, and tonic's default (4 MiB) would let a caller make the daemon buffer far more.
const MAX_MESSAGE_BYTES: usize = 320 * 1024;
/// Connections are closed gracefully (GOAWAY; calls in flight finish, turns included) at this
/// age, so idle ones do not hold a slot for ever; clients reconnect on their next call.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);
/// How long connections get to finish once the daemon stops.
const CONNECTION_DRAIN: Duration = Duration::from_secs(3);
/// HTTP/2 pings find peers that went away without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors from the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The bound listener could not be handed to tokio.
    #[error("cannot register the control socket with the runtime")]
    Register {
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the embedded descriptors.
    #[error("cannot build the gRPC reflection service")]
    Reflection {
        #[source]
        source: tonic_reflection::server::Error,
    },
    /// The server stopped with an error.
    #[error("the control server failed")]
    Serve {
        #[source]
        source: tonic::transport::Error,
    },
}

/// Serves the control plane on `listener` until `token` is cancelled, then drains.
pub async fn serve(
    deps: ControlDeps,
    listener: std::os::unix::net::UnixListener,
    policy: Policy,
    token: CancellationToken,
) -> Result<(), ControlError> {
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|source| ControlError::Register { source })?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::control_server::ControlServer<service::ControlService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|source| ControlError::Reflection { source })?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|source| ControlError::Reflection { source })?;
    let slots = incoming::Slots::new(policy.daemon_uid);
    // Every call, of every service, is authorized before its body is read.
    let guard = guard::GuardLayer::new(policy.clone(), deps.live.handle());
    let metered = metered::MeteredLayer::new(deps.metrics.clone());
    let control = pb::control_server::ControlServer::new(service::ControlService::new(deps, policy, token.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    tracing::info!("control plane serving");
    let stopping = token.clone();
    let server = tonic::transport::Server::builder()
        // Outermost: refused calls are counted too.
        .layer(metered)
        .layer(guard)
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        // Streams a connection may open at once, bodies or not: without it one connection could
        // hold hundreds of half-sent messages.
        .max_concurrent_streams(Some(CONCURRENCY_PER_CONNECTION as u32))
        .max_connection_age(MAX_CONNECTION_AGE)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Every service decodes at most MAX_MESSAGE_BYTES, not only Control.
        .add_service(health.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(reflection_v1.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(reflection_v1alpha.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(control)
        .serve_with_incoming_shutdown(incoming::incoming(listener, slots), async move {
            token.cancelled().await;
            health_reporter
                .set_not_serving::<pb::control_server::ControlServer<service::ControlService>>()
                .await;
        });
    // The graceful drain waits for every connection; one client that stopped reading would hold
    // the whole daemon's stop to its timeout. Past CONNECTION_DRAIN the rest are dropped.
    tokio::select! {
        served = server => served.map_err(|source| ControlError::Serve { source })?,
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(CONNECTION_DRAIN).await;
        } => tracing::warn!("control connections did not finish within {CONNECTION_DRAIN:?}; closing them"),
    }
    tracing::info!("control plane drained");
    Ok(())
}

/// The watchdog's control probe: connects to the socket as a client would and asks the health
/// service, proving that the accept loop and the request path both make progress.
pub async fn probe(socket: &Path) -> Result<(), String> {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|error| format!("cannot connect: {error}"))?;
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: pb::SERVICE_NAME.to_owned(),
        })
        .await
        .map_err(|status| format!("health check failed: {}", status.message()))?;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    if response.into_inner().status == serving {
        Ok(())
    } else {
        Err("the control service reports NOT_SERVING".to_owned())
    }
}
