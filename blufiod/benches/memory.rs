//! The memory of the release `blufiod` against the fake provider on 127.0.0.1, as the kernel
//! reports it: `/proc/<pid>/status` (VmRSS, RssAnon, RssFile, RssShmem, Threads) and
//! `smaps_rollup` (Pss, Pss_Anon, Pss_File), with the open descriptors; and, from `GetStatus`,
//! the bytes in live allocations and the resident pages of the daemon's allocator (jemalloc),
//! which tell memory in use from pages the allocator keeps. One daemon goes through these phases,
//! in order:
//!
//! 1. at `READY=1`, and after [`IDLE`] idle;
//! 2. the peak while [`STREAMS`] clients, each on its own HTTPS connection, stream a signed
//!    `POST /v1/chat/completions` (`"stream": true`) at once, the fake answering slowly
//!    ([`STREAM_DELTAS`] text deltas, [`STREAM_PAUSE`] before every event), sampled every
//!    [`PEAK_SAMPLE_EVERY`]; then just after the streams ended and their connections closed,
//!    [`SETTLE`] later, and once the daemon has closed its idle connections to the provider
//!    (its HTTP client keeps them for a while);
//! 3. after a tenth of the turns and after all of them (100,000 unless `--turns N`):
//!    [`TURN_CLIENTS`] gRPC clients on the control socket, an instant fake, a new session every
//!    [`TURNS_PER_SESSION`] turns so that no history grows long. The growth between the two
//!    checkpoints is the leak signal;
//! 4. with `--minutes M`, a soak of steady paced traffic (turns on the socket, signed streaming
//!    chats through the gateway), sampled every [`SOAK_SAMPLE_EVERY`], and the least-squares
//!    slopes of the resident set and the heap.
//!
//! Run with `cargo xtask bench memory [--minutes M] [--turns N] [--json PATH]`. It prints a table
//! and, with `--json`, writes the same figures (in KiB) to PATH. Reading `smaps_rollup` of the
//! daemon, which makes itself non-dumpable, needs root or `CAP_SYS_PTRACE`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use blufio_proto::control::v1 as pb;
use blufio_proto::control::v1::control_client::ControlClient;
use blufio_proto::httpsig;
use blufio_testkit::Daemon;
use blufio_testkit::bench::{self, ProcessMemory};
use blufio_testkit::fake_provider::{FakeProvider, Script};
use serde_json::json;

#[path = "common/gateway.rs"]
mod gateway_device;
use gateway_device::Gateway;
use tonic::transport::Channel;

/// How long the daemon idles after `READY=1` before the second figure.
const IDLE: Duration = Duration::from_secs(60);
/// Concurrent streaming chats of the peak phase, each on its own connection.
const STREAMS: usize = 100;
/// Loopback addresses the stream clients connect from (127.0.0.1 and up): the gateway admits at
/// most 32 connections from one address.
const CLIENT_ADDRESSES: usize = 4;
/// Text deltas of each slow answer.
const STREAM_DELTAS: usize = 20;
/// The fake's pause before every event of a slow answer, so that every stream stays open while
/// the others start.
const STREAM_PAUSE: Duration = Duration::from_millis(100);
/// How often the daemon is sampled while the streams run.
const PEAK_SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The wait after the streams: three of jemalloc's 10 s decay periods, so that freed pages have
/// gone back to the system.
const SETTLE: Duration = Duration::from_secs(30);
/// How long after the streams the benchmark waits for the daemon to close its idle connections
/// to the provider before it goes on regardless.
const POOL_PATIENCE: Duration = Duration::from_secs(300);
/// Turns at the last checkpoint unless `--turns` says otherwise; the first is a tenth of it.
const DEFAULT_TURNS: usize = 100_000;
/// Concurrent clients sending turns on the control socket.
const TURN_CLIENTS: usize = 8;
/// Turns each client sends in one session before it starts a new one.
const TURNS_PER_SESSION: usize = 50;
/// How often each turn client sends a turn during the soak.
const SOAK_TURN_EVERY: Duration = Duration::from_millis(200);
/// How often the soak's gateway client sends a streaming chat.
const SOAK_CHAT_EVERY: Duration = Duration::from_millis(200);
/// How often the daemon is sampled during the soak.
const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(5);

fn main() {
    let options = Options::from_args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut run = Run::start();
    run.idle();
    let streams = run.streams();
    let turns = run.turns(options.turns);
    let soak = options.minutes.map(|minutes| run.soak(minutes));
    let report = run.finish();

    report.print(&streams, &turns, soak.as_ref());
    if let Some(path) = &options.json {
        let document = report.json(&streams, &turns, soak.as_ref());
        let text = serde_json::to_string_pretty(&document).expect("serialize the report");
        std::fs::write(path, text + "\n").unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}

/// One run: the fake provider, the daemon, what the benchmark reaches it with, and the table so
/// far. Each phase adds its rows.
struct Run {
    fake: FakeProvider,
    daemon: Daemon,
    runtime: tokio::runtime::Runtime,
    probe: Probe,
    gateway: Arc<Gateway>,
    /// The turn clients, kept from the turns to the soak so that they go on rotating sessions.
    turn_clients: Vec<TurnClient>,
    report: Report,
}

impl Run {
    /// Starts the fake and the daemon; the row at `READY=1`; registers a device for the gateway.
    fn start() -> Self {
        let fake = FakeProvider::start();
        // 100k request bodies would cost the benchmark, not the daemon, gigabytes.
        fake.set_recording(false);
        // As many turn slots and queue places as streams, so that all of them run at once.
        let daemon = bench::start_under_load(
            &fake.url(),
            STREAMS,
            "[gateway]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_minute = 1000000\n",
        );
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let mut probe = Probe::connect(daemon.pid().as_raw(), &daemon.socket, &runtime);
        let mut report = Report::default();
        report.row("at READY=1", daemon.wait_ready(), probe.sample());
        let gateway = Arc::new(runtime.block_on(Gateway::register(&daemon)));
        Self {
            fake,
            daemon,
            runtime,
            probe,
            gateway,
            turn_clients: Vec::new(),
            report,
        }
    }

    fn idle(&mut self) {
        std::thread::sleep(IDLE);
        self.report
            .row(&format!("idle {} s", IDLE.as_secs()), IDLE, self.probe.sample());
    }

    /// The peak of [`STREAMS`] slow streams, then the daemon after them, after [`SETTLE`], and
    /// once it has closed its idle connections to the provider.
    fn streams(&mut self) -> Streams {
        self.fake.set_default(Some(Script::Delay {
            per_chunk: STREAM_PAUSE,
            then: Box::new(Script::text(&"memory benchmark ".repeat(STREAM_DELTAS), STREAM_DELTAS)),
        }));
        // The heap is left out of the peak: the status call that reads it queries the database,
        // which 20 times a second would be load of its own.
        let ((most_open, took), samples) = sampled(&mut self.probe, PEAK_SAMPLE_EVERY, false, || {
            self.runtime.block_on(streams(&self.gateway))
        });
        self.fake.set_default(None);
        let peak = samples
            .iter()
            .fold(Sample::default(), |peak, (_, sample)| peak.max(*sample));
        self.report.row(&format!("peak, {STREAMS} streams"), took, peak);

        // The clients are gone and their connections closed; a moment for the daemon to notice.
        let ended = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let pid = self.probe.pid;
        let provider_port = port_of(&self.fake.url());
        let provider_connections = connections_to(pid, provider_port);
        self.report.row("streams ended", ended.elapsed(), self.probe.sample());
        std::thread::sleep(SETTLE);
        let label = format!("streams ended + {} s", SETTLE.as_secs());
        self.report.row(&label, SETTLE, self.probe.sample());

        // The daemon keeps idle connections to the provider for a while (its HTTP client's
        // keep-alive pool); the turns begin once they are gone, so that their closing does not
        // count as the turns' change.
        let waited = Instant::now();
        let provider_closed_after = wait_until_closed(pid, provider_port, ended);
        let label = match provider_closed_after {
            Some(_) => "provider connections closed",
            None => "provider connections open",
        };
        self.report.row(label, waited.elapsed(), self.probe.sample());
        Streams {
            peak,
            samples: samples.len(),
            most_open,
            provider_connections,
            provider_closed_after,
        }
    }

    /// A tenth of `total` turns, a row, the rest, a row.
    fn turns(&mut self, total: usize) -> Turns {
        self.turn_clients = self.runtime.block_on(TurnClient::connect_all(&self.daemon.socket));
        let first = total / 10;
        let mut checkpoints = Vec::new();
        for (turns, previous) in [(first, 0), (total, first)] {
            let took = self
                .runtime
                .block_on(run_turns(&mut self.turn_clients, turns - previous));
            let sample = self.probe.sample();
            self.report.row(&format!("after {turns} turns"), took, sample);
            checkpoints.push(Checkpoint {
                turns,
                batch: turns - previous,
                took,
                sample,
            });
        }
        Turns {
            checkpoints,
            sessions: self.turn_clients.iter().map(|client| client.sessions).sum(),
        }
    }

    /// `minutes` of steady traffic, sampled every [`SOAK_SAMPLE_EVERY`], and a row.
    fn soak(&mut self, minutes: u64) -> Soak {
        let duration = Duration::from_secs(minutes * 60);
        let ((turns, chats), samples) = sampled(&mut self.probe, SOAK_SAMPLE_EVERY, true, || {
            self.runtime
                .block_on(soak_traffic(&mut self.turn_clients, &self.gateway, duration))
        });
        self.report
            .row(&format!("after a {minutes} min soak"), duration, self.probe.sample());
        Soak {
            duration,
            samples,
            turns,
            chats,
        }
    }

    /// Stops the daemon (asserting a clean exit) and returns the table.
    fn finish(self) -> Report {
        let Self {
            fake,
            daemon,
            runtime,
            probe,
            turn_clients,
            report,
            ..
        } = self;
        drop((probe, turn_clients, runtime));
        bench::finish(daemon);
        drop(fake);
        report
    }
}

/// The command line: `[--minutes M] [--turns N] [--json PATH]` (cargo adds `--bench`).
struct Options {
    minutes: Option<u64>,
    turns: usize,
    json: Option<PathBuf>,
}

impl Options {
    fn from_args() -> Self {
        let mut options = Self {
            minutes: None,
            turns: DEFAULT_TURNS,
            json: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--minutes" => options.minutes = Some(number(args.next(), "--minutes M")),
                "--turns" => options.turns = number(args.next(), "--turns N"),
                "--json" => {
                    options.json = Some(args.next().map_or_else(|| usage("--json needs a PATH"), PathBuf::from))
                }
                "--bench" => {}
                other => usage(&format!("unknown argument {other:?}")),
            }
        }
        if options.turns < 10 * TURN_CLIENTS {
            usage(&format!("--turns must be at least {}", 10 * TURN_CLIENTS));
        }
        options
    }
}

/// The number that follows a flag, or the usage and exit 2.
fn number<T: std::str::FromStr>(value: Option<String>, flag: &str) -> T {
    value
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} takes a number")))
}

fn usage(problem: &str) -> ! {
    eprintln!("{problem}\nusage: cargo xtask bench memory [--minutes M] [--turns N] [--json PATH]");
    std::process::exit(2)
}

/// The daemon's figures at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// As the kernel reports them.
    memory: ProcessMemory,
    /// Bytes in live allocations, in KiB, as jemalloc counts them (`GetStatus`); SQLite's own
    /// allocations (the C library's malloc) are not among them. `None`: not read.
    heap_kib: Option<u64>,
    /// jemalloc's resident pages, in KiB: the heap, the allocator's own overhead and free pages
    /// not yet returned to the system. `None`: not read.
    allocator_kib: Option<u64>,
}

impl Sample {
    /// Each figure's maximum over `self` and `other`.
    fn max(self, other: Self) -> Self {
        Self {
            memory: self.memory.max(other.memory),
            heap_kib: self.heap_kib.max(other.heap_kib),
            allocator_kib: self.allocator_kib.max(other.allocator_kib),
        }
    }
}

/// Reads the daemon's figures: `/proc`, and `GetStatus` on a control connection of its own,
/// driven by the benchmark's runtime (so it answers the daemon's keep-alive pings between
/// samples).
struct Probe {
    pid: i32,
    runtime: tokio::runtime::Handle,
    control: ControlClient<Channel>,
}

impl Probe {
    fn connect(pid: i32, socket: &Path, runtime: &tokio::runtime::Runtime) -> Self {
        Self {
            pid,
            runtime: runtime.handle().clone(),
            control: runtime.block_on(blufio_testkit::control_client(socket)),
        }
    }

    /// The kernel's figures now; the benchmark cannot go on without them.
    fn kernel(&self) -> Sample {
        let pid = self.pid;
        let memory = ProcessMemory::of(pid).unwrap_or_else(|error| {
            panic!("cannot read /proc/{pid} of blufiod ({error}); its smaps_rollup needs root or CAP_SYS_PTRACE")
        });
        Sample {
            memory,
            heap_kib: None,
            allocator_kib: None,
        }
    }

    /// The kernel's figures and the allocator's now.
    fn sample(&mut self) -> Sample {
        let sample = self.kernel();
        let status = self
            .runtime
            .block_on(self.control.get_status(pb::GetStatusRequest {}))
            .expect("status")
            .into_inner();
        let memory = status.memory.expect("the status's memory");
        Sample {
            heap_kib: Some(memory.allocated_bytes / 1024),
            allocator_kib: Some(memory.allocator_resident_bytes / 1024),
            ..sample
        }
    }
}

/// The port of a `http://HOST:PORT` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// How many TCP connections process `pid` holds to `port` (any address), from the socket inodes
/// in `/proc/<pid>/fd` and the connection table in `/proc/<pid>/net/tcp`.
fn connections_to(pid: i32, port: u16) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("blufiod's descriptors");
    let sockets: HashSet<String> = fds
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("blufiod's TCP table");
    // `sl local_address rem_address st ... uid timeout inode`, addresses as hex `IP:PORT`.
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| {
            let remote_port = fields
                .get(2)
                .and_then(|remote| remote.rsplit_once(':'))
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            remote_port == Some(port) && fields.get(9).is_some_and(|inode| sockets.contains(*inode))
        })
        .count()
}

/// Waits until process `pid` holds no connection to `port`, at most until [`POOL_PATIENCE`] after
/// `since`; returns how long after `since` that was, or `None` when it still holds some.
fn wait_until_closed(pid: i32, port: u16, since: Instant) -> Option<Duration> {
    loop {
        if connections_to(pid, port) == 0 {
            return Some(since.elapsed());
        }
        if since.elapsed() >= POOL_PATIENCE {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs `work` while another thread samples the daemon every `every` (the heap too, with
/// `heap`); returns what `work` returned and the samples, each with its time since the start.
fn sampled<T>(
    probe: &mut Probe,
    every: Duration,
    heap: bool,
    work: impl FnOnce() -> T,
) -> (T, Vec<(Duration, Sample)>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let sampler = scope.spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            loop {
                let sample = if heap { probe.sample() } else { probe.kernel() };
                samples.push((started.elapsed(), sample));
                // Ends when `stop` is dropped: after `work`, or while it unwinds.
                if stopped.recv_timeout(every) != Err(RecvTimeoutError::Timeout) {
                    return samples;
                }
            }
        });
        let result = work();
        drop(stop);
        (result, sampler.join().expect("the sampler thread"))
    })
}

impl Gateway {
    /// A client with a connection pool of its own, connecting from `local` (a loopback address).
    fn client(&self, local: IpAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([self.certificate.clone()])
            .local_address(local)
            .build()
            .expect("client")
    }

    /// Sends a streaming chat completion, signed as `blufioctl remote` signs (RFC 9421, ed25519),
    /// and reads its stream to `data: [DONE]`. `open` counts it from its response head to its end.
    async fn streaming_chat(&self, client: &reqwest::Client, text: &str, open: &OpenStreams) {
        const PATH: &str = "/v1/chat/completions";
        let body = serde_json::to_vec(&json!({"stream": true, "messages": [{"role": "user", "content": text}]}))
            .expect("the chat's JSON");
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", http::HeaderValue::from_static("application/json"));
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let request = httpsig::SignRequest {
            method: "POST",
            scheme: "https",
            authority: &self.authority,
            path: PATH,
            query: None,
            body: &body,
            fields: &[],
            keyid: &self.keyid,
            nonce: &nonce,
            created: httpsig::unix_now(),
        };
        httpsig::sign_request(&request, &mut headers, &self.key).expect("sign");
        let mut response = client
            .post(format!("https://{}{PATH}", self.authority))
            .headers(headers)
            .body(body)
            .send()
            .await
            .expect("send a chat");
        let status = response.status();
        if !status.is_success() {
            panic!(
                "the gateway refused a chat with {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let _open = open.enter();
        let mut stream = Vec::new();
        while let Some(chunk) = response.chunk().await.expect("read a chat's stream") {
            stream.extend_from_slice(&chunk);
        }
        assert!(
            stream.ends_with(b"data: [DONE]\n\n"),
            "a chat's stream ended without [DONE]: {}",
            String::from_utf8_lossy(&stream)
        );
    }
}

/// Streams open now, and the most that were open at once.
#[derive(Default)]
struct OpenStreams {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl OpenStreams {
    /// Counts a stream as open until the guard drops.
    fn enter(&self) -> OpenStream<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        OpenStream(self)
    }
}

struct OpenStream<'a>(&'a OpenStreams);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the streams phase saw.
struct Streams {
    /// Each figure's maximum over the samples.
    peak: Sample,
    samples: usize,
    /// The most streams open at once (response head received, `[DONE]` not yet).
    most_open: usize,
    /// The daemon's connections to the provider just after the streams ended.
    provider_connections: usize,
    /// When, after the streams ended, the daemon held no connection to the provider any more
    /// (`None`: not within [`POOL_PATIENCE`]).
    provider_closed_after: Option<Duration>,
}

/// [`STREAMS`] clients, each on its own connection, run one slow streaming chat at once; returns
/// the most that were open at once and how long they all took. The clients and their connections
/// are gone when it returns.
async fn streams(gateway: &Arc<Gateway>) -> (usize, Duration) {
    let started = Instant::now();
    let open = Arc::new(OpenStreams::default());
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..STREAMS {
        let (gateway, open) = (gateway.clone(), open.clone());
        tasks.spawn(async move {
            let client = gateway.client(client_address(index));
            gateway
                .streaming_chat(&client, &format!("memory benchmark stream {index}"), &open)
                .await;
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("a stream client");
    }
    (open.peak.load(Ordering::SeqCst), started.elapsed())
}

/// 127.0.0.1, .2, ... in turn, so that no address holds more connections than the gateway admits.
fn client_address(index: usize) -> IpAddr {
    let host = u8::try_from(1 + index % CLIENT_ADDRESSES).expect("a handful of addresses");
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
}

/// A client of the control socket that sends turns, starting a new session every
/// [`TURNS_PER_SESSION`] turns.
struct TurnClient {
    control: ControlClient<Channel>,
    /// The current session; empty when the next turn is to create one.
    session_id: String,
    turns_in_session: usize,
    /// Sessions this client created.
    sessions: usize,
    /// Turns this client completed.
    turns: usize,
}

impl TurnClient {
    /// [`TURN_CLIENTS`] clients, each on its own connection.
    async fn connect_all(socket: &Path) -> Vec<Self> {
        let mut clients = Vec::with_capacity(TURN_CLIENTS);
        for _ in 0..TURN_CLIENTS {
            clients.push(Self {
                control: blufio_testkit::control_client(socket).await,
                session_id: String::new(),
                turns_in_session: 0,
                sessions: 0,
                turns: 0,
            });
        }
        clients
    }

    /// Sends one message and reads the turn's events to `completed`.
    async fn turn(&mut self) {
        if self.turns_in_session == TURNS_PER_SESSION {
            self.session_id.clear();
            self.turns_in_session = 0;
        }
        if self.session_id.is_empty() {
            self.sessions += 1;
        }
        let mut events = self
            .control
            .send_message(pb::SendMessageRequest {
                session_id: self.session_id.clone(),
                text: format!("memory benchmark turn {}", self.turns),
            })
            .await
            .expect("send a message")
            .into_inner();
        let mut completed = false;
        while let Some(event) = events.message().await.expect("a turn's events") {
            match event.event {
                Some(pb::send_message_response::Event::Accepted(accepted)) => self.session_id = accepted.session_id,
                Some(pb::send_message_response::Event::Completed(_)) => completed = true,
                _ => {}
            }
        }
        assert!(completed, "a turn ended without completing");
        self.turns_in_session += 1;
        self.turns += 1;
    }
}

/// A checkpoint of the turns phase.
struct Checkpoint {
    /// Turns sent in all, at this checkpoint.
    turns: usize,
    /// Turns sent since the previous checkpoint, and how long they took.
    batch: usize,
    took: Duration,
    sample: Sample,
}

/// What the turns phase saw.
struct Turns {
    /// After a tenth of the turns, and after all.
    checkpoints: Vec<Checkpoint>,
    /// Sessions the turns created.
    sessions: usize,
}

/// Sends `total` turns, shared among the clients as evenly as they divide, as fast as the daemon
/// answers; returns how long they took.
async fn run_turns(clients: &mut Vec<TurnClient>, total: usize) -> Duration {
    let started = Instant::now();
    let count = clients.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut client) in clients.drain(..).enumerate() {
        let share = total / count + usize::from(index < total % count);
        tasks.spawn(async move {
            for _ in 0..share {
                client.turn().await;
            }
            client
        });
    }
    while let Some(result) = tasks.join_next().await {
        clients.push(result.expect("a turn client"));
    }
    started.elapsed()
}

/// What the soak saw.
struct Soak {
    duration: Duration,
    /// Every sample, with its time since the soak began.
    samples: Vec<(Duration, Sample)>,
    turns: usize,
    chats: usize,
}

impl Soak {
    /// The least-squares slope of `figure` (KiB) over the samples taken from `from` on, in KiB
    /// per hour.
    fn slope(&self, from: Duration, figure: fn(&Sample) -> Option<u64>) -> Option<f64> {
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|(at, _)| *at >= from)
            .filter_map(|(at, sample)| Some((at.as_secs_f64() / 3600.0, figure(sample)? as f64)))
            .collect();
        bench::slope(&points)
    }

    /// The slopes the report shows: RSS over the whole soak and over its second half (after any
    /// warm-up), and the heap over the whole soak.
    fn slopes(&self) -> [Option<f64>; 3] {
        [
            self.slope(Duration::ZERO, |sample| Some(sample.memory.rss_kib)),
            self.slope(self.duration / 2, |sample| Some(sample.memory.rss_kib)),
            self.slope(Duration::ZERO, |sample| sample.heap_kib),
        ]
    }
}

/// Steady paced traffic for `duration`: every turn client sends a turn every
/// [`SOAK_TURN_EVERY`], and one gateway client (one kept-alive connection) a streaming chat
/// every [`SOAK_CHAT_EVERY`]. Returns how many turns and chats were sent.
async fn soak_traffic(clients: &mut Vec<TurnClient>, gateway: &Arc<Gateway>, duration: Duration) -> (usize, usize) {
    let deadline = tokio::time::Instant::now() + duration;
    let paced = |every| {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    };
    let turns_before: usize = clients.iter().map(|client| client.turns).sum();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients.drain(..) {
        let mut ticks = paced(SOAK_TURN_EVERY);
        tasks.spawn(async move {
            while ticks.tick().await < deadline {
                client.turn().await;
            }
            client
        });
    }
    let chats = tokio::spawn({
        let gateway = gateway.clone();
        let mut ticks = paced(SOAK_CHAT_EVERY);
        async move {
            let client = gateway.client(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let open = OpenStreams::default();
            let mut chats = 0;
            while ticks.tick().await < deadline {
                gateway
                    .streaming_chat(&client, &format!("memory benchmark chat {chats}"), &open)
                    .await;
                chats += 1;
            }
            chats
        }
    });
    while let Some(result) = tasks.join_next().await {
        clients.push(result.expect("a turn client"));
    }
    let chats = chats.await.expect("the chat client");
    let turns_after: usize = clients.iter().map(|client| client.turns).sum();
    (turns_after - turns_before, chats)
}

/// One row of the table: a phase, how long it took, and the daemon's figures at its end (during
/// it, for a peak).
struct Row {
    phase: String,
    took: Duration,
    sample: Sample,
}

/// The table and what is said under it.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Adds a row, and says so on stderr, so that a long run shows its progress.
    fn row(&mut self, phase: &str, took: Duration, sample: Sample) {
        eprintln!(
            "memory: {phase}: RSS {:.1} MiB ({:.1} s)",
            mib(sample.memory.rss_kib),
            took.as_secs_f64()
        );
        self.rows.push(Row {
            phase: phase.to_owned(),
            took,
            sample,
        });
    }

    fn print(&self, streams: &Streams, turns: &Turns, soak: Option<&Soak>) {
        let (checkpoints, sessions) = (turns.checkpoints.as_slice(), turns.sessions);
        println!("blufiod memory, release build (/proc/PID/status and smaps_rollup, GetStatus; MiB of 1024 KiB)");
        println!(
            "{:<28} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5}",
            "phase", "took s", "RSS MiB", "anon MiB", "file MiB", "PSS MiB", "heap MiB", "jem MiB", "threads", "fds"
        );
        let shown = |kib: Option<u64>| kib.map_or_else(|| "-".to_owned(), |kib| format!("{:.1}", mib(kib)));
        for row in &self.rows {
            let memory = &row.sample.memory;
            println!(
                "{:<28} {:>7.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>8} {:>7} {:>5}",
                row.phase,
                row.took.as_secs_f64(),
                mib(memory.rss_kib),
                mib(memory.rss_anon_kib),
                mib(memory.rss_file_kib),
                mib(memory.pss_kib),
                shown(row.sample.heap_kib),
                shown(row.sample.allocator_kib),
                memory.threads,
                memory.open_fds
            );
        }
        println!(
            "heap: live allocations as jemalloc counts them; jem: jemalloc's resident pages (the heap, its overhead, \
             free pages not yet returned); anon beyond jem is SQLite's own malloc, thread stacks and the like"
        );
        println!(
            "fds: open descriptors, sockets included: the benchmark's status connection, and from the turns on its \
             {TURN_CLIENTS} turn clients' connections"
        );
        println!(
            "peak: each column's maximum over {} samples {} ms apart (the heap is not read there); {} of {STREAMS} \
             streams open at once, on {STREAMS} connections from {CLIENT_ADDRESSES} loopback addresses, each answer \
             {STREAM_DELTAS} deltas with {} ms before every event; the kernel's VmHWM {:.1} MiB",
            streams.samples,
            PEAK_SAMPLE_EVERY.as_millis(),
            streams.most_open,
            STREAM_PAUSE.as_millis(),
            mib(streams.peak.memory.peak_rss_kib)
        );
        println!(
            "after the streams: the gateway's connections closed with their clients; the daemon kept {} idle \
             connections to the provider, {}",
            streams.provider_connections,
            streams.provider_closed_after.map_or_else(
                || format!("some still open {} s after the streams ended", POOL_PATIENCE.as_secs()),
                |after| format!("the last closed {:.0} s after the streams ended", after.as_secs_f64())
            )
        );
        for checkpoint in checkpoints {
            println!(
                "turns: {} to {} in {:.1} s, {:.0} turns/s",
                checkpoint.turns - checkpoint.batch,
                checkpoint.turns,
                checkpoint.took.as_secs_f64(),
                per_second(checkpoint.batch, checkpoint.took)
            );
        }
        println!(
            "turns: {TURN_CLIENTS} gRPC clients on the control socket, instant fake provider, a new session every \
             {TURNS_PER_SESSION} turns ({sessions} sessions)"
        );
        if let [first, last] = checkpoints {
            let growth = Growth::between(first, last);
            let turns = (last.turns - first.turns) as f64;
            let heap = growth.heap_kib.map_or_else(
                || "heap n/a".to_owned(),
                |kib| {
                    format!(
                        "heap {:+.2} MiB ({:+.1} bytes per turn)",
                        kib as f64 / 1024.0,
                        kib as f64 * 1024.0 / turns
                    )
                },
            );
            println!(
                "growth from {} to {} turns: RSS {:+.2} MiB ({:+.1} bytes per turn), anon {:+.2} MiB, {heap}",
                first.turns,
                last.turns,
                growth.rss_kib as f64 / 1024.0,
                growth.rss_kib as f64 * 1024.0 / turns,
                growth.anon_kib as f64 / 1024.0,
            );
        }
        if let Some(soak) = soak {
            let shown = |slope: Option<f64>| slope.map_or_else(|| "n/a".to_owned(), |slope| format!("{slope:+.0}"));
            let [rss, rss_second_half, heap] = soak.slopes();
            println!(
                "soak: {:.0} min, {} turns ({TURN_CLIENTS} clients, one each every {} ms) and {} gateway chats (one \
                 every {} ms), {} samples {} s apart; least-squares slopes in KiB/hour: RSS {}, RSS over the second \
                 half {}, heap {}",
                soak.duration.as_secs_f64() / 60.0,
                soak.turns,
                SOAK_TURN_EVERY.as_millis(),
                soak.chats,
                SOAK_CHAT_EVERY.as_millis(),
                soak.samples.len(),
                SOAK_SAMPLE_EVERY.as_secs(),
                shown(rss),
                shown(rss_second_half),
                shown(heap)
            );
        }
    }

    /// The same figures as [`Self::print`], sizes in KiB as the kernel gives them.
    fn json(&self, streams: &Streams, turns: &Turns, soak: Option<&Soak>) -> serde_json::Value {
        let (checkpoints, sessions) = (turns.checkpoints.as_slice(), turns.sessions);
        let phases: Vec<_> = self
            .rows
            .iter()
            .map(|row| {
                let mut phase = sample_json(&row.sample);
                phase["phase"] = json!(row.phase);
                phase["seconds"] = json!(row.took.as_secs_f64());
                phase
            })
            .collect();
        let growth = match checkpoints {
            [first, last] => {
                let growth = Growth::between(first, last);
                json!({
                    "from_turns": first.turns,
                    "to_turns": last.turns,
                    "rss_kib": growth.rss_kib,
                    "rss_anon_kib": growth.anon_kib,
                    "heap_kib": growth.heap_kib,
                })
            }
            _ => serde_json::Value::Null,
        };
        let soak = soak.map(|soak| {
            let samples: Vec<_> = soak
                .samples
                .iter()
                .map(|(at, sample)| {
                    let mut sample = sample_json(sample);
                    sample["seconds"] = json!(at.as_secs_f64());
                    sample
                })
                .collect();
            let [rss, rss_second_half, heap] = soak.slopes();
            json!({
                "seconds": soak.duration.as_secs_f64(),
                "turns": soak.turns,
                "turn_clients": TURN_CLIENTS,
                "turn_every_ms": SOAK_TURN_EVERY.as_millis(),
                "chats": soak.chats,
                "chat_every_ms": SOAK_CHAT_EVERY.as_millis(),
                "sample_every_secs": SOAK_SAMPLE_EVERY.as_secs(),
                "rss_slope_kib_per_hour": rss,
                "rss_slope_second_half_kib_per_hour": rss_second_half,
                "heap_slope_kib_per_hour": heap,
                "samples": samples,
            })
        });
        json!({
            "phases": phases,
            "streams": {
                "streams": STREAMS,
                "connections": STREAMS,
                "client_addresses": CLIENT_ADDRESSES,
                "most_open_at_once": streams.most_open,
                "deltas": STREAM_DELTAS,
                "pause_ms": STREAM_PAUSE.as_millis(),
                "samples": streams.samples,
                "sample_every_ms": PEAK_SAMPLE_EVERY.as_millis(),
                "kernel_peak_rss_kib": streams.peak.memory.peak_rss_kib,
                "provider_connections_after": streams.provider_connections,
                "provider_connections_closed_after_secs": streams.provider_closed_after.map(|after| after.as_secs_f64()),
            },
            "turns": {
                "clients": TURN_CLIENTS,
                "turns_per_session": TURNS_PER_SESSION,
                "sessions": sessions,
                "checkpoints": checkpoints.iter().map(|checkpoint| json!({
                    "turns": checkpoint.turns,
                    "batch": checkpoint.batch,
                    "seconds": checkpoint.took.as_secs_f64(),
                    "turns_per_second": per_second(checkpoint.batch, checkpoint.took),
                })).collect::<Vec<_>>(),
                "growth": growth,
            },
            "soak": soak,
        })
    }
}

/// A sample's figures as JSON, in KiB.
fn sample_json(sample: &Sample) -> serde_json::Value {
    let memory = &sample.memory;
    json!({
        "rss_kib": memory.rss_kib,
        "rss_anon_kib": memory.rss_anon_kib,
        "rss_file_kib": memory.rss_file_kib,
        "rss_shmem_kib": memory.rss_shmem_kib,
        "pss_kib": memory.pss_kib,
        "pss_anon_kib": memory.pss_anon_kib,
        "pss_file_kib": memory.pss_file_kib,
        "heap_kib": sample.heap_kib,
        "allocator_resident_kib": sample.allocator_kib,
        "threads": memory.threads,
        "open_fds": memory.open_fds,
    })
}

/// How the figures changed from one checkpoint to the next, in KiB (negative when they shrank).
struct Growth {
    rss_kib: i64,
    anon_kib: i64,
    heap_kib: Option<i64>,
}

impl Growth {
    fn between(first: &Checkpoint, last: &Checkpoint) -> Self {
        let change = |before: u64, after: u64| {
            i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
        };
        let (before, after) = (&first.sample, &last.sample);
        Self {
            rss_kib: change(before.memory.rss_kib, after.memory.rss_kib),
            anon_kib: change(before.memory.rss_anon_kib, after.memory.rss_anon_kib),
            heap_kib: before
                .heap_kib
                .zip(after.heap_kib)
                .map(|(before, after)| change(before, after)),
        }
    }
}

fn per_second(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
