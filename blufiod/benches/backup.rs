//! Backup throughput, and the gateway's latency while a backup runs: the release `blufiod` on a
//! database grown to N MiB (1024 unless `--mib N`), serving steady signed gateway traffic and
//! turns, while the real release `blufioctl backup PATH` takes an archive of it.
//!
//! 1. A daemon starts on a fresh directory (against the fake provider) and stops, so that the
//!    schema exists. The benchmark then grows its database to N MiB with SQL, in large
//!    transactions in WAL mode: sessions of turns, each a user message, an answer (sometimes a
//!    tool call, its result and a second answer), the turn row and a ledger row per provider call.
//!    Messages hold content-block JSON of 200 B to 8 KiB (log-uniform) of English-like prose drawn
//!    from a fixed word list (Zipf-weighted, seeded PRNG), not random bytes, so that the archive
//!    compresses as text does, and the same database every run.
//! 2. The daemon starts again on that directory (the time to `READY=1` is reported). A device is
//!    registered and steady load begins: signed `GET /v1/models` at [`MODELS_RATE`] and
//!    `GET /v1/status` (which reads the database) at [`STATUS_RATE`] requests/s, open loop over
//!    [`CONNECTIONS`] HTTP/2 connections; and [`TURN_CLIENTS`] gRPC clients on the control socket,
//!    each sending a turn every [`TURN_EVERY`] (20 turns/s against an instant fake), so the
//!    database is written throughout.
//! 3. After [`WARMUP`], a baseline window of [`BASELINE`]; then `blufioctl backup PATH --json`
//!    (PATH beside the state directory, on the same filesystem), the daemon and the client
//!    sampled every [`SAMPLE_EVERY`]; then [`AFTER`] more of the load, and the daemon stops.
//!
//! Reported: the archive's size; the wall time, from blufioctl's start to its exit; the throughput
//! in MB/s (10^6 bytes) of database size; where that time went, read from the files the backup
//! makes (the snapshot growing, the client's temporary file growing, the archive renamed into
//! place) and from the daemon's `backup finished` log line; the daemon's and the client's peak
//! RSS and the daemon's CPU time; the WAL's growth; and the latency (p50, p99, max, the share
//! over [`SLOW`]) of each kind of request in each window, with the p99 during the backup as a
//! ratio to the baseline's.
//!
//! Run with `cargo xtask bench backup [--mib N] [--json PATH] [--fill-cache DIR] [--stream]`
//! (`--stream`: `blufioctl backup --stream`, the archive streamed over the socket rather than
//! built by the client from the snapshot's descriptor), which builds the release
//! blufioctl first (`cargo bench -p blufiod` builds only the daemon). The temp directory needs
//! about three times N free: the database, the snapshot and the archive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blufio_proto::control::v1 as pb;
use blufio_proto::httpsig;
use blufio_testkit::bench::{self, ProcessMemory};
use blufio_testkit::fake_provider::FakeProvider;
use blufio_testkit::{Daemon, DaemonOptions, describe, new_dir};
use serde_json::json;

#[path = "common/gateway.rs"]
mod gateway_device;
use gateway_device::Gateway;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _, SqliteConnection};
use tokio::time::MissedTickBehavior;

/// The database's size unless `--mib` says otherwise.
const DEFAULT_MIB: u64 = 1024;
/// Signed `GET /v1/models` per second: the gateway's own cost (TLS, signature, replay check).
const MODELS_RATE: u32 = 200;
/// Signed `GET /v1/status` per second: a request that also reads the database (a session count
/// on the read pool, which the snapshot shares).
const STATUS_RATE: u32 = 20;
/// HTTP/2 connections the gateway requests are spread over, round robin (each takes 16 streams
/// at once; the gateway admits 32 connections from one address).
const CONNECTIONS: usize = 4;
/// Requests of one kind in flight at most; a tick that finds this many is skipped and counted.
const MAX_IN_FLIGHT: usize = 256;
/// A gateway request that takes longer has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// gRPC clients on the control socket sending turns, each every [`TURN_EVERY`].
const TURN_CLIENTS: usize = 4;
const TURN_EVERY: Duration = Duration::from_millis(200);
/// Turns in a session before a client starts another, so that no context grows long.
const TURNS_PER_SESSION: usize = 20;
/// Load before the baseline window begins, left out of every window.
const WARMUP: Duration = Duration::from_secs(3);
/// The baseline window, before the backup.
const BASELINE: Duration = Duration::from_secs(10);
/// The window after the backup (the WAL's checkpoint catching up, for one).
const AFTER: Duration = Duration::from_secs(5);
/// A request this slow or slower is counted in the table's last column.
const SLOW: Duration = Duration::from_millis(10);
/// How often the daemon, the client and their files are sampled during the backup.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The load stops by itself after this long whatever happens.
const MAX_LOAD: Duration = Duration::from_secs(30 * 60);
/// The seed of the database's contents.
const SEED: u64 = 0x0b1u64 << 32 | 0xf10;
/// The target of the daemon's log lines kept besides warnings: the backup's `backup finished`.
const LOG_FILTER: &str = "warn,blufiod::backup=info";
/// The label of both kinds of gateway request together.
const GATEWAY: &str = "gateway, both GETs";
/// Archive target: at least this many MB/s of database size.
const TARGET_MB_PER_SECOND: f64 = 200.0;
/// Latency target: the gateway's p99 during the backup at most this times the baseline's.
const TARGET_P99_RATIO: f64 = 2.0;

fn main() {
    let options = Options::from_args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeProvider::start();
    // Tens of thousands of turns' request bodies would cost the benchmark, not the daemon.
    fake.set_recording(false);
    let dir = new_dir();
    let database = dir.path().join("state/blufio.db");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    // The schema, then the rows.
    bench::finish(Daemon::start_with(dir.clone(), daemon_options(&fake)));
    let cache = options
        .fill_cache
        .as_ref()
        .map(|cache| cache.join(format!("fill-{}", options.mib)));
    let schema = runtime.block_on(schema_version(&database));
    let filled = match cache
        .as_deref()
        .and_then(|cache| FillCache::load(cache, &dir.path().join("state"), schema))
    {
        Some(filled) => filled,
        None => {
            let filled = runtime.block_on(fill(&database, options.mib));
            if let Some(cache) = &cache {
                FillCache::save(cache, &dir.path().join("state"), &filled, schema);
            }
            filled
        }
    };

    let daemon = Daemon::start_with(
        dir.clone(),
        DaemonOptions {
            wait_ready: false,
            ..daemon_options(&fake)
        },
    );
    let ready = daemon.wait_ready();
    eprintln!(
        "backup: the daemon was ready on the filled database in {:.0} ms",
        millis(ready)
    );
    let gateway = Arc::new(runtime.block_on(Gateway::register(&daemon)));

    let origin = Instant::now();
    let load = Load::start(&runtime, &gateway, &daemon.socket, origin);
    std::thread::sleep(WARMUP);
    let baseline_start = origin.elapsed();
    std::thread::sleep(BASELINE);
    let archive = dir.path().join("backup.tar");
    let backup = Backup::run(&daemon, &database, &archive, options.stream, origin);
    std::thread::sleep(AFTER);
    let after_end = origin.elapsed();
    let records = load.stop(&runtime);
    let log = daemon.stderr();
    bench::finish(daemon);
    drop(fake);

    let windows = [
        Window::new("baseline", baseline_start, backup.began),
        Window::new("backup", backup.began, backup.ended),
        Window::new("after", backup.ended, after_end),
    ];
    let report = Report {
        mib: options.mib,
        filled,
        ready,
        daemon_seconds: daemon_backup_seconds(&log),
        backup,
        rows: Row::all(&records, &windows),
        skipped: records.skipped,
    };
    report.print();
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report.json()).expect("serialize the report");
        std::fs::write(path, text + "\n").unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}

/// The command line: `[--mib N] [--json PATH] [--fill-cache DIR] [--stream]` (cargo adds
/// `--bench`).
struct Options {
    mib: u64,
    /// `blufioctl backup --stream`: the archive streamed over the socket instead of built by the
    /// client from the snapshot's descriptor.
    stream: bool,
    json: Option<PathBuf>,
    /// Where a filled database is kept between runs (the fill is the same for the same `--mib`).
    fill_cache: Option<PathBuf>,
}

impl Options {
    fn from_args() -> Self {
        let mut options = Self {
            mib: DEFAULT_MIB,
            stream: false,
            json: None,
            fill_cache: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--mib" => {
                    options.mib = args
                        .next()
                        .and_then(|value| value.parse().ok())
                        .unwrap_or_else(|| usage("--mib takes a number"));
                }
                "--json" => {
                    options.json = Some(args.next().map_or_else(|| usage("--json needs a PATH"), PathBuf::from));
                }
                "--fill-cache" => {
                    options.fill_cache = Some(
                        args.next()
                            .map_or_else(|| usage("--fill-cache needs a DIR"), PathBuf::from),
                    );
                }
                "--stream" => options.stream = true,
                "--bench" => {}
                other => usage(&format!("unknown argument {other:?}")),
            }
        }
        if options.mib < 8 {
            usage("--mib must be at least 8");
        }
        options
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("{problem}\nusage: cargo xtask bench backup [--mib N] [--json PATH] [--fill-cache DIR] [--stream]");
    std::process::exit(2)
}

/// The daemon's options: the load config (every model free, no budget caps), the gateway on, no
/// scheduled backup (the first would come a minute after the start), and the backup's log lines.
fn daemon_options(fake: &FakeProvider) -> DaemonOptions {
    DaemonOptions {
        config: bench::load_config(
            &fake.url(),
            2 * TURN_CLIENTS,
            "[gateway]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_minute = 1000000\n[backup]\ninterval_secs = 0\n",
        ),
        env: vec![("RUST_LOG".to_owned(), LOG_FILTER.to_owned())],
        ..DaemonOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The database's contents.

/// A small, fast, seeded PRNG (SplitMix64): the same database every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next()) * bound as u128) >> 64) as usize
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    /// A UUIDv7 string for `at_millis`, its random bits from this generator.
    fn uuid(&mut self, at_millis: u64) -> String {
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&self.next().to_le_bytes());
        random[8..].copy_from_slice(&self.next().to_le_bytes()[..2]);
        uuid::Builder::from_unix_timestamp_millis(at_millis, &random)
            .into_uuid()
            .to_string()
    }

    /// `count` lowercase hex digits.
    fn hex(&mut self, count: usize) -> String {
        (0..count)
            .map(|_| char::from_digit(self.below(16) as u32, 16).expect("a hex digit"))
            .collect()
    }
}

/// How sentences end.
const ENDINGS: &[char] = &['.', '.', '.', '.', '?', '!', ':'];

/// English-like prose: words of [`WORDS`], Zipf-weighted by their rank, in sentences of 6 to 22.
struct Prose {
    words: Vec<&'static str>,
    /// The running sums of the words' weights.
    cumulative: Vec<f64>,
}

static PROSE: LazyLock<Prose> = LazyLock::new(|| {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut total = 0.0;
    let cumulative = (0..words.len())
        .map(|rank| {
            total += 1.0 / (rank as f64 + 1.0).powf(1.05);
            total
        })
        .collect();
    Prose { words, cumulative }
});

impl Prose {
    fn word(&self, rng: &mut Rng) -> &'static str {
        let total = *self.cumulative.last().expect("words");
        let drawn = rng.unit() * total;
        let index = self.cumulative.partition_point(|&sum| sum <= drawn);
        self.words[index.min(self.words.len() - 1)]
    }

    /// About `bytes` bytes of sentences (ASCII; cut at a word's end once past `bytes`).
    fn text(&self, rng: &mut Rng, bytes: usize) -> String {
        let mut text = String::with_capacity(bytes + 16);
        while text.len() < bytes {
            if !text.is_empty() {
                text.push_str(if rng.chance(0.15) { "\n\n" } else { " " });
            }
            let words = 6 + rng.below(17);
            for index in 0..words {
                let word = self.word(rng);
                if index == 0 {
                    let mut chars = word.chars();
                    if let Some(first) = chars.next() {
                        text.push(first.to_ascii_uppercase());
                        text.push_str(chars.as_str());
                    }
                } else {
                    if rng.chance(0.06) {
                        text.push(',');
                    }
                    text.push(' ');
                    text.push_str(word);
                }
                if text.len() >= bytes {
                    break;
                }
            }
            text.push(ENDINGS[rng.below(ENDINGS.len())]);
        }
        text
    }
}

/// What [`fill`] wrote.
#[derive(Debug, Default, Clone, Copy)]
struct Filled {
    sessions: u64,
    turns: u64,
    messages: u64,
    ledger: u64,
    /// The database's size (pages × page size) when it stopped.
    bytes: u64,
    took: Duration,
}

/// The schema version of the database at `path` (its last migration).
async fn schema_version(path: &Path) -> i64 {
    let mut connection = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .expect("open the database");
    let (version,): (i64,) = sqlx::query_as("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut connection)
        .await
        .expect("the schema version");
    version
}

/// `--fill-cache DIR`: a filled database kept between runs with the vault key that seals it, so
/// that a repeated run copies it (seconds) instead of filling (minutes).
struct FillCache;

impl FillCache {
    /// The files kept: the database and the generated vault key of the state directory.
    const FILES: [&str; 2] = ["blufio.db", "vault.key"];

    /// Copies the cached fill into the stopped daemon's `state` directory, if there is one of
    /// the daemon's `schema` (an older one would be migrated at start, under the measurement).
    fn load(cache: &Path, state: &Path, schema: i64) -> Option<Filled> {
        let counts: serde_json::Value = serde_json::from_slice(&std::fs::read(cache.join("filled.json")).ok()?).ok()?;
        if counts["schema"].as_i64() != Some(schema) {
            eprintln!(
                "backup: the fill in {} is not of the daemon's schema {schema}: filling again",
                cache.display()
            );
            return None;
        }
        for stale in ["blufio.db-wal", "blufio.db-shm"] {
            let _ = std::fs::remove_file(state.join(stale));
        }
        for file in Self::FILES {
            std::fs::copy(cache.join(file), state.join(file))
                .and_then(|_| std::fs::File::open(state.join(file))?.sync_all())
                .unwrap_or_else(|error| panic!("cannot copy {file} from {}: {error}", cache.display()));
        }
        let count = |key: &str| {
            counts[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{key} missing from the fill cache"))
        };
        eprintln!("backup: the filled database comes from {}", cache.display());
        Some(Filled {
            sessions: count("sessions"),
            turns: count("turns"),
            messages: count("messages"),
            ledger: count("ledger"),
            bytes: count("bytes"),
            took: Duration::ZERO,
        })
    }

    /// Keeps the fill just made in `state` for the next run.
    fn save(cache: &Path, state: &Path, filled: &Filled, schema: i64) {
        std::fs::create_dir_all(cache).unwrap_or_else(|error| panic!("cannot create {}: {error}", cache.display()));
        for file in Self::FILES {
            std::fs::copy(state.join(file), cache.join(file))
                .unwrap_or_else(|error| panic!("cannot copy {file} to {}: {error}", cache.display()));
        }
        let counts = serde_json::json!({
            "sessions": filled.sessions,
            "turns": filled.turns,
            "messages": filled.messages,
            "ledger": filled.ledger,
            "bytes": filled.bytes,
            "schema": schema,
        });
        std::fs::write(cache.join("filled.json"), counts.to_string())
            .unwrap_or_else(|error| panic!("cannot write into {}: {error}", cache.display()));
    }
}

const TOOLS: &[&str] = &[
    "read_file",
    "search",
    "list_dir",
    "run_command",
    "web_fetch",
    "write_file",
];
const MODELS: &[&str] = &["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"];

/// Grows the stopped daemon's database at `path` to `mib` MiB.
async fn fill(path: &Path, mib: u64) -> Filled {
    let started = Instant::now();
    let target = mib * 1024 * 1024;
    // A fixture written once: no fsync per transaction (the daemon itself runs `NORMAL`).
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .foreign_keys(true)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
        .fetch_one(&mut connection)
        .await
        .expect("page size");
    let mut rng = Rng(SEED);
    let now = unix_now();
    // A year of conversations, the last ones ending about now (a turn takes about 8 KB of the
    // file, so that the clock rarely runs past now).
    let mut clock = now - 365 * 86_400;
    let step = (365 * 86_400 * 8_000 / i64::try_from(target).unwrap_or(i64::MAX).max(1)).max(2);
    let batch = (target / 16).clamp(1 << 20, 32 << 20);
    let mut filled = Filled::default();
    let mut reported = 0;
    loop {
        let mut transaction = connection.begin().await.expect("begin");
        let mut written = 0;
        while written < batch {
            written += session(&mut transaction, &mut rng, &mut clock, step).await;
        }
        transaction.commit().await.expect("commit");
        let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count")
            .fetch_one(&mut connection)
            .await
            .expect("page count");
        filled.bytes = u64::try_from(pages * page_size).unwrap_or(0);
        if filled.bytes * 10 / target > reported {
            reported = filled.bytes * 10 / target;
            eprintln!(
                "backup: database {:.0} of {mib} MiB ({:.0} s)",
                mib_of(filled.bytes),
                started.elapsed().as_secs_f64()
            );
        }
        if filled.bytes >= target {
            break;
        }
    }
    // Each message's place in the order of turns, as the daemon writes it (migration 5): the
    // turns are inserted after their messages above.
    sqlx::query("UPDATE messages SET turn_seq = (SELECT rowid FROM turns WHERE turns.id = messages.turn_id)")
        .execute(&mut connection)
        .await
        .expect("set the messages' turn order");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut connection)
        .await
        .expect("checkpoint");
    for (query, count) in [
        ("SELECT count(*) FROM sessions", &mut filled.sessions),
        ("SELECT count(*) FROM turns", &mut filled.turns),
        ("SELECT count(*) FROM messages", &mut filled.messages),
        ("SELECT count(*) FROM ledger", &mut filled.ledger),
    ] {
        let (rows,): (i64,) = sqlx::query_as(query)
            .fetch_one(&mut connection)
            .await
            .expect("count rows");
        *count = u64::try_from(rows).unwrap_or(0);
    }
    connection.close().await.expect("close");
    filled.took = started.elapsed();
    filled
}

/// One session of 3 to 60 turns; returns roughly the bytes it wrote.
async fn session(connection: &mut SqliteConnection, rng: &mut Rng, clock: &mut i64, step: i64) -> u64 {
    let created = *clock;
    let id = rng.uuid(millis_of(created));
    let model = rng.pick(MODELS);
    let length = 12 + rng.below(40);
    let title = PROSE.text(rng, length);
    sqlx::query("INSERT INTO sessions (id, title, created_at, updated_at, model) VALUES (?, ?, ?, ?, ?)")
        .bind(&id)
        .bind(&title)
        .bind(created)
        .bind(created)
        .bind(model)
        .execute(&mut *connection)
        .await
        .expect("insert a session");
    let mut written = 0;
    let mut history = 0;
    for _ in 0..3 + rng.below(58) {
        *clock += 1 + i64::try_from(rng.below(usize::try_from(2 * step).unwrap_or(2))).unwrap_or(0);
        let started = *clock;
        let turn = rng.uuid(millis_of(started));
        let user = rng.uuid(millis_of(started));
        let size = content_size(rng);
        let content = json!([{"type": "text", "text": PROSE.text(rng, size)}]).to_string();
        written += message(connection, &user, &id, &turn, "user", &content, started).await;
        history += content.len();
        let mut at = started;
        let mut calls = Vec::new();
        if rng.chance(0.3) {
            // A tool call, its result, and the answer after it.
            let tool_id = format!("toolu_{}", rng.hex(24));
            let size = content_size(rng);
            let (directory, file, pattern) = (PROSE.word(rng), PROSE.word(rng), PROSE.word(rng));
            let content = json!([
                {"type": "text", "text": PROSE.text(rng, size / 3)},
                {"type": "tool_use", "id": &tool_id, "name": rng.pick(TOOLS),
                 "input": {"path": format!("src/{directory}/{file}.rs"), "pattern": pattern}},
            ])
            .to_string();
            at += 2;
            let id_call = rng.uuid(millis_of(at));
            written += message(connection, &id_call, &id, &turn, "assistant", &content, at).await;
            calls.push((history, content.len()));
            history += content.len();
            let size = content_size(rng);
            let content = json!([{"type": "tool_result", "tool_use_id": &tool_id,
                                  "content": PROSE.text(rng, size), "is_error": rng.chance(0.05)}])
            .to_string();
            at += 1;
            let id_result = rng.uuid(millis_of(at));
            written += message(connection, &id_result, &id, &turn, "tool", &content, at).await;
            history += content.len();
        }
        let size = content_size(rng);
        let content = json!([{"type": "text", "text": PROSE.text(rng, size)}]).to_string();
        at += 2 + i64::try_from(rng.below(20)).unwrap_or(0);
        let answer = rng.uuid(millis_of(at));
        written += message(connection, &answer, &id, &turn, "assistant", &content, at).await;
        calls.push((history, content.len()));
        history += content.len();
        sqlx::query(
            "INSERT INTO turns (id, session_id, inbound_message_id, state, started_at, finished_at) \
             VALUES (?, ?, ?, 'completed', ?, ?)",
        )
        .bind(&turn)
        .bind(&id)
        .bind(&user)
        .bind(started)
        .bind(at)
        .execute(&mut *connection)
        .await
        .expect("insert a turn");
        for (context, answer) in calls {
            // About four bytes a token; prices of $3 and $15 per million tokens.
            let input = 400 + i64::try_from(context / 4).unwrap_or(0).min(190_000);
            let output = 20 + i64::try_from(answer / 4).unwrap_or(0);
            let cache_read = if rng.chance(0.7) { input * 3 / 4 } else { 0 };
            let (day, month) = day_and_month(at);
            sqlx::query(
                "INSERT INTO ledger (at, day, month, session_id, turn_id, provider, model, input_tokens, \
                 output_tokens, cache_creation_tokens, cache_read_tokens, cost_micros, status) \
                 VALUES (?, ?, ?, ?, ?, 'anthropic', ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(at)
            .bind(day)
            .bind(month)
            .bind(&id)
            .bind(&turn)
            .bind(model)
            .bind(input)
            .bind(output)
            .bind(0_i64)
            .bind(cache_read)
            .bind(input * 3 + output * 15)
            .bind(if rng.chance(0.02) { "failed" } else { "ok" })
            .execute(&mut *connection)
            .await
            .expect("insert a ledger row");
            written += 160;
        }
    }
    sqlx::query("UPDATE sessions SET updated_at = ? WHERE id = ?")
        .bind(*clock)
        .bind(&id)
        .execute(&mut *connection)
        .await
        .expect("update a session");
    written as u64
}

/// Inserts a message; returns its content's size.
async fn message(
    connection: &mut SqliteConnection,
    id: &str,
    session: &str,
    turn: &str,
    role: &str,
    content: &str,
    at: i64,
) -> usize {
    sqlx::query("INSERT INTO messages (id, session_id, turn_id, role, content, created_at) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(id)
        .bind(session)
        .bind(turn)
        .bind(role)
        .bind(content)
        .bind(at)
        .execute(&mut *connection)
        .await
        .expect("insert a message");
    content.len() + 150
}

/// A message's text size: 200 B to 8 KiB, log-uniform (the JSON around it adds a little).
fn content_size(rng: &mut Rng) -> usize {
    (180.0 * (8000.0_f64 / 180.0).powf(rng.unit())) as usize
}

/// `YYYY-MM-DD` and `YYYY-MM` of a unix time, UTC.
fn day_and_month(at: i64) -> (String, String) {
    let date = time::OffsetDateTime::from_unix_timestamp(at)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    let month = format!("{:04}-{:02}", date.year(), u8::from(date.month()));
    (format!("{month}-{:02}", date.day()), month)
}

fn unix_now() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_secs()).expect("a unix time")
}

fn millis_of(at: i64) -> u64 {
    u64::try_from(at).unwrap_or(0) * 1000
}

// ---------------------------------------------------------------------------------------------
// The load.

impl Gateway {
    /// A client with a connection of its own.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([self.certificate.clone()])
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("client")
    }

    /// A signed GET of `path`, its body read; what went wrong, if anything.
    async fn get(&self, client: &reqwest::Client, path: &str) -> Result<(), String> {
        let mut headers = http::HeaderMap::new();
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let request = httpsig::SignRequest {
            method: "GET",
            scheme: "https",
            authority: &self.authority,
            path,
            query: None,
            body: &[],
            fields: &[],
            keyid: &self.keyid,
            nonce: &nonce,
            created: httpsig::unix_now(),
        };
        httpsig::sign_request(&request, &mut headers, &self.key).expect("sign");
        let response = client
            .get(format!("https://{}{path}", self.authority))
            .headers(headers)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    }
}

/// What one request or turn was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Models,
    Status,
    Turn,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Models => "GET /v1/models",
            Self::Status => "GET /v1/status",
            Self::Turn => "turn (gRPC)",
        }
    }

    /// The path a gateway request of this kind gets.
    fn path(self) -> &'static str {
        match self {
            Self::Models => "/v1/models",
            Self::Status => "/v1/status",
            Self::Turn => unreachable!("turns go through the control socket"),
        }
    }
}

/// One request or turn: when it was sent (since the load's origin), how long it took, and its
/// failure.
#[derive(Debug, Clone)]
struct Record {
    kind: Kind,
    at: Duration,
    took: Duration,
    failure: Option<String>,
}

/// Every record of a run, and the ticks skipped because [`MAX_IN_FLIGHT`] were in flight.
struct Records {
    records: Vec<Record>,
    skipped: usize,
}

/// The steady load, running on the benchmark's runtime.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<Record>, usize)>>,
}

impl Load {
    fn start(runtime: &tokio::runtime::Runtime, gateway: &Arc<Gateway>, socket: &Path, origin: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Arc<[reqwest::Client]> = (0..CONNECTIONS).map(|_| gateway.client()).collect();
        let mut tasks = Vec::new();
        for (kind, rate) in [(Kind::Models, MODELS_RATE), (Kind::Status, STATUS_RATE)] {
            tasks.push(runtime.spawn(requests(
                gateway.clone(),
                clients.clone(),
                kind,
                rate,
                origin,
                stop.clone(),
            )));
        }
        for index in 0..TURN_CLIENTS {
            let socket = socket.to_owned();
            let stop = stop.clone();
            tasks.push(runtime.spawn(async move { (turns(index, &socket, origin, &stop).await, 0) }));
        }
        Self { stop, tasks }
    }

    /// Stops the load and returns what it recorded.
    fn stop(self, runtime: &tokio::runtime::Runtime) -> Records {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Records {
            records: Vec::new(),
            skipped: 0,
        };
        for task in self.tasks {
            let (records, skipped) = runtime.block_on(task).expect("a load task");
            all.records.extend(records);
            all.skipped += skipped;
        }
        all
    }
}

/// Signed GETs of `kind`'s path at `rate` per second, open loop (each on a task of its own, so that a
/// slow answer does not delay the next), round robin over `clients`, until `stop`.
async fn requests(
    gateway: Arc<Gateway>,
    clients: Arc<[reqwest::Client]>,
    kind: Kind,
    rate: u32,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<Record>, usize) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut records = Vec::new();
    let mut skipped = 0;
    let mut sent = 0usize;
    loop {
        ticks.tick().await;
        if stop.load(Ordering::Relaxed) || origin.elapsed() > MAX_LOAD {
            break;
        }
        while let Some(done) = in_flight.try_join_next() {
            records.push(done.expect("a request task"));
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            skipped += 1;
            continue;
        }
        let client = clients[sent % clients.len()].clone();
        sent += 1;
        let gateway = gateway.clone();
        in_flight.spawn(async move {
            let started = Instant::now();
            let failure = gateway.get(&client, kind.path()).await.err();
            Record {
                kind,
                at: started - origin,
                took: started.elapsed(),
                failure,
            }
        });
    }
    while let Some(done) = in_flight.join_next().await {
        records.push(done.expect("a request task"));
    }
    (records, skipped)
}

/// One gRPC client on the control socket sending a turn every [`TURN_EVERY`] (or as soon as the
/// last one ends, when it took longer), a new session every [`TURNS_PER_SESSION`], until `stop`.
async fn turns(index: usize, socket: &Path, origin: Instant, stop: &AtomicBool) -> Vec<Record> {
    let mut control = blufio_testkit::control_client(socket).await;
    let mut rng = Rng(SEED ^ (index as u64 + 1));
    let mut ticks = tokio::time::interval(TURN_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut session = String::new();
    let mut in_session = 0;
    let mut records = Vec::new();
    loop {
        ticks.tick().await;
        if stop.load(Ordering::Relaxed) || origin.elapsed() > MAX_LOAD {
            return records;
        }
        if in_session == TURNS_PER_SESSION {
            session.clear();
            in_session = 0;
        }
        let size = 40 + rng.below(400);
        let text = PROSE.text(&mut rng, size);
        let started = Instant::now();
        let failure = turn(&mut control, &mut session, text).await.err();
        records.push(Record {
            kind: Kind::Turn,
            at: started - origin,
            took: started.elapsed(),
            failure,
        });
        in_session += 1;
    }
}

/// Sends one message and reads the turn's events to `completed`.
async fn turn(
    control: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    session: &mut String,
    text: String,
) -> Result<(), String> {
    let mut events = control
        .send_message(pb::SendMessageRequest {
            session_id: session.clone(),
            text,
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    let mut completed = false;
    while let Some(event) = events
        .message()
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
    {
        match event.event {
            Some(pb::send_message_response::Event::Accepted(accepted)) => *session = accepted.session_id,
            Some(pb::send_message_response::Event::Completed(_)) => completed = true,
            _ => {}
        }
    }
    if completed {
        Ok(())
    } else {
        Err("the turn ended without completing".to_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// The backup.

/// One look at the daemon, the client and the files during the backup.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    /// Since the client started.
    at: Duration,
    daemon_rss_kib: u64,
    client_rss_kib: u64,
    /// The snapshot file in the daemon's private temporary directory (0: none).
    snapshot_bytes: u64,
    /// The client's temporary file beside PATH (0: none yet, or renamed).
    received_bytes: u64,
    /// Whether PATH exists.
    archived: bool,
    wal_bytes: u64,
}

/// What the backup did and took.
struct Backup {
    /// `--stream`: the archive came over the socket, not from the snapshot's descriptor.
    streamed: bool,
    /// Since the load's origin: the client's start and exit.
    began: Duration,
    ended: Duration,
    wall: Duration,
    /// The database's file and WAL when it began.
    database_bytes: u64,
    wal_bytes: u64,
    archive_bytes: u64,
    /// The snapshot's size, as the archive's manifest gives it.
    snapshot_bytes: u64,
    probes: Vec<Probe>,
    daemon_rss_before_kib: u64,
    daemon_hwm_before_kib: u64,
    daemon_hwm_after_kib: u64,
    /// The daemon's CPU time (user + system) during the backup.
    daemon_cpu: Duration,
    /// blufioctl's CPU time (user + system).
    client_cpu: Duration,
    /// What blufioctl printed (`--json`).
    client_json: serde_json::Value,
}

impl Backup {
    /// Runs `blufioctl backup PATH --json` against `daemon`, sampling until it exits.
    fn run(daemon: &Daemon, database: &Path, archive: &Path, stream: bool, origin: Instant) -> Self {
        let state = database.parent().expect("the state directory").to_owned();
        let archive_dir = archive.parent().expect("the archive's directory").to_owned();
        let wal = PathBuf::from(format!("{}-wal", database.display()));
        let pid = daemon.pid().as_raw();
        let before = memory_of(pid);
        let cpu_before = cpu_time(pid);
        let children_cpu_before = waited_children_cpu_time();
        let database_bytes = size_of(database);
        let wal_bytes = size_of(&wal);
        let mut args = vec!["backup", archive.to_str().expect("a UTF-8 path"), "--json"];
        if stream {
            args.push("--stream");
        }
        eprintln!("backup: blufioctl {}", args.join(" "));

        let began = origin.elapsed();
        let started = Instant::now();
        let mut client = daemon.ctl_in_background(&args);
        let client_pid = i32::try_from(client.id()).expect("a pid");
        let mut probes = Vec::new();
        loop {
            probes.push(Probe {
                at: started.elapsed(),
                daemon_rss_kib: memory_of(pid).rss_kib,
                client_rss_kib: memory_of(client_pid).rss_kib,
                snapshot_bytes: file_in(&state, ".backup-", Some("blufio.db")),
                received_bytes: file_in(&archive_dir, ".blufio-backup-", None),
                archived: archive.exists(),
                wal_bytes: size_of(&wal),
            });
            if client.try_wait().expect("wait for blufioctl").is_some() {
                break;
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        let wall = started.elapsed();
        let ended = origin.elapsed();
        let output = client.wait_with_output().expect("blufioctl's output");
        // blufioctl is the only child waited for meanwhile.
        let client_cpu = waited_children_cpu_time().saturating_sub(children_cpu_before);
        assert!(
            output.status.success(),
            "blufioctl backup failed: {}\n{}",
            describe(&output),
            daemon.stderr()
        );
        let client_json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("blufioctl printed invalid JSON ({error}): {}", describe(&output)));
        let archive_bytes = client_json["bytes"].as_u64().expect("the archive's size");
        let snapshot_bytes = client_json["members"]
            .as_array()
            .and_then(|members| members.iter().find(|member| member["name"] == "blufio.db"))
            .and_then(|member| member["bytes"].as_u64())
            .unwrap_or(0);
        let after = memory_of(pid);
        Self {
            streamed: stream,
            began,
            ended,
            wall,
            database_bytes,
            wal_bytes,
            archive_bytes,
            snapshot_bytes,
            probes,
            daemon_rss_before_kib: before.rss_kib,
            daemon_hwm_before_kib: before.peak_rss_kib,
            daemon_hwm_after_kib: after.peak_rss_kib,
            daemon_cpu: cpu_time(pid).saturating_sub(cpu_before),
            client_cpu,
            client_json,
        }
    }

    /// MB (10^6 bytes) of database per second of wall time.
    fn throughput(&self) -> f64 {
        self.database_bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }

    /// Where the wall time went, from the probes: (phase, from, to) since the client's start.
    /// Each boundary is known to within [`SAMPLE_EVERY`].
    fn phases(&self) -> Vec<(&'static str, Duration, Duration)> {
        let probes = &self.probes;
        // The snapshot grew for the last time (the copy done; the check and hash follow).
        let snapshot_done = probes
            .windows(2)
            .filter(|pair| pair[1].snapshot_bytes > pair[0].snapshot_bytes && pair[1].received_bytes == 0)
            .map(|pair| pair[1].at)
            .next_back();
        let first_bytes = probes
            .iter()
            .find(|probe| probe.received_bytes > 0)
            .map(|probe| probe.at);
        let all_bytes = probes
            .iter()
            .find(|probe| probe.received_bytes >= self.archive_bytes || probe.archived)
            .map(|probe| probe.at);
        let renamed = probes.iter().find(|probe| probe.archived).map(|probe| probe.at);
        let mut phases = Vec::new();
        let mut from = Duration::ZERO;
        for (label, to) in [
            ("connect + snapshot", snapshot_done),
            ("integrity check and SHA-256 of the snapshot (at once)", first_bytes),
            (
                "archive built (or streamed), written and verified by the client",
                all_bytes,
            ),
            ("client flush, fsync, rename", renamed),
            ("client exit", Some(self.wall)),
        ] {
            if let Some(to) = to {
                phases.push((label, from, to));
                from = to;
            }
        }
        phases
    }

    fn peak_daemon_rss_kib(&self) -> u64 {
        self.probes.iter().map(|probe| probe.daemon_rss_kib).max().unwrap_or(0)
    }

    fn peak_client_rss_kib(&self) -> u64 {
        self.probes.iter().map(|probe| probe.client_rss_kib).max().unwrap_or(0)
    }

    fn peak_wal_bytes(&self) -> u64 {
        self.probes.iter().map(|probe| probe.wal_bytes).max().unwrap_or(0)
    }
}

/// `VmRSS` and `VmHWM` of a process (zeros once it is gone).
fn memory_of(pid: i32) -> ProcessMemory {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|status| ProcessMemory::parse(&status, ""))
        .unwrap_or_default()
}

/// A process's CPU time so far, user and system, from `/proc/<pid>/stat`.
fn cpu_time(pid: i32) -> Duration {
    stat_time(&format!("/proc/{pid}/stat"), [11, 12])
}

/// The CPU time, user and system, of this process's children that it has waited for.
fn waited_children_cpu_time() -> Duration {
    stat_time("/proc/self/stat", [13, 14])
}

/// The sum of two tick counts of a `stat` file, by their index after the command's `(name)`.
fn stat_time(path: &str, indexes: [usize; 2]) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // After the command's `(name)`: state, ppid, ..., utime (the 12th), stime (the 13th), cutime,
    // cstime.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = indexes
        .iter()
        .filter_map(|&index| fields.get(index)?.parse::<u64>().ok())
        .sum();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|ticks| u64::try_from(ticks).ok())
        .unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

/// The size of the first entry of `dir` whose name starts with `prefix` (with `inner`, of the
/// file of that name inside it); 0 when there is none.
fn file_in(dir: &Path, prefix: &str, inner: Option<&str>) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| match inner {
            Some(inner) => size_of(&entry.path().join(inner)),
            None => size_of(&entry.path()),
        })
        .max()
        .unwrap_or(0)
}

/// The `seconds` of the daemon's `backup finished` log line: from the request to the last byte
/// handed to the socket.
fn daemon_backup_seconds(log: &str) -> Option<f64> {
    let line = log.lines().rev().find(|line| line.contains("backup finished"))?;
    let (_, rest) = line.split_once("seconds=")?;
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// The report.

/// A span of the run, since the load's origin.
struct Window {
    name: &'static str,
    from: Duration,
    to: Duration,
}

impl Window {
    fn new(name: &'static str, from: Duration, to: Duration) -> Self {
        Self { name, from, to }
    }
}

/// Which records a row counts.
type Selects = fn(Kind) -> bool;

/// The figures of one kind of request (or all the gateway's) in one window.
struct Row {
    kind: &'static str,
    window: &'static str,
    seconds: f64,
    count: usize,
    failures: usize,
    first_failure: Option<String>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The share, in percent, that took [`SLOW`] or longer.
    slow_percent: f64,
}

impl Row {
    fn all(records: &Records, windows: &[Window]) -> Vec<Self> {
        let mut rows = Vec::new();
        let kinds: [(&'static str, Selects); 4] = [
            (Kind::Models.label(), |kind| kind == Kind::Models),
            (Kind::Status.label(), |kind| kind == Kind::Status),
            (GATEWAY, |kind| kind != Kind::Turn),
            (Kind::Turn.label(), |kind| kind == Kind::Turn),
        ];
        for (label, wanted) in kinds {
            for window in windows {
                let chosen: Vec<&Record> = records
                    .records
                    .iter()
                    .filter(|record| wanted(record.kind) && record.at >= window.from && record.at < window.to)
                    .collect();
                let mut took: Vec<Duration> = chosen.iter().map(|record| record.took).collect();
                took.sort_unstable();
                let at = |quantile| {
                    if took.is_empty() {
                        0.0
                    } else {
                        bench::quantile_ms(&took, quantile)
                    }
                };
                rows.push(Self {
                    kind: label,
                    window: window.name,
                    seconds: (window.to - window.from).as_secs_f64(),
                    count: chosen.len(),
                    failures: chosen.iter().filter(|record| record.failure.is_some()).count(),
                    first_failure: chosen.iter().find_map(|record| record.failure.clone()),
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                    max_ms: at(1.0),
                    slow_percent: 100.0 * took.iter().filter(|&&took| took >= SLOW).count() as f64
                        / took.len().max(1) as f64,
                });
            }
        }
        rows
    }
}

struct Report {
    mib: u64,
    filled: Filled,
    ready: Duration,
    daemon_seconds: Option<f64>,
    backup: Backup,
    rows: Vec<Row>,
    skipped: usize,
}

impl Report {
    fn row(&self, kind: &str, window: &str) -> Option<&Row> {
        self.rows.iter().find(|row| row.kind == kind && row.window == window)
    }

    /// The p99 during the backup over the baseline's, for `kind`.
    fn ratio(&self, kind: &str) -> Option<f64> {
        let baseline = self.row(kind, "baseline")?.p99_ms;
        let during = self.row(kind, "backup")?.p99_ms;
        (baseline > 0.0).then(|| during / baseline)
    }

    fn print(&self) {
        let (filled, backup) = (&self.filled, &self.backup);
        println!(
            "blufiod backup under load, release build: --mib {} (a database of {:.1} MiB: {} sessions, {} turns, {} \
             messages, {} ledger rows; filled in {:.1} s); READY=1 on it in {:.0} ms",
            self.mib,
            mib_of(filled.bytes),
            filled.sessions,
            filled.turns,
            filled.messages,
            filled.ledger,
            filled.took.as_secs_f64(),
            millis(self.ready)
        );
        println!(
            "load: signed GET /v1/models {MODELS_RATE}/s and GET /v1/status {STATUS_RATE}/s, open loop over \
             {CONNECTIONS} HTTP/2 connections; {TURN_CLIENTS} gRPC clients each sending a turn every {} ms (instant \
             fake provider); windows: baseline {} s after {} s of warm-up, the backup, {} s after",
            TURN_EVERY.as_millis(),
            BASELINE.as_secs(),
            WARMUP.as_secs(),
            AFTER.as_secs()
        );
        println!();
        println!(
            "backup: blufioctl backup PATH --json{} (release), PATH on the state directory's filesystem",
            if backup.streamed { " --stream" } else { "" }
        );
        println!(
            "  database          {:.1} MiB (blufio.db; its WAL {:.1} MiB) when the backup began",
            mib_of(backup.database_bytes),
            mib_of(backup.wal_bytes)
        );
        println!(
            "  archive           {:.1} MiB ({} bytes; the snapshot in it {:.1} MiB)",
            mib_of(backup.archive_bytes),
            backup.archive_bytes,
            mib_of(backup.snapshot_bytes)
        );
        println!(
            "  wall time         {:.2} s, blufioctl's start to its exit (blufioctl says {:.2} s; the daemon's \
             `backup finished` {})",
            backup.wall.as_secs_f64(),
            backup.client_json["duration_seconds"].as_f64().unwrap_or(f64::NAN),
            self.daemon_seconds
                .map_or_else(|| "not logged".to_owned(), |seconds| format!("{seconds:.2} s"))
        );
        println!(
            "  throughput        {:.1} MB/s of database (target >= {TARGET_MB_PER_SECOND:.0} MB/s: {})",
            backup.throughput(),
            verdict(
                backup.throughput() >= TARGET_MB_PER_SECOND,
                TARGET_MB_PER_SECOND / backup.throughput(),
                "short"
            )
        );
        println!(
            "  daemon RSS        {:.1} MiB before, peak {:.1} MiB sampled during (VmHWM {:.1} MiB before, {:.1} MiB \
             after); blufioctl peak {:.1} MiB",
            kib_mib(backup.daemon_rss_before_kib),
            kib_mib(backup.peak_daemon_rss_kib()),
            kib_mib(backup.daemon_hwm_before_kib),
            kib_mib(backup.daemon_hwm_after_kib),
            kib_mib(backup.peak_client_rss_kib())
        );
        println!(
            "  CPU               daemon {:.2} s (user + system) during the backup, blufioctl {:.2} s; WAL peak {:.1} MiB",
            backup.daemon_cpu.as_secs_f64(),
            backup.client_cpu.as_secs_f64(),
            mib_of(backup.peak_wal_bytes())
        );
        println!("  phases (from the files, +-{} ms each):", SAMPLE_EVERY.as_millis());
        for (label, from, to) in backup.phases() {
            println!(
                "    {label:<52} {:>6.2} s  ({:.2} to {:.2})",
                (to - from).as_secs_f64(),
                from.as_secs_f64(),
                to.as_secs_f64()
            );
        }
        println!();
        println!(
            "{:<20} {:<9} {:>6} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8}",
            "requests",
            "window",
            "s",
            "count",
            "failed",
            "p50 ms",
            "p99 ms",
            "max ms",
            format!(">={} ms", SLOW.as_millis())
        );
        for row in &self.rows {
            println!(
                "{:<20} {:<9} {:>6.1} {:>8} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>7.1}%",
                row.kind,
                row.window,
                row.seconds,
                row.count,
                row.failures,
                row.p50_ms,
                row.p99_ms,
                row.max_ms,
                row.slow_percent
            );
        }
        for row in self.rows.iter().filter(|row| row.failures > 0) {
            println!(
                "  {} {}: first failure: {}",
                row.kind,
                row.window,
                row.first_failure.as_deref().unwrap_or_default()
            );
        }
        if self.skipped > 0 {
            println!(
                "  {} gateway requests not sent: {MAX_IN_FLIGHT} of their kind were in flight",
                self.skipped
            );
        }
        for kind in [Kind::Models.label(), Kind::Status.label(), GATEWAY, Kind::Turn.label()] {
            if let Some(ratio) = self.ratio(kind) {
                let target = if kind == GATEWAY {
                    format!(
                        " (target <= {TARGET_P99_RATIO:.0}x: {})",
                        verdict(ratio <= TARGET_P99_RATIO, ratio / TARGET_P99_RATIO, "over")
                    )
                } else {
                    String::new()
                };
                println!("p99 during the backup / baseline, {kind}: {ratio:.2}x{target}");
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        let (filled, backup) = (&self.filled, &self.backup);
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "requests": row.kind,
                    "window": row.window,
                    "seconds": row.seconds,
                    "count": row.count,
                    "failures": row.failures,
                    "first_failure": row.first_failure,
                    "p50_ms": row.p50_ms,
                    "p99_ms": row.p99_ms,
                    "max_ms": row.max_ms,
                    "slow_percent": row.slow_percent,
                })
            })
            .collect();
        let phases: Vec<_> = backup
            .phases()
            .iter()
            .map(|(label, from, to)| json!({"phase": label, "from_s": from.as_secs_f64(), "to_s": to.as_secs_f64()}))
            .collect();
        json!({
            "mib": self.mib,
            "database": {
                "bytes": filled.bytes,
                "sessions": filled.sessions,
                "turns": filled.turns,
                "messages": filled.messages,
                "ledger_rows": filled.ledger,
                "fill_seconds": filled.took.as_secs_f64(),
                "ready_ms": millis(self.ready),
            },
            "load": {
                "models_per_second": MODELS_RATE,
                "status_per_second": STATUS_RATE,
                "connections": CONNECTIONS,
                "turn_clients": TURN_CLIENTS,
                "turn_every_ms": TURN_EVERY.as_millis(),
                "skipped": self.skipped,
            },
            "backup": {
                "streamed": backup.streamed,
                "database_bytes": backup.database_bytes,
                "wal_bytes_at_start": backup.wal_bytes,
                "wal_bytes_peak": backup.peak_wal_bytes(),
                "archive_bytes": backup.archive_bytes,
                "snapshot_bytes": backup.snapshot_bytes,
                "wall_seconds": backup.wall.as_secs_f64(),
                "client_seconds": backup.client_json["duration_seconds"],
                "daemon_seconds": self.daemon_seconds,
                "mb_per_second": backup.throughput(),
                "daemon_rss_before_kib": backup.daemon_rss_before_kib,
                "daemon_rss_peak_kib": backup.peak_daemon_rss_kib(),
                "daemon_hwm_before_kib": backup.daemon_hwm_before_kib,
                "daemon_hwm_after_kib": backup.daemon_hwm_after_kib,
                "client_rss_peak_kib": backup.peak_client_rss_kib(),
                "daemon_cpu_seconds": backup.daemon_cpu.as_secs_f64(),
                "client_cpu_seconds": backup.client_cpu.as_secs_f64(),
                "phases": phases,
                "sample_every_ms": SAMPLE_EVERY.as_millis(),
            },
            "latency": rows,
            "p99_ratio": {
                "models": self.ratio(Kind::Models.label()),
                "status": self.ratio(Kind::Status.label()),
                "gateway": self.ratio(GATEWAY),
                "turns": self.ratio(Kind::Turn.label()),
            },
            "slow_ms": SLOW.as_millis(),
            "targets": {
                "mb_per_second": TARGET_MB_PER_SECOND,
                "p99_ratio": TARGET_P99_RATIO,
            },
        })
    }
}

/// "met", or "missed" with the factor by which it was.
fn verdict(met: bool, factor: f64, word: &str) -> String {
    if met {
        "met".to_owned()
    } else {
        format!("missed, {factor:.2}x {word}")
    }
}

fn mib_of(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn kib_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The words of [`Prose`], roughly by how often English uses them (the first are the most
/// frequent: Zipf's weights follow the order), with the vocabulary of a coding assistant's chats.
const WORDS: &str = "the of and to a in is it that for you this with on as be are not can have or at from by if an \
     but we will one all there so what which when your do was they more use file then some would like \
     should out only its other about time into now each just how first also new any code see way need \
     because these make after two error here function test where value change does than same could \
     well over still data before run line call set back case without again both through most while \
     right good very path read write build type return look work part since might another state \
     request server client version list name number string table query index field config option \
     default result output input check problem reason method module crate library package system \
     process thread memory disk network socket message session user model answer question step start \
     stop open close fix bug issue patch commit branch merge review update delete create add remove \
     keep move copy rename find search match replace parse format print log trace debug warning fail \
     pass expect assert loop closure trait struct enum variant borrow lifetime owner reference \
     pointer buffer stream chunk byte block page cache lock mutex channel task future runtime handle \
     timeout retry limit budget cost token price usage backup restore archive snapshot database \
     schema migration column row key secret vault device gateway signature certificate daemon service \
     health metric status ready signal shutdown reload restart deploy release binary target profile \
     benchmark latency throughput window sample median peak slow fast small large long short old \
     recent clear simple careful safe correct wrong different possible likely easy hard important \
     useful whole every few many much less least almost already always never often usually perhaps \
     probably instead however therefore although unless until whether either neither rather quite \
     enough maybe yes no thanks please sorry sure think know want try help show tell say ask explain \
     suggest prefer agree mean understand remember notice wonder guess decide choose compare measure \
     happen appear seem become remain leave bring take give get put let begin end follow lead turn \
     place point idea plan goal note detail example pattern approach design feature behaviour \
     interface boundary layer team project week day hour minute morning evening today tomorrow \
     yesterday home office meeting email document report draft summary section chapter story book \
     garden kitchen recipe dinner coffee walk travel train city weather rain sun river mountain music \
     song friend family child school history science language word sentence paragraph";
