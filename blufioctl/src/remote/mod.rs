//! `blufioctl remote`: the same conversations and session commands as over the local socket, but
//! against a blufiod HTTPS gateway, with every request signed by a device key (RFC 9421).
//!
//! The gateway's JSON is converted into the proto types the local commands use, so that
//! rendering (tables, streamed turns, `--json` documents) is shared with them. This module never
//! reads the daemon's files and never sends the private key anywhere; it decides no exit codes
//! (`main` maps [`RemoteError`]).

mod http;
mod sign;
mod sse;
mod tls;
mod url;

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use ::http::{Method, StatusCode};
use blufio_proto::control::v1::send_message_response::Event;
use blufio_proto::control::v1::{
    Accepted, ChatMessage, CostStatus, DaemonState, DayUsage, GetSessionResponse, GetStatusResponse, GetUsageResponse,
    ListSessionsResponse, MemoryStatus, ModelUsage, Session, SessionUsage, SessionsStatus, TextDelta, TokenUsage,
    ToolActivity, TurnCompleted,
};
use blufio_proto::httpsig::{self, KeyError};
use ed25519_dalek::SigningKey;
use serde::Deserialize;

use crate::chat::{Echo, Transcript};
pub use tls::Pin;
pub use url::BaseUrl;
use url::Endpoint;

/// How long to wait for the TCP connection and the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of an unexpected (non-problem) error body quoted in a message.
const QUOTED_BODY: usize = 200;

/// Why a remote command failed.
#[derive(Debug)]
pub enum RemoteError {
    /// `--key` cannot be read.
    ReadKey { path: PathBuf, source: io::Error },
    /// `--key` is not a PKCS#8 ed25519 private key.
    ParseKey { path: PathBuf, source: KeyError },
    /// The HTTP client could not be set up.
    Setup { source: Box<dyn StdError + Send + Sync> },
    /// A request could not be signed.
    Sign(sign::SignError),
    /// Nothing usable answers at the URL: connection refused, name not resolved, TLS failure.
    Unreachable {
        /// `scheme://host[:port]` of the gateway, as in all variants that name it.
        origin: String,
        reason: String,
        /// The server's certificate was refused by the default (non-pinned) verification.
        certificate_refused: bool,
    },
    /// The server's certificate is not the one `--pin` names.
    PinMismatch { origin: String, actual: Pin, pin: Pin },
    /// The gateway did not answer in time.
    Timeout { origin: String, after: Duration },
    /// The gateway refused the request with an RFC 9457 problem document (or a turn failed with
    /// the same fields in an `error` event).
    Problem {
        status: u16,
        kind: String,
        title: String,
        detail: String,
    },
    /// The answer is not what the gateway sends: the URL is probably not a blufio gateway.
    Protocol { origin: String, detail: String },
    /// The connection broke while reading the answer.
    Transport { origin: String, reason: String },
    /// The turn's stream ended without `completed`.
    NoAnswer,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::ReadKey { path, .. } => write!(f, "cannot read key file {}", path.display()),
            // The key error alone: the PEM/ASN.1 causes below it repeat themselves.
            RemoteError::ParseKey { path, source } => write!(f, "cannot use key file {}: {source}", path.display()),
            RemoteError::Setup { .. } => f.write_str("cannot set up the HTTPS client"),
            RemoteError::Sign(error) => error.fmt(f),
            RemoteError::Unreachable { origin, reason, .. } => {
                write!(f, "cannot reach the gateway at {origin}: {reason}")
            }
            RemoteError::PinMismatch { origin, actual, .. } => write!(
                f,
                "the certificate of {origin} has the SHA-256 fingerprint {actual}, which does not match --pin"
            ),
            RemoteError::Timeout { origin, after } => {
                write!(f, "the gateway at {origin} did not answer within {}s", after.as_secs())
            }
            RemoteError::Problem {
                status, title, detail, ..
            } => {
                if !detail.is_empty() {
                    f.write_str(detail)
                } else if !title.is_empty() {
                    f.write_str(title)
                } else {
                    write!(f, "the gateway answered {status}")
                }
            }
            RemoteError::Protocol { origin, detail } => write!(f, "unexpected answer from {origin}: {detail}"),
            RemoteError::Transport { origin, reason } => write!(f, "the connection to {origin} broke: {reason}"),
            RemoteError::NoAnswer => f.write_str("the turn ended without an answer"),
        }
    }
}

impl StdError for RemoteError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            RemoteError::ReadKey { source, .. } => Some(source),
            RemoteError::Setup { source } => Some(source.as_ref()),
            RemoteError::Sign(error) => error.source(),
            _ => None,
        }
    }
}

impl RemoteError {
    /// The last segment of a problem's `type` (such as `key-unknown`), for hints.
    pub fn problem_kind(&self) -> Option<&str> {
        match self {
            RemoteError::Problem { kind, .. } => Some(kind.rsplit('/').next().unwrap_or(kind)),
            _ => None,
        }
    }
}

/// `scheme://host[:port]` of a URL, for messages.
fn origin(url: &Endpoint) -> String {
    url.origin()
}

/// Reads a device's private key. Returns the key, and a warning when the file is readable by
/// others than its owner.
pub fn read_key(path: &Path) -> Result<(SigningKey, Option<String>), RemoteError> {
    use std::os::unix::fs::PermissionsExt as _;
    let text = std::fs::read_to_string(path).map_err(|source| RemoteError::ReadKey {
        path: path.to_path_buf(),
        source,
    })?;
    let key = httpsig::signing_key_from_pkcs8_pem(&text).map_err(|source| RemoteError::ParseKey {
        path: path.to_path_buf(),
        source,
    })?;
    let warning = std::fs::metadata(path)
        .ok()
        .filter(|metadata| metadata.permissions().mode() & 0o077 != 0)
        .map(|metadata| {
            format!(
                "key file {} is accessible by others (mode {:04o}); restrict it with chmod 600",
                path.display(),
                metadata.permissions().mode() & 0o7777
            )
        });
    Ok((key, warning))
}

/// A client of one gateway.
pub struct Gateway {
    http: http::Client,
    base: BaseUrl,
    signer: sign::Signer,
    pin: Option<(Pin, Arc<tls::PinRecord>)>,
    call_timeout: Duration,
}

impl Gateway {
    /// A client for the gateway at `base`, signing with `key` as `keyid` (default: the key's
    /// fingerprint). With `pin`, only the certificate it names is trusted; without, the system's
    /// certificate authorities. Each non-streaming request waits at most `call_timeout`.
    pub fn new(
        base: BaseUrl,
        key: SigningKey,
        keyid: Option<String>,
        pin: Option<Pin>,
        call_timeout: Duration,
    ) -> Result<Gateway, RemoteError> {
        let setup = |source: rustls::Error| RemoteError::Setup {
            source: Box::new(source),
        };
        // Plain `http` needs no TLS configuration: the platform verifier reads the system's
        // certificate authorities when it is made, and a host may have none.
        let (config, pin) = match (base.scheme(), pin) {
            (url::Scheme::Http, _) => (None, None),
            (url::Scheme::Https, Some(pin)) => {
                let record = Arc::new(tls::PinRecord::default());
                let config = tls::pinned_client_config(pin, Arc::clone(&record)).map_err(setup)?;
                (Some(config), Some((pin, record)))
            }
            (url::Scheme::Https, None) => (Some(tls::platform_client_config().map_err(setup)?), None),
        };
        let http = http::Client::new(&base, config, CONNECT_TIMEOUT).map_err(|source| RemoteError::Setup {
            source: Box::new(source),
        })?;
        Ok(Gateway {
            http,
            base,
            signer: sign::Signer::new(key, keyid),
            pin,
            call_timeout,
        })
    }

    /// `GET /v1/sessions`.
    pub async fn list_sessions(&self) -> Result<ListSessionsResponse, RemoteError> {
        let (url, response) = self.send(Method::GET, &["v1", "sessions"], None, true).await?;
        let list: SessionListJson = self.read_json(&url, response).await?;
        Ok(ListSessionsResponse {
            sessions: list.sessions.into_iter().map(Session::from).collect(),
            next_cursor: list.next_cursor.unwrap_or_default(),
        })
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn get_session(&self, id: &str) -> Result<GetSessionResponse, RemoteError> {
        let (url, response) = self.send(Method::GET, &["v1", "sessions", id], None, true).await?;
        let shown: SessionShowJson = self.read_json(&url, response).await?;
        Ok(GetSessionResponse {
            session: Some(Session::from(shown.session)),
            messages: shown
                .messages
                .into_iter()
                .map(|message| ChatMessage {
                    id: message.id,
                    role: message.role,
                    text: message.text,
                    created_at: message.created_at,
                    ..ChatMessage::default()
                })
                .collect(),
            next_cursor: shown.next_cursor.unwrap_or_default(),
        })
    }

    /// `GET /v1/status`, as a `GetStatus` answer holding what the gateway shows (no paths, pid or
    /// subsystems).
    pub async fn status(&self) -> Result<GetStatusResponse, RemoteError> {
        let (url, response) = self.send(Method::GET, &["v1", "status"], None, true).await?;
        let status: StatusJson = self.read_json(&url, response).await?;
        Ok(status.into())
    }

    /// `GET /v1/usage?days=N`, as the `GetUsage` answer the local `usage` view renders.
    pub async fn usage(&self, days: u32) -> Result<GetUsageResponse, RemoteError> {
        let query = format!("days={days}");
        let (url, response) = self
            .send_query(Method::GET, &["v1", "usage"], Some(&query), None, true)
            .await?;
        let report: UsageReportJson = self.read_json(&url, response).await?;
        Ok(report.into())
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn delete_session(&self, id: &str) -> Result<(), RemoteError> {
        self.send(Method::DELETE, &["v1", "sessions", id], None, true).await?;
        Ok(())
    }

    /// One turn: creates a session first when `transcript.session_id` is empty, then posts `text`
    /// and follows the event stream to its end, echoing it through `echo` when given. The stream
    /// must start within the call timeout; once it has, it has no deadline, like a local turn.
    pub async fn run_turn(
        &self,
        text: &str,
        transcript: &mut Transcript,
        mut echo: Option<&mut Echo>,
    ) -> Result<TurnCompleted, RemoteError> {
        let created = transcript.session_id.is_empty();
        if created {
            // The daemon titles a session after (the start of) its text, as for a local chat.
            let body = json_body(&serde_json::json!({ "title": text }))?;
            let (url, response) = self.send(Method::POST, &["v1", "sessions"], Some(body), true).await?;
            let session: SessionJson = self.read_json(&url, response).await?;
            transcript.session_id = session.id;
        }
        let body = json_body(&serde_json::json!({ "text": text }))?;
        let session_id = transcript.session_id.clone();
        let sent = self
            .send(
                Method::POST,
                &["v1", "sessions", &session_id, "messages"],
                Some(body),
                false,
            )
            .await;
        let (url, mut response) = match sent {
            Ok(sent) => sent,
            Err(error) => {
                // A session made only for a message that was refused (no provider, budget
                // exhausted) would stay behind empty; remove it, best effort.
                if created && matches!(error, RemoteError::Problem { .. }) {
                    let _ = self.delete_session(&session_id).await;
                    transcript.session_id.clear();
                }
                return Err(error);
            }
        };
        let mut parser = sse::SseParser::default();
        let mut completed = None;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                // The answer is stored once `completed` arrived; a hiccup while the stream
                // closes does not undo that.
                Err(_) if completed.is_some() => break,
                Err(failure) => return Err(self.classify(&url, failure)),
            };
            let events = parser.push(&chunk).map_err(|sse::LineTooLong| RemoteError::Protocol {
                origin: origin(&url),
                detail: format!("an event stream line or event is over {} bytes", sse::MAX_LINE),
            })?;
            for sse_event in events {
                let Some(event) = turn_event(&url, &sse_event)? else {
                    continue;
                };
                if let Some(echo) = echo.as_deref_mut() {
                    echo.event(&event);
                }
                transcript.record(&event);
                if let Event::Completed(done) = event {
                    completed = Some(done);
                }
            }
        }
        completed.ok_or(RemoteError::NoAnswer)
    }

    /// Signs and sends one request; a non-success answer becomes an error. The answer's head
    /// always comes within the call timeout; `deadline` bounds its body by the same deadline.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<Vec<u8>>,
        deadline: bool,
    ) -> Result<(Endpoint, http::Answer), RemoteError> {
        self.send_query(method, segments, None, body, deadline).await
    }

    /// Like [`Gateway::send`], with a query string (signed with the rest of the target).
    async fn send_query(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<&str>,
        body: Option<Vec<u8>>,
        deadline: bool,
    ) -> Result<(Endpoint, http::Answer), RemoteError> {
        let url = self.base.endpoint(segments, query);
        let mut headers = HeaderMap::new();
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        self.signer
            .sign(method.as_str(), &url, &mut headers, &body)
            .map_err(RemoteError::Sign)?;
        // Every answer's head comes within the call timeout (the gateway sends a turn's at once,
        // with `accepted`); only a streamed turn's body may take longer.
        let head_deadline = tokio::time::Instant::now() + self.call_timeout;
        let body_deadline = deadline.then_some(head_deadline);
        let response = match self
            .http
            .send(method, &url, headers, body, head_deadline, body_deadline)
            .await
        {
            Ok(response) => response,
            Err(failure) => return Err(self.classify(&url, failure)),
        };
        if response.status.is_success() {
            return Ok((url, response));
        }
        Err(problem(&url, response, self.call_timeout).await)
    }

    /// Maps a failed exchange: pin mismatch, unreachable, timeout, or a broken exchange.
    fn classify(&self, url: &Endpoint, failure: http::Failure) -> RemoteError {
        match failure {
            http::Failure::Connect(error) => {
                if let Some((pin, record)) = &self.pin
                    && let Some(actual) = record.mismatch()
                {
                    return RemoteError::PinMismatch {
                        origin: origin(url),
                        actual,
                        pin: *pin,
                    };
                }
                RemoteError::Unreachable {
                    origin: origin(url),
                    reason: root_cause(&error),
                    certificate_refused: find_rustls_error(&error)
                        .is_some_and(|error| matches!(error, rustls::Error::InvalidCertificate(_))),
                }
            }
            http::Failure::ConnectTimeout(after) => RemoteError::Unreachable {
                origin: origin(url),
                reason: format!("no connection within {}s", after.as_secs()),
                certificate_refused: false,
            },
            http::Failure::Timeout => RemoteError::Timeout {
                origin: origin(url),
                after: self.call_timeout,
            },
            http::Failure::Exchange(error) => RemoteError::Transport {
                origin: origin(url),
                reason: root_cause(&error),
            },
            http::Failure::Request(error) => RemoteError::Protocol {
                origin: origin(url),
                detail: format!("the URL makes no valid request ({error})"),
            },
        }
    }

    /// Reads a JSON answer.
    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Endpoint,
        mut response: http::Answer,
    ) -> Result<T, RemoteError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|failure| self.classify(url, failure))? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(RemoteError::Protocol {
                    origin: origin(url),
                    detail: format!("the answer is over {MAX_ANSWER_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|error| RemoteError::Protocol {
            origin: origin(url),
            detail: format!("the answer is not the expected JSON ({error})"),
        })
    }
}

/// A request body of JSON.
fn json_body(value: &serde_json::Value) -> Result<Vec<u8>, RemoteError> {
    serde_json::to_vec(value).map_err(|error| RemoteError::Setup {
        source: Box::new(error),
    })
}

/// Longest answer (or refusal) read: far above any real one (a page of sessions, a usage
/// report), so a hostile or broken gateway cannot make the client allocate without bound.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The error of a non-success answer: its problem document, or a description of what came.
async fn problem(url: &Endpoint, mut response: http::Answer, timeout: Duration) -> RemoteError {
    let status: StatusCode = response.status;
    // A refusal is read no further than an answer is (16 MiB), for at most the call timeout (a
    // streamed turn's body has no deadline of its own), and shown cut short.
    let mut body = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(Some(chunk)) = response.chunk().await {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                break;
            }
            body.extend_from_slice(&chunk);
        }
    })
    .await;
    #[derive(Deserialize)]
    struct ProblemJson {
        #[serde(default, rename = "type")]
        kind: String,
        #[serde(default)]
        title: String,
        #[serde(default)]
        detail: String,
    }
    match serde_json::from_slice::<ProblemJson>(&body) {
        // What a gateway says is shown on one line, cut short, control characters visible.
        Ok(document) if !document.detail.is_empty() || !document.title.is_empty() => RemoteError::Problem {
            status: status.as_u16(),
            kind: crate::output::one_line(&document.kind.chars().take(QUOTED_BODY).collect::<String>()),
            title: crate::output::one_line(&document.title.chars().take(QUOTED_BODY).collect::<String>()),
            detail: crate::output::one_line(&document.detail.chars().take(4 * QUOTED_BODY).collect::<String>()),
        },
        _ => {
            let text = String::from_utf8_lossy(&body);
            let text = crate::output::one_line(&text);
            let quoted: String = text.chars().take(QUOTED_BODY).collect();
            let detail = if quoted.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {quoted}")
            };
            RemoteError::Protocol {
                origin: origin(url),
                detail,
            }
        }
    }
}

/// The proto event for one SSE event of the native stream; `None` for kinds this client does not
/// know (the gateway may add some). An `error` event is the turn's failure.
fn turn_event(url: &Endpoint, sse_event: &sse::SseEvent) -> Result<Option<Event>, RemoteError> {
    let bad = |error: serde_json::Error| RemoteError::Protocol {
        origin: origin(url),
        detail: format!("the `{}` event is not the expected JSON ({error})", sse_event.name),
    };
    let data = sse_event.data.as_bytes();
    let event = match sse_event.name.as_str() {
        "accepted" => {
            let accepted: AcceptedJson = serde_json::from_slice(data).map_err(bad)?;
            Event::Accepted(Accepted {
                session_id: accepted.session_id,
                message_id: accepted.message_id,
            })
        }
        "text_delta" => {
            let delta: TextDeltaJson = serde_json::from_slice(data).map_err(bad)?;
            Event::TextDelta(TextDelta { text: delta.text })
        }
        "tool" => {
            let tool: ToolJson = serde_json::from_slice(data).map_err(bad)?;
            Event::Tool(ToolActivity {
                id: tool.id,
                name: tool.name,
                phase: tool.phase,
                is_error: tool.is_error,
                summary: tool.summary.unwrap_or_default(),
            })
        }
        "completed" => {
            let done: CompletedJson = serde_json::from_slice(data).map_err(bad)?;
            Event::Completed(TurnCompleted {
                message_id: done.message_id,
                usage: Some(TokenUsage {
                    input_tokens: done.usage.input_tokens,
                    output_tokens: done.usage.output_tokens,
                    cache_creation_input_tokens: done.usage.cache_creation_input_tokens,
                    cache_read_input_tokens: done.usage.cache_read_input_tokens,
                }),
                cost_usd: done.cost_usd,
                provider_calls: done.provider_calls,
                stop_reason: done.stop_reason,
                model: done.model,
            })
        }
        "error" => {
            let error: ErrorEventJson = serde_json::from_slice(data).map_err(bad)?;
            return Err(RemoteError::Problem {
                status: error.status,
                kind: error.kind,
                title: String::new(),
                detail: error.detail,
            });
        }
        _ => return Ok(None),
    };
    Ok(Some(event))
}

/// The message of the innermost error in `error`'s source chain (which says what actually
/// happened: "Connection refused (os error 111)", "invalid peer certificate: UnknownIssuer"),
/// rather than the whole chain of wrappers.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    loop {
        // `io::Error::source` skips the error it wraps, so look inside it explicitly.
        if let Some(io_error) = current.downcast_ref::<io::Error>()
            && let Some(inner) = io_error.get_ref()
        {
            return root_cause(inner);
        }
        match current.source() {
            Some(next) => current = next,
            None => return current.to_string(),
        }
    }
}

/// The rustls error in `error`'s source chain, if any.
fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io_error) = error.downcast_ref::<io::Error>()
            && let Some(inner) = io_error.get_ref()
        {
            return find_rustls_error(inner);
        }
        current = error.source();
    }
    None
}

// The gateway's JSON (blufiod's `gateway::api`). Fields are lenient (defaults for anything
// missing), since the daemon may be older or newer than this client.

#[derive(Debug, Deserialize)]
struct SessionJson {
    id: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    created_at: i64,
    #[serde(default)]
    updated_at: i64,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    message_count: u64,
}

impl From<SessionJson> for Session {
    fn from(session: SessionJson) -> Session {
        Session {
            id: session.id,
            title: session.title.unwrap_or_default(),
            created_at: session.created_at,
            updated_at: session.updated_at,
            model: session.model.unwrap_or_default(),
            state: session.state.unwrap_or_default(),
            message_count: session.message_count,
        }
    }
}

/// `GET /v1/status`'s document.
#[derive(Debug, Deserialize)]
struct StatusJson {
    state: String,
    version: String,
    uptime_seconds: u64,
    sessions: StatusSessionsJson,
    memory: StatusMemoryJson,
    cost: UsageCostJson,
}

#[derive(Debug, Deserialize)]
struct StatusSessionsJson {
    active_sessions: u64,
    turns_in_flight: u64,
    turns_queued: u64,
    total_sessions: u64,
    provider: String,
    model: String,
    provider_problem: Option<String>,
    // Absent from the status of a daemon older than the vault.
    #[serde(default)]
    provider_key_source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StatusMemoryJson {
    rss_bytes: u64,
    allocated_bytes: u64,
    limit_bytes: u64,
    under_pressure: bool,
    // Absent from the status of a daemon older than the two-threshold monitor.
    #[serde(default)]
    allocator_resident_bytes: u64,
    #[serde(default)]
    warn_bytes: u64,
    #[serde(default)]
    refuse_bytes: u64,
    #[serde(default)]
    pressure: String,
    #[serde(default)]
    pressure_seconds: u64,
}

impl From<StatusJson> for GetStatusResponse {
    fn from(status: StatusJson) -> Self {
        let state = match status.state.as_str() {
            "starting" => DaemonState::Starting,
            "ready" => DaemonState::Ready,
            "reloading" => DaemonState::Reloading,
            "stopping" => DaemonState::Stopping,
            _ => DaemonState::Unspecified,
        };
        GetStatusResponse {
            state: state as i32,
            version: status.version,
            uptime_seconds: status.uptime_seconds,
            sessions: Some(SessionsStatus {
                active_sessions: status.sessions.active_sessions,
                turns_in_flight: status.sessions.turns_in_flight,
                turns_queued: status.sessions.turns_queued,
                total_sessions: status.sessions.total_sessions,
                provider: status.sessions.provider,
                model: status.sessions.model,
                provider_problem: status.sessions.provider_problem.unwrap_or_default(),
                provider_key_source: status.sessions.provider_key_source.unwrap_or_default(),
            }),
            memory: Some(MemoryStatus {
                rss_bytes: status.memory.rss_bytes,
                allocated_bytes: status.memory.allocated_bytes,
                limit_bytes: status.memory.limit_bytes,
                under_pressure: status.memory.under_pressure,
                allocator_resident_bytes: status.memory.allocator_resident_bytes,
                warn_bytes: status.memory.warn_bytes,
                refuse_bytes: status.memory.refuse_bytes,
                pressure: status.memory.pressure,
                pressure_seconds: status.memory.pressure_seconds,
            }),
            cost: Some(CostStatus {
                today_usd: status.cost.today_usd,
                month_usd: status.cost.month_usd,
                daily_cap_usd: status.cost.daily_cap_usd,
                monthly_cap_usd: status.cost.monthly_cap_usd,
                reserved_usd: status.cost.reserved_usd,
            }),
            ..GetStatusResponse::default()
        }
    }
}

/// `GET /v1/usage`'s document.
#[derive(Debug, Deserialize)]
struct UsageReportJson {
    days: Vec<UsageDayJson>,
    models: Vec<UsageModelJson>,
    sessions: Vec<UsageSessionJson>,
    cost: UsageCostJson,
}

#[derive(Debug, Deserialize)]
struct UsageDayJson {
    day: String,
    calls: u64,
    usage: TokensJson,
    cost_usd: f64,
}

#[derive(Debug, Deserialize)]
struct UsageModelJson {
    provider: String,
    model: String,
    calls: u64,
    usage: TokensJson,
    cost_usd: f64,
}

#[derive(Debug, Deserialize)]
struct UsageSessionJson {
    session_id: String,
    title: String,
    calls: u64,
    cost_usd: f64,
    #[serde(default)]
    deleted: bool,
}

#[derive(Debug, Deserialize)]
struct UsageCostJson {
    today_usd: f64,
    month_usd: f64,
    daily_cap_usd: f64,
    monthly_cap_usd: f64,
    reserved_usd: f64,
}

#[derive(Debug, Deserialize)]
struct TokensJson {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl From<TokensJson> for TokenUsage {
    fn from(tokens: TokensJson) -> Self {
        TokenUsage {
            input_tokens: tokens.input_tokens,
            output_tokens: tokens.output_tokens,
            cache_creation_input_tokens: tokens.cache_creation_input_tokens,
            cache_read_input_tokens: tokens.cache_read_input_tokens,
        }
    }
}

impl From<UsageReportJson> for GetUsageResponse {
    fn from(report: UsageReportJson) -> Self {
        GetUsageResponse {
            days: report
                .days
                .into_iter()
                .map(|day| DayUsage {
                    day: day.day,
                    calls: day.calls,
                    usage: Some(day.usage.into()),
                    cost_usd: day.cost_usd,
                })
                .collect(),
            models: report
                .models
                .into_iter()
                .map(|model| ModelUsage {
                    provider: model.provider,
                    model: model.model,
                    calls: model.calls,
                    usage: Some(model.usage.into()),
                    cost_usd: model.cost_usd,
                })
                .collect(),
            sessions: report
                .sessions
                .into_iter()
                .map(|session| SessionUsage {
                    session_id: session.session_id,
                    title: session.title,
                    calls: session.calls,
                    cost_usd: session.cost_usd,
                    deleted: session.deleted,
                })
                .collect(),
            cost: Some(CostStatus {
                today_usd: report.cost.today_usd,
                month_usd: report.cost.month_usd,
                daily_cap_usd: report.cost.daily_cap_usd,
                monthly_cap_usd: report.cost.monthly_cap_usd,
                reserved_usd: report.cost.reserved_usd,
            }),
        }
    }
}

#[derive(Debug, Deserialize)]
struct SessionListJson {
    sessions: Vec<SessionJson>,
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SessionShowJson {
    session: SessionJson,
    #[serde(default)]
    messages: Vec<MessageJson>,
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageJson {
    #[serde(default)]
    id: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    created_at: i64,
}

#[derive(Debug, Deserialize)]
struct AcceptedJson {
    #[serde(default)]
    session_id: String,
    #[serde(default)]
    message_id: String,
}

#[derive(Debug, Deserialize)]
struct TextDeltaJson {
    text: String,
}

#[derive(Debug, Deserialize)]
struct ToolJson {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    phase: String,
    #[serde(default)]
    is_error: bool,
    #[serde(default)]
    summary: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct UsageJson {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct CompletedJson {
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    usage: UsageJson,
    #[serde(default)]
    cost_usd: f64,
    #[serde(default)]
    provider_calls: u32,
    #[serde(default)]
    stop_reason: String,
    #[serde(default)]
    model: String,
}

#[derive(Debug, Deserialize)]
struct ErrorEventJson {
    #[serde(default)]
    status: u16,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_become_proto_events() {
        let url = BaseUrl::parse("https://h").expect("url").endpoint(&[], None);
        let event = |name: &str, data: &str| {
            turn_event(
                &url,
                &sse::SseEvent {
                    name: name.into(),
                    data: data.into(),
                },
            )
        };
        assert_eq!(
            event("accepted", r#"{"session_id":"s1","message_id":"m1"}"#).expect("ok"),
            Some(Event::Accepted(Accepted {
                session_id: "s1".into(),
                message_id: "m1".into()
            }))
        );
        assert_eq!(
            event(
                "tool",
                r#"{"id":"c1","name":"http_get","phase":"started","is_error":false,"summary":null}"#
            )
            .expect("ok"),
            Some(Event::Tool(ToolActivity {
                id: "c1".into(),
                name: "http_get".into(),
                phase: "started".into(),
                ..ToolActivity::default()
            }))
        );
        let completed = event(
            "completed",
            r#"{"message_id":"m2","usage":{"input_tokens":5,"output_tokens":2,"cache_creation_input_tokens":0,
               "cache_read_input_tokens":1},"cost_usd":0.5,"provider_calls":1,"stop_reason":"end_turn","model":"m"}"#,
        )
        .expect("ok");
        let Some(Event::Completed(done)) = completed else {
            panic!("expected completed: {completed:?}");
        };
        assert_eq!(done.usage.map(|usage| usage.cache_read_input_tokens), Some(1));
        assert_eq!(done.provider_calls, 1);
        assert_eq!(event("future_kind", "{}").expect("skipped"), None);
        let error = event(
            "error",
            r#"{"status":402,"type":"budget-exhausted","detail":"over budget"}"#,
        )
        .expect_err("an error event fails the turn");
        assert_eq!(error.to_string(), "over budget");
        assert_eq!(error.problem_kind(), Some("budget-exhausted"));
        assert!(matches!(event("text_delta", "nope"), Err(RemoteError::Protocol { .. })));
    }

    #[test]
    fn problem_kinds_are_the_last_segment_of_the_type() {
        let error = RemoteError::Problem {
            status: 401,
            kind: "https://blufio.invalid/problems/key-unknown".into(),
            title: "Request not authenticated".into(),
            detail: String::new(),
        };
        assert_eq!(error.problem_kind(), Some("key-unknown"));
        assert_eq!(error.to_string(), "Request not authenticated");
    }

    #[test]
    fn root_causes_look_inside_io_errors() {
        let inner = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::General("boom".into()));
        assert_eq!(root_cause(&inner), "unexpected error: boom");
        assert!(find_rustls_error(&inner).is_some());
        let plain = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(root_cause(&plain), "connection refused");
        assert!(find_rustls_error(&plain).is_none());
    }
}
