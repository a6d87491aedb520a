//! Logging to stderr with tracing-subscriber: human lines on a terminal, plain lines without
//! colour or timestamps under journald (which adds its own), or JSON. The filter comes from
//! `RUST_LOG` when set, else from `log.level`, and can be swapped at runtime on reload.
//!
//! This module never decides what is logged, only how.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

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
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LogHandle")
            .field("rust_log", &self.rust_log)
            .finish()
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
}

/// Installs the global subscriber.
pub fn init(config: &LogConfig) -> Result<LogHandle, LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|value| !value.is_empty());
    let filter = parse_filter(rust_log.as_deref().unwrap_or(&config.level))?;
    let (filter, handle) = reload::Layer::new(filter);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match config.format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Auto if under_journald => registry.with(fmt.with_ansi(false).without_time()).try_init(),
        LogFormat::Auto => registry.with(fmt.with_ansi(std::io::stderr().is_terminal())).try_init(),
        LogFormat::Human => registry.with(fmt.with_ansi(false)).try_init(),
    };
    installed.map_err(|source| LoggingError::Install { source })?;
    Ok(LogHandle {
        filter: handle,
        rust_log,
    })
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|source| LoggingError::ParseFilter {
            filter: filter.to_owned(),
            source,
        })
}
