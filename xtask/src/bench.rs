//! `cargo xtask bench ...`: measurements of the release daemon, reported for
//! `docs/benchmarks.md`. Nothing here asserts a target; the numbers are recorded with the
//! machine, date and command that produced them.
//!
//! - `startup [RUNS]`: time from `exec` to `READY=1` on a fresh state dir (first start, so the
//!   database is created and migrated), and on an existing one.
//! - `idle [SECONDS]`: RSS of an idle daemon after SECONDS (default 30).
//! - `cli [RUNS]`: the whole `blufioctl status` process (exec, connect, the call, printing,
//!   exit) against a running release daemon, RUNS times (default 200), and `blufioctl --version`
//!   beside it (the process alone, no daemon).
//! - `size`: sizes of the release binaries as built and fully stripped.
//! - `turns [CLIENTS] [TURNS]`: turn throughput and the daemon's added latency per turn against
//!   the fake provider (`blufiod/benches/turns.rs`).
//! - `gateway [--requests N] [--turns N] [--connections C] [--streams S] [--json PATH]`:
//!   signed-request throughput, latency and daemon CPU per request through the HTTPS gateway,
//!   requests signed before the timed window, beside the raw ed25519 verify rate
//!   (`blufiod/benches/gateway.rs`).
//! - `memory [--minutes M] [--turns N] [--json PATH]`: the daemon's memory (RSS, anonymous,
//!   file-backed, PSS) at READY, idle, at the peak of 100 concurrent streaming chats through the
//!   gateway and after them, after a tenth of N turns and after N (default 100,000), and with
//!   `--minutes` the slope of a steady soak (`blufiod/benches/memory.rs`; a few minutes).
//! - `backup [--mib N] [--json PATH] [--fill-cache DIR]`: `blufioctl backup` of a database grown
//!   to N MiB (default 1024; `--fill-cache` keeps the filled database for the next run) while the daemon serves steady signed gateway requests and turns: the archive's size,
//!   the wall time, MB/s of database, where the time went, the daemon's peak RSS, and the
//!   gateway's p50/p99 during the backup against a baseline window (`blufiod/benches/backup.rs`;
//!   minutes at 1024 MiB, and about three times N of free space in the temp directory).
//!
//! - `--quick [--release]`: the regression guard CI runs (`blufiod/benches/quick.rs`): the time
//!   the daemon adds to a turn as a ratio to a raw SQLite write transaction measured just before
//!   it, failing only above twice the recorded ratio. In the dev profile by default, so that CI
//!   reuses the build its tests made.
//!
//! `all` runs `size`, `startup` and `idle`, the measurements that take seconds; the load
//! benchmarks, `memory` and `backup` above all, are run by name.
//!
//! Daemons start through `blufio-testkit`, the tests' launcher, with the release binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use blufio_testkit::bench::quantile_ms;
use blufio_testkit::{Binaries, Daemon, DaemonOptions, describe, new_dir};

use crate::run;

pub fn main(args: &[&str]) -> Result<()> {
    match args {
        ["startup"] => startup(20),
        ["startup", runs] => startup(runs.parse().context("RUNS must be a number")?),
        ["--quick" | "quick"] => quick(false),
        ["--quick" | "quick", "--release"] => quick(true),
        ["idle"] => idle(30),
        ["cli"] => cli(200),
        ["cli", runs] => cli(runs.parse().context("RUNS must be a number")?),
        ["idle", seconds] => idle(seconds.parse().context("SECONDS must be a number")?),
        ["size"] => size(),
        ["turns", rest @ ..] => cargo_bench("turns", rest),
        ["gateway", rest @ ..] => cargo_bench("gateway", &with_absolute_paths(rest)?),
        ["memory", rest @ ..] => cargo_bench("memory", &with_absolute_paths(rest)?),
        ["backup", rest @ ..] => backup(rest),
        ["all"] => {
            size()?;
            startup(20)?;
            idle(30)
        }
        _ => bail!(
            "usage: cargo xtask bench --quick [--release] | startup [RUNS] | idle [SECONDS] | cli [RUNS] | size | turns [CLIENTS] [TURNS] | gateway [--requests N] [--turns N] [--connections C] [--streams S] [--json PATH] | memory [--minutes M] [--turns N] [--json PATH] | backup [--mib N] [--json PATH] [--fill-cache DIR] | all"
        ),
    }
}

fn build_release() -> Result<PathBuf> {
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "blufiod",
            "--bin",
            "blufioctl",
        ]),
    )?;
    Ok(crate::target_dir().join("release"))
}

/// How `bench` starts the release daemon that `build_release` built into `bin`: with `extra`
/// config, a notify socket, and logs in the format it uses under systemd (journald's). The
/// caller waits for readiness, so it can time it.
fn release_daemon(bin: &Path, extra: &str) -> DaemonOptions {
    DaemonOptions {
        config: extra.to_owned(),
        env: vec![("JOURNAL_STREAM".to_owned(), "0:0".to_owned())],
        notify: true,
        wait_ready: false,
        binaries: Binaries::in_dir(bin),
    }
}

/// Stops a daemon with SIGTERM; an unclean exit is an error carrying its log.
fn stop(mut daemon: Daemon) -> Result<()> {
    let status = daemon.stop();
    if !status.success() {
        bail!("blufiod exited with {status}:\n{}", daemon.stderr());
    }
    Ok(())
}

fn startup(runs: usize) -> Result<()> {
    let bin = build_release()?;
    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    let mut passphrase = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..runs {
        // One directory per run: the first start creates and migrates, the second finds it.
        let dir = new_dir();
        for samples in [&mut fresh, &mut warm] {
            let daemon = Daemon::start_with(dir.clone(), release_daemon(&bin, ""));
            samples.push(daemon.wait_ready());
            stop(daemon)?;
        }
        // A vault sealed with a passphrase: Argon2id (19 MiB, 2 passes) on every start.
        let dir = new_dir();
        for first in [true, false] {
            let mut options = release_daemon(&bin, "");
            options.env.push((
                "BLUFIO_VAULT_PASSPHRASE".to_owned(),
                "a passphrase for the bench".to_owned(),
            ));
            let daemon = Daemon::start_with(dir.clone(), options);
            let ready = daemon.wait_ready();
            if !first {
                passphrase.push(ready);
                peaks.push(rss(daemon.pid().as_raw())?);
            }
            stop(daemon)?;
        }
    }
    println!("exec -> READY=1 over {runs} runs (release build)");
    report("  fresh state dir (create + migrate)", &mut fresh);
    report("  existing state dir", &mut warm);
    report(
        "  existing state dir, vault key from a passphrase (Argon2id)",
        &mut passphrase,
    );
    println!(
        "  with the passphrase, at READY=1: {}",
        peaks.last().map_or("", String::as_str)
    );
    Ok(())
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |quantile| quantile_ms(samples, quantile);
    println!(
        "{label}: min {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0)
    );
}

fn idle(seconds: u64) -> Result<()> {
    let bin = build_release()?;
    let daemon = Daemon::start_with(new_dir(), release_daemon(&bin, ""));
    daemon.wait_ready();
    let pid = daemon.pid().as_raw();
    let at_ready = rss(pid)?;
    // One status call, so the measured daemon has served the control plane at least once.
    let status = daemon.ctl(&["status"]);
    if !status.status.success() {
        bail!("blufioctl status failed: {}", describe(&status));
    }
    std::thread::sleep(Duration::from_secs(seconds));
    let idle = rss(pid)?;
    println!("blufiod RSS (release build): at READY=1 {at_ready}; after {seconds} s idle {idle}");
    stop(daemon)
}

fn cli(runs: usize) -> Result<()> {
    let bin = build_release()?;
    let daemon = Daemon::start_with(new_dir(), release_daemon(&bin, ""));
    daemon.wait_ready();
    let mut status = Vec::with_capacity(runs);
    let mut version = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = std::time::Instant::now();
        let output = daemon.ctl(&["status"]);
        status.push(started.elapsed());
        if !output.status.success() {
            bail!("blufioctl status failed: {}", describe(&output));
        }
        let started = std::time::Instant::now();
        let output = Command::new(bin.join("blufioctl")).arg("--version").output()?;
        version.push(started.elapsed());
        if !output.status.success() {
            bail!("blufioctl --version failed: {}", describe(&output));
        }
    }
    println!("blufioctl, whole process, {runs} runs (release build)");
    report("  status (against the running daemon)", &mut status);
    report("  --version (the process alone)", &mut version);
    stop(daemon)
}

/// `VmRSS` and `VmHWM` of a process.
fn rss(pid: i32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .unwrap_or_default()
    };
    Ok(format!("VmRSS {} (peak VmHWM {})", field("VmRSS:"), field("VmHWM:")))
}

/// A benchmark program of `blufiod/benches/` (turns, gateway, memory, backup), in the release
/// profile.
/// The regression guard, in the dev profile (the tests' build) unless `release`.
pub fn quick(release: bool) -> Result<()> {
    let profile = if release { "release" } else { "dev" };
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "bench",
            "--locked",
            "--profile",
            profile,
            "-p",
            "blufiod",
            "--bench",
            "quick",
        ]),
    )
}

fn cargo_bench(name: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Result<()> {
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["bench", "--locked", "-p", "blufiod", "--bench", name, "--"])
            .args(args),
    )
}

/// Arguments for a benchmark program with relative `--json` and `--fill-cache` paths made absolute: cargo runs
/// benchmarks in their package's directory, not the caller's.
fn with_absolute_paths(args: &[&str]) -> Result<Vec<String>> {
    let mut forwarded = Vec::with_capacity(args.len());
    let mut args = args.iter();
    while let Some(&arg) = args.next() {
        forwarded.push(arg.to_owned());
        if arg == "--json" || arg == "--fill-cache" {
            let path = args.next().with_context(|| format!("{arg} needs a path"))?;
            let path = std::env::current_dir()?.join(path);
            forwarded.push(
                path.into_os_string()
                    .into_string()
                    .map_err(|path| anyhow::anyhow!("the {arg} path {path:?} is not UTF-8"))?,
            );
        }
    }
    Ok(forwarded)
}

/// The backup benchmark program. It runs the real release `blufioctl`, which `cargo bench -p
/// blufiod` does not build, so both release binaries are built first.
fn backup(args: &[&str]) -> Result<()> {
    build_release()?;
    cargo_bench("backup", &with_absolute_paths(args)?)
}

fn size() -> Result<()> {
    let bin = build_release()?;
    let scratch = tempdir()?;
    // The profile is Cargo.toml's unless the environment overrides it, as a measurement of
    // another profile does; the overrides are printed with the result.
    let overrides: Vec<String> = std::env::vars()
        .filter(|(name, _)| name.starts_with("CARGO_PROFILE_RELEASE_"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if overrides.is_empty() {
        println!("release binaries (Cargo.toml's [profile.release])");
    } else {
        println!("release binaries ([profile.release] with {})", overrides.join(" "));
    }
    for binary in ["blufiod", "blufioctl"] {
        let built = std::fs::metadata(bin.join(binary))?.len();
        let stripped_path = scratch.join(binary);
        std::fs::copy(bin.join(binary), &stripped_path)?;
        run(Command::new("strip").arg("--strip-all").arg(&stripped_path))?;
        let stripped = std::fs::metadata(&stripped_path)?.len();
        println!(
            "  {binary}: {:.2} MiB as built, {:.2} MiB stripped (strip --strip-all)",
            mib(built),
            mib(stripped)
        );
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("blufio-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
