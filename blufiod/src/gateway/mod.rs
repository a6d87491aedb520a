//! The HTTPS gateway for remote clients: hyper (HTTP/1.1 and HTTP/2) over rustls, every `/v1/`
//! request authenticated by an RFC 9421 Ed25519 signature of a registered device.
//!
//! Fail closed: there is no setting that turns authentication off; with no device registered,
//! every `/v1/` request is refused. Only `/health`, `/ready`, `/metrics` (optionally behind a
//! bearer token) and `/openapi.json` are open. Bounded: connections, header and body sizes, time
//! to send a request, requests per key per minute, remembered nonces.
//!
//! This module never sees a private key and never bypasses the agent's budget or queue: remote
//! turns go through the same `Agent::send_message` as local ones.

mod api;
mod auth;
mod connections;
mod host;
pub mod problem;
mod replay;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use self::tls::{CertSource, ReloadableCert, TlsError};
use crate::agent::Agent;
use crate::config::ConfigHandle;
use crate::config::GatewayConfig;
use crate::devices::Devices;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::secrets::Secrets;

/// Time a client has, from connecting, to send its first bytes and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection checks whether it has been idle too long.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Time connections get to finish their requests once shutdown begins.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listen address does not parse (config validation normally catches this).
    #[error("gateway.listen {listen:?} is not an address with a port")]
    ParseListen {
        /// The configured value.
        listen: String,
    },
    /// Binding the listener failed.
    #[error("cannot listen on {address} (gateway.listen); is another program using the port?")]
    Bind {
        /// The address.
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TLS material could not be loaded or generated.
    #[error("cannot set up TLS for the gateway")]
    Tls(#[source] TlsError),
    /// The accept loop failed.
    #[error("the gateway's listener failed")]
    Accept(#[source] std::io::Error),
    /// The replay journal (`<state_dir>/replay`) could not be opened.
    #[error("cannot open the gateway's replay journal")]
    Replay(#[source] replay::JournalError),
}

/// What `GetStatus` shows of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    /// The bound address (with the real port when 0 was configured).
    pub address: SocketAddr,
    /// `https` or `http`.
    pub scheme: &'static str,
    /// The serving certificate (absent for plain HTTP).
    pub cert: Option<Arc<ReloadableCert>>,
    /// Where the certificate comes from, for reloads.
    pub cert_source: Option<CertSource>,
}

impl GatewayInfo {
    /// Re-reads the certificate (SIGHUP). New handshakes use the new one; established
    /// connections keep theirs.
    pub fn reload_certificate(&self) -> Result<(), TlsError> {
        match (&self.cert, &self.cert_source) {
            (Some(cert), Some(source)) => cert.reload(source),
            _ => Ok(()),
        }
    }
}

/// A bound listener, ready to serve after `READY=1` is sent.
#[derive(Debug)]
pub struct BoundGateway {
    listener: std::net::TcpListener,
    metrics_listener: Option<std::net::TcpListener>,
    /// The nonces remembered, with those of the previous run loaded from its journal.
    replay: replay::ReplayCache,
    /// What status shows.
    pub info: GatewayInfo,
}

/// Binds the gateway and loads (or generates) its certificate: done before READY so that every
/// problem stops startup with a clear message.
pub fn bind(config: &GatewayConfig, state_dir: &Path) -> Result<BoundGateway, GatewayError> {
    let address: SocketAddr = crate::config::parse_listen(&config.listen).ok_or_else(|| GatewayError::ParseListen {
        listen: config.listen.clone(),
    })?;
    let (scheme, cert, cert_source) = if config.plain_http {
        ("http", None, None)
    } else {
        let source = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => {
                let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
                // A wildcard address names no host; the machine's own name is what clients use.
                if !address.ip().is_unspecified() {
                    names.push(address.ip().to_string());
                }
                if let Ok(host) = nix::unistd::gethostname()
                    && let Some(host) = host.to_str()
                    && !host.is_empty()
                {
                    names.push(host.to_owned());
                }
                CertSource::SelfSigned {
                    dir: state_dir.join("tls"),
                    names,
                }
            }
        };
        let cert = ReloadableCert::load(&source).map_err(GatewayError::Tls)?;
        ("https", Some(cert), Some(source))
    };
    let listener = std::net::TcpListener::bind(address).map_err(|source| GatewayError::Bind { address, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| GatewayError::Bind { address, source })?;
    let address = listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { address, source })?;
    let metrics_listener = match &config.metrics_listen {
        None => None,
        Some(listen) => {
            let metrics_address = crate::config::parse_listen(listen)
                .ok_or_else(|| GatewayError::ParseListen { listen: listen.clone() })?;
            let bind_error = |source| GatewayError::Bind {
                address: metrics_address,
                source,
            };
            let listener = std::net::TcpListener::bind(metrics_address).map_err(bind_error)?;
            listener.set_nonblocking(true).map_err(bind_error)?;
            Some(listener)
        }
    };
    // Opened before READY, so that nonces accepted before a restart are refused after it.
    let replay = replay::ReplayCache::open(
        usize::try_from(config.replay_cache_entries).unwrap_or(usize::MAX),
        config.rate_limit_per_minute,
        // A signature stays acceptable for `skew` either side of `created`, so its nonce must be
        // remembered for twice that.
        i64::try_from(config.max_clock_skew_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(2),
        &state_dir.join("replay"),
        crate::util::unix_now(),
    )
    .map_err(GatewayError::Replay)?;
    Ok(BoundGateway {
        listener,
        metrics_listener,
        replay,
        info: GatewayInfo {
            address,
            scheme,
            cert,
            cert_source,
        },
    })
}

/// Whether the first bytes of a just-accepted connection are already there (a client sends its
/// TLS hello or request head as soon as it is connected), looked at without waiting or reading.
fn has_spoken(stream: &tokio::net::TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd as _;
    let mut first = [0u8; 1];
    matches!(
        recv(
            stream.as_raw_fd(),
            &mut first,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(1..)
    )
}

/// Bytes of request bodies buffered at once across all connections (at least one whole body of
/// `gateway.max_body_bytes`): only signed requests of registered devices get this far, and even
/// they cannot make the daemon hold more.
const BODY_BUFFER_TOTAL: usize = 16 * 1024 * 1024;
/// HTTP/2 flow-control windows: what a client may send before the daemon reads it. The
/// connection window bounds what one connection can make hyper buffer, however many streams it
/// opens, including streams whose bodies are never read because their heads were refused.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
const H2_SEND_BUFFER: usize = 16 * 1024;
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 16;
/// Once an unauthenticated connection is being closed for idleness, how long its in-flight
/// responses get before it is dropped: a client that neither reads them nor acknowledges the
/// close cannot keep it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Everything a request handler needs.
pub struct Gateway {
    agent: Arc<Agent>,
    lifecycle: Arc<Lifecycle>,
    config: ConfigHandle,
    secrets: Arc<Secrets>,
    devices: Devices,
    replay: replay::ReplayCache,
    /// The names requests must be addressed to (besides the live `gateway.server_names`).
    names: host::ServerNames,
    /// Permits are bytes of request bodies being buffered.
    body_budget: Arc<Semaphore>,
    /// The readiness checks `/ready` runs.
    health: Arc<crate::health::Health>,
    limiter: auth::RateLimiter,
    metrics: Arc<Metrics>,
    /// The exposition last rendered for `/metrics` and when: scrapes within
    /// a second share it, so that many slow scrapers hold one copy (`api/probes.rs`).
    exposition: std::sync::Mutex<Option<(Instant, bytes::Bytes)>>,
    /// The memory monitor (`/v1/status`).
    memory: Arc<crate::memory::Monitor>,
    scheme: &'static str,
    /// Fixed at start: remembered nonces were sized for it (`gateway.max_clock_skew_secs` is
    /// restart-only).
    max_skew_secs: i64,
}

/// What the gateway uses of the rest of the daemon.
pub struct GatewayDeps {
    /// The agent remote turns and sessions go to.
    pub agent: Arc<Agent>,
    /// The daemon's phase and uptime (`/v1/status`).
    pub lifecycle: Arc<Lifecycle>,
    /// The live configuration.
    pub config: ConfigHandle,
    /// The secrets resolver (the metrics token).
    pub secrets: Arc<Secrets>,
    /// The one metrics registry.
    pub metrics: Arc<Metrics>,
    /// The memory monitor: `/v1/status` reports it, and the rate limiter sheds its idle keys
    /// at its warn level.
    pub memory: Arc<crate::memory::Monitor>,
    /// The readiness checks `/ready` runs.
    pub health: Arc<crate::health::Health>,
    /// The device registry (the same one the control plane changes).
    pub devices: Devices,
}

/// Serves until `token` is cancelled, then lets open requests finish for a few seconds.
pub async fn serve(bound: BoundGateway, deps: GatewayDeps, token: CancellationToken) -> Result<(), GatewayError> {
    let GatewayDeps {
        agent,
        lifecycle,
        config: live,
        secrets,
        metrics,
        memory,
        health,
        devices,
    } = deps;
    let config = live.get().config.gateway.clone();
    let listener = tokio::net::TcpListener::from_std(bound.listener).map_err(GatewayError::Accept)?;
    let acceptor = match &bound.info.cert {
        Some(cert) => Some(tokio_rustls::TlsAcceptor::from(
            tls::server_config(cert.clone()).map_err(GatewayError::Tls)?,
        )),
        None => None,
    };
    let gateway = Arc::new(Gateway {
        devices,
        replay: bound.replay,
        names: host::ServerNames::new(bound.info.address, bound.info.cert.clone()),
        body_budget: Arc::new(Semaphore::new(BODY_BUFFER_TOTAL)),
        health,
        limiter: auth::RateLimiter::new(config.rate_limit_per_minute),
        metrics,
        exposition: std::sync::Mutex::new(None),
        memory,
        scheme: bound.info.scheme,
        max_skew_secs: i64::try_from(config.max_clock_skew_secs).unwrap_or(i64::MAX),
        agent,
        lifecycle,
        config: live,
        secrets,
    });
    // Each device may hold its share of the replay cache; when two shares do not fit, one busy
    // device can fill the cache and lock the others out until its nonces expire.
    let share = gateway.replay.share();
    let entries = usize::try_from(config.replay_cache_entries).unwrap_or(usize::MAX);
    if share.saturating_mul(2) > entries {
        tracing::warn!(
            share,
            replay_cache_entries = entries,
            "one device may hold {share} remembered nonces (gateway.rate_limit_per_minute over the clock-skew window), more than half of gateway.replay_cache_entries: a busy device could lock the others out; raise replay_cache_entries or lower rate_limit_per_minute"
        );
    }
    let shedding = Arc::downgrade(&gateway);
    gateway.memory.on_shed("rate-limiter-keys", move || {
        shedding.upgrade().map_or(0, |gateway| gateway.limiter.shed_idle())
    });
    let replay = Arc::downgrade(&gateway);
    gateway.metrics.register_scraped(
        &[(
            "gateway_replay_cache_entries",
            "Nonces remembered for replay protection.",
        )],
        move || Some(vec![replay.upgrade()?.replay.len() as f64]),
    );
    if let Some(listener) = bound.metrics_listener {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(GatewayError::Accept)?;
        let address = listener.local_addr().map_err(GatewayError::Accept)?;
        tokio::spawn(serve_metrics(
            listener,
            host::ServerNames::new(address, None),
            gateway.clone(),
            token.clone(),
        ));
    }
    let registry = Arc::new(connections::Connections::new(
        usize::try_from(config.max_connections).unwrap_or(1),
        usize::try_from(config.max_connections_per_address).unwrap_or(1),
    ));
    // Every connection task, so that shutdown can wait for them.
    let connections = tokio_util::task::TaskTracker::new();
    tracing::info!(address = %bound.info.address, scheme = bound.info.scheme, "gateway serving");

    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small answers go out at once, not after Nagle's delay (the backup bench found a
        // quarter of signed GETs waiting about 20 ms for it).
        let _ = stream.set_nodelay(true);
        // At a cap the connection is closed at once: a client over its address's share, or
        // arriving when every slot is held by an authenticated client, must not hold a
        // descriptor while it waits.
        let connection = match registry.admit(peer.ip(), has_spoken(&stream)) {
            Ok(connection) => connection,
            Err(refusal) => {
                gateway.metrics.auth_failures.with_label_values(&[refusal.kind()]).inc();
                tracing::debug!(%peer, %refusal, "gateway connection refused");
                drop(stream);
                continue;
            }
        };
        let gateway = gateway.clone();
        let acceptor = acceptor.clone();
        let token = token.clone();
        let registry = registry.clone();
        connections.spawn(async move {
            gateway.metrics.open_connections.inc();
            // The builder is made per connection from the configuration of the moment, so the
            // live keys (header size, timeouts) apply to every new connection.
            let builder = connection_builder(&gateway.config.get().config.gateway);
            let requests = Arc::new(AtomicU64::new(0));
            let service = hyper::service::service_fn({
                let gateway = gateway.clone();
                let requests = requests.clone();
                let connection = connection.clone();
                move |mut request: http::Request<Incoming>| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    request.extensions_mut().insert(connection.clone());
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle(request).await) }
                }
            });
            // Its first bytes (a TLS hello, a request head) mark the connection as speaking: at a
            // cap, silent ones are evicted first, so a flood of idle connections cannot push out a
            // client in its handshake.
            // (`peek`, not `readable`: readiness can be reported before any byte has come.)
            let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
            let mut first = [0u8; 1];
            let spoke = tokio::select! {
                peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => matches!(peeked, Ok(Ok(1..))),
                () = connection.evicted() => false,
            };
            let outcome = match acceptor {
                _ if !spoke => {
                    tracing::debug!(%peer, "connection closed before it sent anything, or evicted");
                    Ok(())
                }
                Some(acceptor) => {
                    connection.mark_spoke();
                    let handshake = tokio::select! {
                        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => handshake.ok(),
                        () = connection.evicted() => None,
                    };
                    match handshake {
                        Some(Ok(tls)) => {
                            let served = builder.serve_connection(TokioIo::new(tls), service);
                            drive(served, &requests, &gateway, &connection, &token).await
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            Ok(())
                        }
                        None => {
                            tracing::debug!(%peer, "TLS handshake timed out or was evicted");
                            Ok(())
                        }
                    }
                }
                None => {
                    connection.mark_spoke();
                    let served = builder.serve_connection(TokioIo::new(stream), service);
                    drive(served, &requests, &gateway, &connection, &token).await
                }
            };
            if let Err(error) = outcome {
                tracing::debug!(%peer, %error, "gateway connection ended with an error");
            }
            registry.release(&connection);
            gateway.metrics.open_connections.dec();
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(CONNECTION_DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("gateway connections did not finish within {CONNECTION_DRAIN:?}; closing them");
    }
    tracing::info!("gateway drained");
    Ok(())
}

/// A hyper connection builder for the gateway's current configuration.
fn connection_builder(config: &GatewayConfig) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let request_timeout = Duration::from_secs(config.request_timeout_secs);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        // hyper refuses a request head larger than its read buffer (431).
        .max_buf_size(usize::try_from(config.max_header_bytes).unwrap_or(usize::MAX).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // What hyper buffers per stream for a client that does not read its responses.
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(config.idle_timeout_secs)))
        .keep_alive_timeout(request_timeout)
        // Each open stream costs hyper's state (about 10 KiB) even when the client never reads:
        // 16 per connection bounds what unauthenticated connections can make the daemon hold
        // (gateway.max_connections x 16 streams).
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

/// Serves one connection until it ends. It is closed gracefully (in-flight responses finish,
/// streams included) when shutdown begins, or when a whole idle period passes without a new
/// request: `gateway.idle_timeout_secs` once a request on it authenticated; before that, it lives
/// [`connections::UNAUTHENTICATED_IDLE`] from its start whatever unsigned requests it sends. A
/// client that connects and sends nothing, or only unsigned requests, cannot hold one of the
/// connection slots; and at the cap, an unauthenticated connection is evicted to make room.
async fn drive<C>(
    served: C,
    requests: &AtomicU64,
    gateway: &Gateway,
    connection: &connections::Connection,
    token: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulConnection,
{
    tokio::pin!(served);
    let opened = Instant::now();
    let mut seen = requests.load(Ordering::Relaxed);
    let mut last_request = Instant::now();
    let mut closing = false;
    let close_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(close_deadline);
    loop {
        // The allowed idle time is judged afresh on each tick: it changes when a request
        // authenticates and when `gateway.idle_timeout_secs` is set live.
        let idle = if connection.is_authenticated() {
            Duration::from_secs(gateway.config.get().config.gateway.idle_timeout_secs)
        } else {
            connections::UNAUTHENTICATED_IDLE
        };
        tokio::select! {
            outcome = served.as_mut() => return outcome,
            () = connection.evicted() => return Ok(()),
            () = &mut close_deadline, if closing => return Ok(()),
            () = token.cancelled(), if !closing => {
                // Shutdown: responses in flight (streams included) get the whole drain time.
                served.as_mut().shut_down();
                closing = true;
            }
            () = tokio::time::sleep(IDLE_TICK.min(idle)), if !closing => {
                let now = requests.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    last_request = Instant::now();
                }
                // Until a request authenticates, the clock runs from the connection's start:
                // unsigned requests (to open routes or refused ones) do not keep it alive.
                let quiet_since = if connection.is_authenticated() { last_request } else { opened };
                if quiet_since.elapsed() >= idle {
                    served.as_mut().shut_down();
                    closing = true;
                    // An unauthenticated connection has nothing worth waiting for (its answers
                    // are short refusals): one that neither reads them nor acknowledges the close
                    // is dropped. An authenticated one may be streaming a turn; it finishes.
                    if !connection.is_authenticated() {
                        close_deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}

/// A connection that can be asked to finish its work and close.
trait GracefulConnection {
    fn shut_down(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulConnection for hyper_util::server::conn::auto::Connection<'_, I, S, E>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<problem::Body>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, problem::Body>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Connections the metrics listener serves at once: scrapers are few.
const METRICS_CONNECTIONS: usize = 16;
/// Time a metrics client has to send its request head.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a newcomer at the cap waits for a slot to free itself before a silent connection
/// is dropped for it.
const METRICS_SLOT_GRACE: Duration = Duration::from_millis(100);
/// The longest a metrics connection lives.
const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The plain-HTTP loopback listener for local scrapers: `/metrics` and `/health` only. It stops
/// on the same token as the gateway.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    names: host::ServerNames,
    gateway: Arc<Gateway>,
    token: CancellationToken,
) {
    let names = Arc::new(names);
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    // Connections that have not sent a request head yet, oldest first: at the cap, the oldest of
    // them makes room, so silent connections cannot keep a scraper out.
    let silent: Arc<std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>> = Arc::default();
    let mut next_id: u64 = 0;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics listener serving");
    }
    loop {
        let stream = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // At the cap, a slot that frees itself within a moment is taken first: a connection that
        // has just answered gives its slot back a moment after the client sees it close. Only
        // then is the oldest silent connection dropped to make room; with none, the newcomer is
        // closed at once rather than left waiting in the backlog.
        let freed = match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout(METRICS_SLOT_GRACE, slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        let permit = match freed {
            Some(permit) => permit,
            None => {
                let oldest = silent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop_front();
                let Some((_, evict)) = oldest else {
                    drop(stream);
                    continue;
                };
                evict.cancel();
                match tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let evicted = CancellationToken::new();
        silent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back((id, evicted.clone()));
        let spoke = {
            let silent = silent.clone();
            move || {
                silent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retain(|(waiting, _)| *waiting != id);
            }
        };
        let gateway = gateway.clone();
        let token = token.clone();
        let names = names.clone();
        let forget = spoke.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let gateway = gateway.clone();
                let names = names.clone();
                spoke();
                async move {
                    let (parts, body) = request.into_parts();
                    let config = gateway.config.get();
                    if let Err(problem) = host::check(&parts, &names, &config.config.gateway.server_names) {
                        return Ok::<_, Infallible>(problem.response());
                    }
                    let request = http::Request::from_parts(parts, body);
                    let response = match request.uri().path() {
                        "/metrics" | "/health" => api::route(&gateway, request).await.1,
                        path => problem::Problem::new(
                            http::StatusCode::NOT_FOUND,
                            "not-found",
                            "Not found",
                            format!(
                                "the metrics listener serves /metrics and /health only, not {}",
                                problem::shown(path)
                            ),
                        )
                        .response(),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            // One request per connection, a short time to send it and a short life: a local
            // client cannot hold a slot by keeping a connection alive.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(false)
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_LIFETIME, async {
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = evicted.cancelled() => {}
                    () = token.cancelled() => connection.as_mut().graceful_shutdown(),
                }
            })
            .await;
            forget();
        });
    }
}

impl Gateway {
    /// Checks the head's target, routes one request and records its metrics.
    async fn handle(self: &Arc<Self>, request: http::Request<Incoming>) -> http::Response<problem::Body> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let config = self.config.get();
        let checked = host::check(&parts, &self.names, &config.config.gateway.server_names);
        drop(config);
        let (route, response) = match checked {
            Ok(()) => api::route(self, http::Request::from_parts(parts, body)).await,
            Err(problem) => {
                self.metrics.auth_failures.with_label_values(&[problem.kind]).inc();
                ("unknown", problem.response())
            }
        };
        self.metrics
            .http_requests
            .with_label_values(&[route, response.status().as_str()])
            .inc();
        self.metrics
            .http_duration
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
        response
    }
}
