//! A fake LLM provider for tests: an HTTP server on 127.0.0.1 that speaks the Anthropic
//! Messages (`POST /v1/messages`) and OpenAI Chat Completions (`POST /v1/chat/completions`)
//! streaming wire formats and both model lists (`GET /v1/models`, told apart by the key's
//! header), replies from a FIFO of scripts (then a settable default), records every request
//! (unless a benchmark turns that off), and can accept only one API key, answering any other
//! with the provider's own 401.
//!
//! It runs its own tokio runtime on a background thread, so plain `#[test]`s and
//! `#[tokio::test]`s can both use it, and stops when dropped. It is compiled, through `#[path]`,
//! both into `blufio-testkit` (as `fake_provider`, for the integration tests and the benchmarks)
//! and into the adapters' unit tests in `blufiod/src/agent/provider/`; so it must never refer
//! to `crate::` or `super::` and may use only dependencies both crates have.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// The answer when no script is queued and no default is set: `fake answer to: <last user
/// text>`.
pub const DEFAULT_ANSWER_PREFIX: &str = "fake answer to: ";

/// A running fake provider; dropping it stops the server and closes its connections.
pub struct FakeProvider {
    address: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method, for example `POST`.
    pub method: String,
    /// The URL path, for example `/v1/messages`.
    pub path: String,
    /// Header names (lower-case) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (a JSON string holding the raw text when it was not JSON).
    pub body: serde_json::Value,
}

impl RecordedRequest {
    /// The names of the tools the request offered the model, in order (none when it offered
    /// none).
    pub fn tool_names(&self) -> Vec<String> {
        self.body["tools"]
            .as_array()
            .map(|tools| {
                tools
                    .iter()
                    .map(|tool| tool["name"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub enum Script {
    /// A text answer streamed in `chunks` deltas (stop reason end_turn / stop).
    Text {
        text: String,
        chunks: usize,
        usage: FakeUsage,
    },
    /// One tool call whose input streams in at least two fragments (stop reason tool_use).
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
        usage: FakeUsage,
    },
    /// An HTTP error with the provider's JSON error body and an optional `retry-after`.
    HttpError {
        status: u16,
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// A 200 stream that sends `after_chunks` text deltas, then an error event, then ends.
    StreamError {
        after_chunks: usize,
        error_type: String,
        message: String,
    },
    /// A 200 stream that sends `after_chunks` text deltas and then ends the body cleanly without
    /// finishing the answer.
    Truncated { after_chunks: usize },
    /// The inner script with a pause before every event (or before the error response).
    Delay {
        per_chunk: std::time::Duration,
        then: Box<Script>,
    },
    /// A 200 stream that sends `after_chunks` text deltas and then nothing, keeping the
    /// connection open.
    Stall { after_chunks: usize },
}

impl Script {
    /// A text answer in `chunks` deltas with default usage.
    pub fn text(text: &str, chunks: usize) -> Self {
        Script::Text {
            text: text.to_owned(),
            chunks,
            usage: FakeUsage::default(),
        }
    }

    /// A tool call with default usage.
    pub fn tool_use(id: &str, name: &str, input: serde_json::Value) -> Self {
        Script::ToolUse {
            id: id.to_owned(),
            name: name.to_owned(),
            input,
            usage: FakeUsage::default(),
        }
    }

    /// An HTTP error.
    pub fn http_error(status: u16, message: &str, retry_after_secs: Option<u64>) -> Self {
        Script::HttpError {
            status,
            message: message.to_owned(),
            retry_after_secs,
        }
    }
}

/// Token counts the fake reports. For OpenAI, `prompt_tokens` is `input + cache_read` and
/// `cached_tokens` is `cache_read` (the API has no cache-write count, so `cache_creation` is
/// not reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeUsage {
    pub input: u64,
    pub output: u64,
    pub cache_creation: u64,
    pub cache_read: u64,
}

struct State {
    scripts: Mutex<VecDeque<Script>>,
    /// The reply when no script is queued; `None`: the echo answer.
    default: Mutex<Option<Script>>,
    /// Whether requests are kept in `requests`.
    recording: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    service_times: Mutex<Vec<Duration>>,
    /// The only API key accepted, when set: any other gets the provider's 401.
    accepted_key: Mutex<Option<String>>,
    /// Seconds the `Date` of the model list is ahead of the real clock.
    clock_offset_secs: std::sync::atomic::AtomicI64,
}

/// The models `GET /v1/models` lists, as each provider names them (and `fake-model`, the model
/// the testkit's provider config uses).
pub const ANTHROPIC_MODELS: [&str; 3] = ["claude-sonnet-4-5", "claude-haiku-4-5", "fake-model"];
/// See [`ANTHROPIC_MODELS`].
pub const OPENAI_MODELS: [&str; 3] = ["gpt-4o", "gpt-4o-mini", "fake-model"];

impl FakeProvider {
    /// Starts a fake on 127.0.0.1 and a free port.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake provider");
        listener
            .set_nonblocking(true)
            .expect("make the fake provider's socket non-blocking");
        let address = listener.local_addr().expect("the fake provider's address");
        let state = Arc::new(State {
            scripts: Mutex::new(VecDeque::new()),
            default: Mutex::new(None),
            recording: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            service_times: Mutex::new(Vec::new()),
            accepted_key: Mutex::new(None),
            clock_offset_secs: std::sync::atomic::AtomicI64::new(0),
        });
        let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel();
        let server_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-provider".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the fake provider's runtime");
                runtime.block_on(serve(listener, server_state, shutdown_signal));
                // Dropping the runtime here cancels every connection task, stalled ones too.
            })
            .expect("spawn the fake provider's thread");
        Self {
            address,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the Anthropic base URL. OpenAI's is `format!("{}/v1", url)`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Queues the reply to a future request (first in, first out).
    pub fn push(&self, script: Script) {
        lock(&self.state.scripts).push_back(script);
    }

    /// Sets the reply to every request that finds no queued script; `None` restores the echo
    /// answer (`fake answer to: <last user text>`, two deltas). A benchmark sets, for example, a
    /// slow stream for all of its requests.
    pub fn set_default(&self, script: Option<Script>) {
        *lock(&self.state.default) = script;
    }

    /// Whether requests are recorded for [`Self::requests`] and counted by
    /// [`Self::request_count`] (on at the start). A benchmark of many turns turns it off, so the
    /// fake does not keep every request body in memory.
    pub fn set_recording(&self, on: bool) {
        self.state.recording.store(on, Ordering::Relaxed);
    }

    /// Accepts only `key` from now on (`x-api-key`, or `Authorization: Bearer`): any other key,
    /// or none, gets the provider's own 401 on every route, as the real APIs answer.
    pub fn require_key(&self, key: &str) {
        *lock(&self.state.accepted_key) = Some(key.to_owned());
    }

    /// Makes the `Date` header of the model list `seconds` ahead of the real clock (behind when
    /// negative), as a provider would look to a machine whose clock is off.
    pub fn set_clock_offset(&self, seconds: i64) {
        self.state.clock_offset_secs.store(seconds, Ordering::Relaxed);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// Waits (up to 30 s, the test kit's patience, so that a busy machine cannot fail it) until `count` requests
    /// have arrived.
    pub fn wait_for_requests(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.request_count() < count {
            assert!(
                Instant::now() < deadline,
                "the provider saw fewer than {count} requests"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The fake's own time per finished response (request received → last byte handed to the
    /// connection), in completion order, so benchmarks can subtract the provider's share.
    /// Stalled responses never finish and are not counted.
    pub fn service_times(&self) -> Vec<Duration> {
        lock(&self.state.service_times).clone()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not hide the fake's records from the next assertion.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(listener: std::net::TcpListener, state: Arc<State>, mut shutdown: tokio::sync::oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("register the fake provider's socket");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(_) => continue,
            },
        };
        // As production HTTP servers commonly do. Without it, a small SSE frame written while the
        // previous one is unacknowledged waits for the daemon's delayed ACK (Nagle's algorithm):
        // some 40 ms per answer, which benchmarks would count as the daemon's.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    Anthropic,
    OpenAi,
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let received = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let anthropic_key = header("x-api-key");
    let bearer_key = header("authorization").and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned));
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let raw = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body = serde_json::from_slice(&raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into()));
    if state.recording.load(Ordering::Relaxed) {
        lock(&state.requests).push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            headers,
            body: body.clone(),
        });
    }
    let wire = match (&method, path.as_str()) {
        (&Method::POST, "/v1/messages") => Wire::Anthropic,
        (&Method::POST, "/v1/chat/completions") => Wire::OpenAi,
        // Both APIs list models at the same path; the key's header says which one is asked.
        (&Method::GET, "/v1/models") if anthropic_key.is_some() => Wire::Anthropic,
        (&Method::GET, "/v1/models") => Wire::OpenAi,
        (method, path) => {
            let message = format!("no route for {method} {path}");
            let error = json!({"error": {"type": "not_found_error", "message": message}});
            lock(&state.service_times).push(received.elapsed());
            return Ok(json_response(StatusCode::NOT_FOUND, &error, None));
        }
    };
    let sent_key = match wire {
        Wire::Anthropic => anthropic_key,
        Wire::OpenAi => bearer_key,
    };
    let accepted = lock(&state.accepted_key).clone();
    if let Some(accepted) = accepted
        && sent_key.as_deref() != Some(accepted.as_str())
    {
        lock(&state.service_times).push(received.elapsed());
        let message = match wire {
            Wire::Anthropic => "invalid x-api-key",
            Wire::OpenAi => "Incorrect API key provided.",
        };
        let status = StatusCode::UNAUTHORIZED;
        return Ok(json_response(status, &error_body(wire, status, message), None));
    }
    if method == Method::GET {
        lock(&state.service_times).push(received.elapsed());
        let mut response = json_response(StatusCode::OK, &model_list(wire), None);
        let offset = state.clock_offset_secs.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now();
        let date = if offset >= 0 {
            now + Duration::from_secs(offset.unsigned_abs())
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        response.headers_mut().insert(
            hyper::header::DATE,
            httpdate::fmt_http_date(date)
                .parse()
                .expect("an HTTP date is a header value"),
        );
        return Ok(response);
    }
    let queued = lock(&state.scripts).pop_front();
    let next = queued.or_else(|| lock(&state.default).clone());
    let script = next.unwrap_or_else(|| Script::Text {
        text: format!("{DEFAULT_ANSWER_PREFIX}{}", last_user_text(&body)),
        chunks: 2,
        usage: FakeUsage {
            input: 100,
            output: 20,
            ..FakeUsage::default()
        },
    });
    Ok(respond(wire, script, &body, state, received).await)
}

async fn respond(wire: Wire, script: Script, request: &Value, state: Arc<State>, received: Instant) -> Response<Body> {
    let mut delay = Duration::ZERO;
    let mut script = script;
    while let Script::Delay { per_chunk, then } = script {
        delay += per_chunk;
        script = *then;
    }
    let model = request.get("model").and_then(Value::as_str).unwrap_or("fake-model");
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut writer = Writer {
        wire,
        model,
        frames: Vec::new(),
    };
    let mut stall = false;
    match script {
        Script::HttpError {
            status,
            message,
            retry_after_secs,
        } => {
            tokio::time::sleep(delay).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            lock(&state.service_times).push(received.elapsed());
            return json_response(status, &error_body(wire, status, &message), retry_after_secs);
        }
        Script::Text { text, chunks, usage } => writer.text_answer(&text, chunks, usage, include_usage),
        Script::ToolUse { id, name, input, usage } => writer.tool_answer(&id, &name, &input, usage, include_usage),
        Script::StreamError {
            after_chunks,
            error_type,
            message,
        } => {
            writer.partial_answer(after_chunks);
            writer.error_event(&error_type, &message);
        }
        Script::Truncated { after_chunks } => writer.partial_answer(after_chunks),
        Script::Stall { after_chunks } => {
            writer.partial_answer(after_chunks);
            stall = true;
        }
        Script::Delay { .. } => unreachable!("unwrapped above"),
    }
    let frames = writer.frames.into_iter();
    let stream = futures_util::stream::unfold(frames, move |mut frames| {
        let state = state.clone();
        async move {
            match frames.next() {
                Some(frame) => {
                    // Even a zero sleep waits for the timer's next millisecond tick.
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok(Frame::data(frame)), frames))
                }
                None if stall => {
                    // Ends only when the client goes away or the fake is dropped.
                    std::future::pending::<()>().await;
                    None
                }
                None => {
                    lock(&state.service_times).push(received.elapsed());
                    None
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

fn json_response(status: StatusCode, body: &Value, retry_after_secs: Option<u64>) -> Response<Body> {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(seconds) = retry_after_secs {
        response = response.header("retry-after", seconds.to_string());
    }
    response
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .expect("a valid response")
}

/// `GET /v1/models` as each provider answers it (first page only; the lists are short).
fn model_list(wire: Wire) -> Value {
    match wire {
        Wire::Anthropic => json!({
            "data": ANTHROPIC_MODELS
                .iter()
                .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-09-29T00:00:00Z"}))
                .collect::<Vec<_>>(),
            "has_more": false,
            "first_id": ANTHROPIC_MODELS[0],
            "last_id": ANTHROPIC_MODELS[ANTHROPIC_MODELS.len() - 1],
        }),
        Wire::OpenAi => json!({
            "object": "list",
            "data": OPENAI_MODELS
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 1_715_367_049, "owned_by": "system"}))
                .collect::<Vec<_>>(),
        }),
    }
}

/// Each provider's error body shape, with the error types it uses for the common statuses.
fn error_body(wire: Wire, status: StatusCode, message: &str) -> Value {
    match wire {
        Wire::Anthropic => {
            let kind = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Wire::OpenAi => {
            let (kind, code) = match status.as_u16() {
                401 => ("invalid_request_error", json!("invalid_api_key")),
                429 => ("requests", json!("rate_limit_exceeded")),
                500..=599 => ("server_error", Value::Null),
                _ => ("invalid_request_error", Value::Null),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
    }
}

/// The text of the last user message that has any (tool results carry none).
fn last_user_text(request: &Value) -> String {
    let messages = request.get("messages").and_then(Value::as_array);
    for message in messages.into_iter().flatten().rev() {
        if message.get("role").and_then(Value::as_str) != Some("user") {
            continue;
        }
        match message.get("content") {
            Some(Value::String(text)) => return text.clone(),
            Some(Value::Array(blocks)) => {
                let texts: Vec<&str> = blocks
                    .iter()
                    .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|block| block.get("text").and_then(Value::as_str))
                    .collect();
                if !texts.is_empty() {
                    return texts.join("\n");
                }
            }
            _ => {}
        }
    }
    String::new()
}

/// Splits `text` into `pieces` non-empty parts of about equal length (at char boundaries).
fn split_text(text: &str, pieces: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let pieces = pieces.clamp(1, chars.len());
    let size = chars.len().div_ceil(pieces);
    chars.chunks(size).map(|chunk| chunk.iter().collect()).collect()
}

/// Builds the SSE frames of one answer in a provider's wire format.
struct Writer<'a> {
    wire: Wire,
    model: &'a str,
    frames: Vec<Bytes>,
}

impl Writer<'_> {
    fn anthropic(&mut self, event: &str, data: Value) {
        self.frames
            .push(Bytes::from(format!("event: {event}\ndata: {data}\n\n")));
    }

    fn openai(&mut self, data: &Value) {
        self.frames.push(Bytes::from(format!("data: {data}\n\n")));
    }

    fn openai_chunk(&mut self, delta: Value, finish_reason: Option<&str>) {
        let chunk = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        self.openai(&chunk);
    }

    fn message_start(&mut self, usage: FakeUsage) {
        let message = json!({
            "type": "message_start",
            "message": {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": self.model,
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": usage.input,
                    "cache_creation_input_tokens": usage.cache_creation,
                    "cache_read_input_tokens": usage.cache_read,
                    "output_tokens": 1,
                },
            },
        });
        self.anthropic("message_start", message);
    }

    /// The beginning of an answer: everything before the first text delta.
    fn start_text(&mut self, usage: FakeUsage) {
        match self.wire {
            Wire::Anthropic => {
                self.message_start(usage);
                self.anthropic(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                );
                self.anthropic("ping", json!({"type": "ping"}));
            }
            Wire::OpenAi => self.openai_chunk(json!({"role": "assistant", "content": ""}), None),
        }
    }

    fn text_delta(&mut self, text: &str) {
        match self.wire {
            Wire::Anthropic => self.anthropic(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            ),
            Wire::OpenAi => self.openai_chunk(json!({"content": text}), None),
        }
    }

    /// The end of an answer: block stop, stop reason, usage, final event.
    fn finish(&mut self, anthropic_reason: &str, openai_reason: &str, usage: FakeUsage, include_usage: bool) {
        match self.wire {
            Wire::Anthropic => {
                self.anthropic("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
                self.anthropic(
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": anthropic_reason, "stop_sequence": null},
                        "usage": {"output_tokens": usage.output},
                    }),
                );
                self.anthropic("message_stop", json!({"type": "message_stop"}));
            }
            Wire::OpenAi => {
                self.openai_chunk(json!({}), Some(openai_reason));
                if include_usage {
                    let prompt_tokens = usage.input + usage.cache_read;
                    let usage_chunk = json!({
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": self.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": usage.output,
                            "total_tokens": prompt_tokens + usage.output,
                            "prompt_tokens_details": {"cached_tokens": usage.cache_read},
                        },
                    });
                    self.openai(&usage_chunk);
                }
                self.frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
            }
        }
    }

    fn text_answer(&mut self, text: &str, chunks: usize, usage: FakeUsage, include_usage: bool) {
        self.start_text(usage);
        for piece in split_text(text, chunks) {
            self.text_delta(&piece);
        }
        self.finish("end_turn", "stop", usage, include_usage);
    }

    fn tool_answer(&mut self, id: &str, name: &str, input: &Value, usage: FakeUsage, include_usage: bool) {
        // The real APIs stream the input JSON in arbitrary fragments; at least two exercise the
        // client's reassembly.
        let fragments = split_text(&input.to_string(), 3);
        match self.wire {
            Wire::Anthropic => {
                self.message_start(usage);
                self.anthropic(
                    "content_block_start",
                    json!({
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}},
                    }),
                );
                self.anthropic("ping", json!({"type": "ping"}));
                for fragment in std::iter::once(String::new()).chain(fragments) {
                    self.anthropic(
                        "content_block_delta",
                        json!({
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": fragment},
                        }),
                    );
                }
            }
            Wire::OpenAi => {
                self.openai_chunk(json!({"role": "assistant", "content": null}), None);
                self.openai_chunk(
                    json!({"tool_calls": [{
                        "index": 0,
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]}),
                    None,
                );
                for fragment in fragments {
                    self.openai_chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                        None,
                    );
                }
            }
        }
        self.finish("tool_use", "tool_calls", usage, include_usage);
    }

    /// The start of a text answer and `deltas` deltas, for the failure scripts.
    fn partial_answer(&mut self, deltas: usize) {
        self.start_text(FakeUsage::default());
        for index in 0..deltas {
            self.text_delta(&format!("chunk {index} "));
        }
    }

    fn error_event(&mut self, error_type: &str, message: &str) {
        match self.wire {
            Wire::Anthropic => self.anthropic(
                "error",
                json!({"type": "error", "error": {"type": error_type, "message": message}}),
            ),
            Wire::OpenAi => self.openai(&json!({"error": {"message": message, "type": error_type, "code": null}})),
        }
    }
}
