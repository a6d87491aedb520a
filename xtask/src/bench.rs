//! `cargo xtask bench ...`: measurements of the release daemon, reported for
//! `docs/benchmarks.md`. Nothing here asserts a target; the numbers are recorded with the
//! machine, date and command that produced them.
//!
//! - `startup [RUNS]`: time from `exec` to `READY=1` on a fresh state dir (first start, so the
//!   database is created and migrated), and on an existing one.
//! - `idle [SECONDS]`: RSS of an idle daemon after SECONDS (default 30).
//! - `size`: sizes of the release binaries as built and fully stripped.
//! - `turns [CLIENTS] [TURNS]`: turn throughput and the daemon's added latency per turn against
//!   the fake provider (`blufiod/benches/turns.rs`).
//! - `gateway [CLIENTS] [REQUESTS]`: signed-request throughput and latency through the HTTPS
//!   gateway (`blufiod/benches/gateway.rs`).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{root, run};

pub fn main(args: &[&str]) -> Result<()> {
    match args {
        ["startup"] => startup(20),
        ["startup", runs] => startup(runs.parse().context("RUNS must be a number")?),
        ["idle"] => idle(30),
        ["idle", seconds] => idle(seconds.parse().context("SECONDS must be a number")?),
        ["size"] => size(),
        ["turns", rest @ ..] => cargo_bench("turns", rest),
        ["gateway", rest @ ..] => cargo_bench("gateway", rest),
        ["all"] => {
            size()?;
            startup(20)?;
            idle(30)
        }
        _ => bail!(
            "usage: cargo xtask bench startup [RUNS] | idle [SECONDS] | size | turns [CLIENTS] [TURNS] | gateway [CLIENTS] [REQUESTS] | all"
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
    Ok(root().join("target/release"))
}

/// A release daemon in its own temp dir with a notify socket.
struct Instance {
    child: Child,
    notify: UnixDatagram,
    dir: PathBuf,
}

impl Instance {
    fn start(bin: &Path, dir: &Path) -> Result<(Self, Instant)> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("blufiod.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n",
                dir.display()
            ),
        )?;
        let notify_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_secs(30)))?;
        let started = Instant::now();
        let child = Command::new(bin.join("blufiod"))
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("NOTIFY_SOCKET", &notify_path)
            .env("JOURNAL_STREAM", "0:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start blufiod")?;
        Ok((
            Self {
                child,
                notify,
                dir: dir.to_owned(),
            },
            started,
        ))
    }

    /// Waits for READY=1 and returns when it arrived.
    fn wait_ready(&self) -> Result<Instant> {
        let mut buffer = [0u8; 4096];
        loop {
            let len = self.notify.recv(&mut buffer).context("no READY=1 within 30 s")?;
            if String::from_utf8_lossy(&buffer[..len])
                .lines()
                .any(|line| line == "READY=1")
            {
                return Ok(Instant::now());
            }
        }
    }

    fn stop(mut self) -> Result<()> {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("blufiod exited with {status}");
        }
        let _ = std::fs::remove_file(self.dir.join("notify.sock"));
        Ok(())
    }
}

fn startup(runs: usize) -> Result<()> {
    let bin = build_release()?;
    let scratch = tempdir()?;
    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    for run_index in 0..runs {
        let dir = scratch.join(format!("run-{run_index}"));
        for samples in [&mut fresh, &mut warm] {
            let (instance, started) = Instance::start(&bin, &dir)?;
            let ready = instance.wait_ready()?;
            samples.push(ready - started);
            instance.stop()?;
        }
    }
    println!("exec -> READY=1 over {runs} runs (release build)");
    report("  fresh state dir (create + migrate)", &mut fresh);
    report("  existing state dir", &mut warm);
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// The sample at `quantile` (0.0 to 1.0) of sorted samples, nearest rank, in milliseconds.
fn quantile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
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
    let scratch = tempdir()?;
    let (instance, _) = Instance::start(&bin, &scratch)?;
    instance.wait_ready()?;
    let pid = instance.child.id();
    let at_ready = rss(pid)?;
    // One status call, so the measured daemon has served the control plane at least once.
    let socket = scratch.join("run/blufiod.sock");
    run(Command::new(bin.join("blufioctl"))
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .stdout(Stdio::null()))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let idle = rss(pid)?;
    println!("blufiod RSS (release build): at READY=1 {at_ready}; after {seconds} s idle {idle}");
    instance.stop()?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// `VmRSS` and `VmHWM` of a process.
fn rss(pid: u32) -> Result<String> {
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

/// A benchmark program of `blufiod/benches/` (turns, gateway), in the release profile.
fn cargo_bench(name: &str, args: &[&str]) -> Result<()> {
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["bench", "--locked", "-p", "blufiod", "--bench", name, "--"])
            .args(args),
    )
}

fn size() -> Result<()> {
    let bin = build_release()?;
    let scratch = tempdir()?;
    println!("release binaries (profile.release: lto=thin, panic=abort, strip=debuginfo)");
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
