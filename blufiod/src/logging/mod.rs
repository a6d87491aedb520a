//! Logging with tracing-subscriber, to stderr or to `log.file`: human lines on a terminal, plain
//! lines without colour or timestamps under journald (which adds its own), human lines with
//! timestamps in a file, or JSON. Every line also goes to a bounded in-memory [`Ring`] that
//! `blufioctl logs` reads. The filter comes from `RUST_LOG` when set, else from `log.level`, and
//! can be swapped at runtime on reload; the file is reopened on SIGUSR1 and on reload.
//!
//! This module never decides what is logged, only how.

mod ring;
mod sink;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

use self::ring::MakeRingWriter;
pub use self::ring::{Line, Ring};
use self::sink::{LogFile, Sink};
use crate::config::{LogConfig, LogFormat};

/// Errors from setting up or changing logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter directive does not parse.
    #[error("invalid log filter {filter:?}")]
    ParseFilter {
        /// The directive.
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The live filter could not be replaced.
    #[error("cannot change the log filter")]
    Reload {
        #[source]
        source: reload::Error,
    },
    /// `log.file` could not be opened (at start, or again after a rotation).
    #[error("cannot open the log file {}; check that its directory exists and that blufiod's user may write there", path.display())]
    OpenFile {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A global subscriber was already installed.
    #[error("cannot install the logger")]
    Install {
        #[source]
        source: tracing_subscriber::util::TryInitError,
    },
}

/// Changes the log filter of the running daemon.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    rust_log: Option<String>,
    file: Option<Arc<LogFile>>,
    ring: Arc<Ring>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LogHandle")
            .field("rust_log", &self.rust_log)
            .field("file", &self.file.as_ref().map(|file| file.path()))
            .finish_non_exhaustive()
    }
}

impl LogHandle {
    /// Applies `level` from the config, unless `RUST_LOG` overrides it. Returns whether the
    /// filter changed.
    pub fn set_level(&self, level: &str) -> Result<bool, LoggingError> {
        if self.rust_log.is_some() {
            tracing::warn!(level, "RUST_LOG is set and takes precedence over log.level");
            return Ok(false);
        }
        let filter = parse_filter(level)?;
        self.filter
            .reload(filter)
            .map_err(|source| LoggingError::Reload { source })?;
        Ok(true)
    }

    /// Reopens `log.file` (after logrotate renamed it away). Returns the path reopened, or `None`
    /// when the daemon logs to stderr.
    pub fn reopen(&self) -> Result<Option<&std::path::Path>, LoggingError> {
        let Some(file) = &self.file else { return Ok(None) };
        file.reopen().map_err(|source| LoggingError::OpenFile {
            path: file.path().to_owned(),
            source,
        })?;
        Ok(Some(file.path()))
    }

    /// The recent lines, for `blufioctl logs`.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }
}

/// Installs the global subscriber.
pub fn init(config: &LogConfig) -> Result<LogHandle, LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|value| !value.is_empty());
    let filter = parse_filter(rust_log.as_deref().unwrap_or(&config.level))?;
    let (filter, handle) = reload::Layer::new(filter);
    let file = match &config.file {
        Some(path) => Some(Arc::new(LogFile::open(path).map_err(|source| {
            LoggingError::OpenFile {
                path: path.clone(),
                source,
            }
        })?)),
        None => None,
    };
    let sink = file.clone().map_or(Sink::Stderr, Sink::File);
    let ring = Arc::new(Ring::new());
    // The ring's own format: level and time are kept beside the text, never colour. Its
    // writer, not a per-layer filter, leaves out the transport's own lines: with a per-layer
    // filter in the stack, tracing-subscriber cannot cache that a callsite the global filter
    // disables is disabled, and asks the filter again at every event of every disabled callsite
    // (h2 and hyper have one per frame: about 4 % of the gateway's CPU under load).
    let ring_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_writer(MakeRingWriter(ring.clone()));
    let under_journald = file.is_none() && std::env::var_os("JOURNAL_STREAM").is_some();
    let on_terminal = file.is_none() && std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer().with_writer(sink);
    let registry = tracing_subscriber::registry().with(filter).with(ring_layer);
    let installed = match config.format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Auto if under_journald => registry.with(fmt.with_ansi(false).without_time()).try_init(),
        LogFormat::Auto => registry.with(fmt.with_ansi(on_terminal)).try_init(),
        LogFormat::Human => registry.with(fmt.with_ansi(false)).try_init(),
    };
    installed.map_err(|source| LoggingError::Install { source })?;
    Ok(LogHandle {
        filter: handle,
        rust_log,
        file,
        ring,
    })
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    // Field values match as plain strings (see config's check of `log.level`).
    EnvFilter::builder()
        .with_regex(false)
        .parse(filter)
        .map_err(|source| LoggingError::ParseFilter {
            filter: filter.to_owned(),
            source,
        })
}
