//! The one way tests, benchmarks and `cargo xtask bench` start a real daemon: `blufiod` on a temp
//! dir with its own socket, gateway port and `NOTIFY_SOCKET`, driven by the real `blufioctl`,
//! stopped with SIGTERM and asserted to exit cleanly.
//!
//! - [`Daemon`] and [`DaemonOptions`]: start (extra config, environment, notify socket,
//!   readiness wait, which binaries), signal, stop, logs, `blufioctl` against it.
//! - [`Binaries`]: where `blufiod` and `blufioctl` come from (see `binaries.rs`).
//! - [`NotifyLog`]: the sd_notify datagrams, with their arrival times.
//! - [`fake_provider`] (feature `fake-provider`): a local LLM provider speaking the Anthropic and
//!   OpenAI streaming wire formats, and [`start_with_fake`] to point a daemon at it.
//! - [`control_client`] (feature `control-client`): gRPC for what blufioctl does not offer, and
//!   [`register_device`] for the benchmarks and tests that sign gateway requests.
//! - [`bench`]: what the benchmark programs share.
//! - [`exposition`]: the Prometheus text format, parsed into samples.
//! - [`Tmpfs`]: a small file system mounted for one test (root only), unmounted on drop.
//!
//! Failures panic with the daemon's stderr: the callers are tests and benchmarks, where a panic
//! is the report. This crate never depends on `blufiod`; it runs the binaries, as users do.

mod binaries;
mod ctl;
mod daemon;
mod notify;
mod tmpfs;

pub mod bench;
pub mod exposition;

// blufiod's own adapter unit tests include the same file with `#[path]`.
#[cfg(feature = "fake-provider")]
pub mod fake_provider;

use std::time::Duration;

pub use binaries::{Binaries, blufioctl_bin, blufiod_bin};
#[cfg(feature = "control-client")]
pub use ctl::{RegisteredDevice, control_client, control_client_receiving, register_device};
pub use ctl::{ctl, describe};
pub use daemon::{Daemon, DaemonOptions, new_dir};
pub use notify::NotifyLog;
pub use tmpfs::Tmpfs;

/// How long a daemon may take to become ready or to stop before a test fails. Generous: CI
/// machines are slow and shared; readiness speed is measured by a benchmark, not here.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Starts a daemon in a fresh directory whose provider is `fake`, with `extra` config appended
/// (see [`fake_provider_config`]).
#[cfg(feature = "fake-provider")]
pub fn start_with_fake(fake: &fake_provider::FakeProvider, extra: &str) -> Daemon {
    Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(fake, extra),
            ..DaemonOptions::default()
        },
    )
}

/// Config for a daemon whose provider is `fake`, with prices that make costs easy to check:
/// $1 per million input tokens, $2 per million output tokens; `extra` is appended.
#[cfg(feature = "fake-provider")]
pub fn fake_provider_config(fake: &fake_provider::FakeProvider, extra: &str) -> String {
    format!(
        "[provider]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"test-key\"\nmodel = \"fake-model\"\n\
         max_tokens = 1000\nidle_timeout_secs = 5\nmax_retries = 1\nretry_base_delay_ms = 10\n\
         [pricing.\"fake-model\"]\ninput = 1.0\noutput = 2.0\n{extra}",
        fake.url()
    )
}
