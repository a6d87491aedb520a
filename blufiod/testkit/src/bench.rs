//! What the benchmark programs (`blufiod/benches/`, `cargo xtask bench`) share: their arguments,
//! a daemon set up for load against a fake provider, and quantiles. Nothing here asserts a target.

use std::time::Duration;

use crate::{Daemon, DaemonOptions, new_dir};

/// The positional numbers on the command line (cargo bench adds flags such as `--bench`).
pub fn numbers() -> Vec<usize> {
    std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .filter_map(|arg| arg.parse().ok())
        .collect()
}

/// Config for a daemon under load against the fake provider at `provider_url`: every model free
/// and no budget caps (so no turn is refused), `slots` concurrent turns and as many queue places,
/// only warnings logged; `extra` is appended.
pub fn load_config(provider_url: &str, slots: usize, extra: &str) -> String {
    format!(
        "[log]\nlevel = \"warn\"\n\
         [provider]\nkind = \"anthropic\"\nbase_url = \"{provider_url}\"\napi_key = \"bench\"\nmodel = \"bench-model\"\n\
         [pricing.\"bench-model\"]\ninput = 0.0\noutput = 0.0\n[budget]\ndaily_usd = 0.0\nmonthly_usd = 0.0\n\
         [agent]\nmax_concurrent_turns = {0}\nmax_queued_turns = {0}\n{extra}",
        slots.max(1)
    )
}

/// Starts a daemon with [`load_config`] in a fresh temp dir and waits for `READY=1`. Its
/// binaries are those of the running benchmark's build (release, under `cargo bench`).
pub fn start_under_load(provider_url: &str, slots: usize, extra: &str) -> Daemon {
    Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: load_config(provider_url, slots, extra),
            ..DaemonOptions::default()
        },
    )
}

/// Stops a benchmark's daemon, echoes what it logged (warnings and errors only under
/// [`load_config`]), and panics unless it exited cleanly.
pub fn finish(mut daemon: Daemon) {
    let status = daemon.stop();
    eprint!("{}", daemon.stderr());
    assert!(status.success(), "blufiod exited with {status}");
}

/// The sample at `quantile` (0.0 to 1.0) of sorted samples, nearest rank, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&samples, 0.0), 1.0);
        assert_eq!(quantile_ms(&samples, 0.5), 6.0);
        assert_eq!(quantile_ms(&samples, 0.9), 9.0);
        assert_eq!(quantile_ms(&samples, 1.0), 10.0);
    }
}
