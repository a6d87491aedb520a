//! Project automation, run as `cargo xtask <task>`:
//!
//! - `test`: installs what the test suite needs beyond Rust (Python's grpcio and
//!   http-message-signatures, for the interop tests with stock tools, into `target/xtask/venv`;
//!   systemd-analyze, busybox and promtool with apt-get when missing), then runs
//!   `cargo test --workspace`.
//! - `ci`: formatting, clippy with `-D warnings`, `tidy`, then `test`: what `.ci/run` does.
//! - `tidy`: the written invariants of ARCHITECTURE.md as checks (see `tidy.rs`).
//! - `dist`: release binaries, stripped, with the man page and shell completions, in `dist/`.
//! - `bench startup|idle|size|turns|gateway|memory|backup|all`: measurements for `docs/benchmarks.md`.
//! - `fuzz [SECONDS]`: the cargo-fuzz target over signature-header parsing and verification
//!   (`proto/fuzz`), for SECONDS (default 60).

mod bench;
mod tidy;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Python packages the tests need.
const PYTHON_PACKAGES: &[&str] = &[
    "grpcio",
    "grpcio-health-checking",
    "grpcio-reflection",
    "http-message-signatures",
    "requests",
];
/// The import that proves every package is there.
const PYTHON_IMPORTS: &str = "import grpc, grpc_health, grpc_reflection, http_message_signatures, requests";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["test", rest @ ..] => test(rest),
        ["ci"] => ci(),
        ["tidy"] => tidy::main(),
        ["dist"] => dist(),
        ["bench", rest @ ..] => bench::main(rest),
        ["fuzz"] => fuzz("60"),
        ["fuzz", seconds] => fuzz(seconds),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  test [ARGS...]   install test prerequisites, run cargo test --workspace [ARGS...]\n  ci               fmt --check, clippy -D warnings, tidy, test\n  tidy             the architecture's written invariants, checked\n  dist             release binaries, man page and completions in dist/\n  bench TASK       startup | idle | size | turns | gateway | memory | backup | all (see docs/benchmarks.md)\n  fuzz [SECONDS]   run the signature-header fuzz target (needs cargo-fuzz)"
            );
            bail!("unknown or missing task")
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) when set, else
/// `target/` in the workspace root.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    eprintln!("$ {shown}");
    let status = command
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn test(extra: &[&str]) -> Result<()> {
    system_tools()?;
    let python = python_env()?;
    let mut command = cargo();
    command
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .env("BLUFIOTEST_PYTHON", python)
        .current_dir(root())
        .stdout(Stdio::piped());
    eprintln!("$ {command:?}");
    let mut child = command.spawn().context("cannot run cargo test")?;
    // Echo cargo's output while adding up its per-binary results, so the run ends with one
    // total line instead of the last binary's (often empty) doc-test summary.
    let mut totals = Totals::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    println!("\ntests: {} passed, {} failed", totals.passed, totals.failed);
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

/// Sums of cargo's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(summary) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in summary.split(&[';', '.'][..]) {
            let mut words = part.split_whitespace();
            if let (Some(count), Some(kind)) = (words.next(), words.next())
                && let Ok(count) = count.parse::<u64>()
            {
                match kind {
                    "passed" => self.passed += count,
                    "failed" => self.failed += count,
                    _ => {}
                }
            }
        }
    }
}

fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    tidy::main()?;
    test(&[])
}

/// Programs the tests run, and the Debian packages that ship them.
const SYSTEM_TOOLS: &[(&str, &str)] = &[
    ("systemd-analyze", "systemd"),
    ("busybox", "busybox"),
    ("promtool", "prometheus"),
];

/// Installs the programs of [`SYSTEM_TOOLS`] that are missing, with apt-get when running as
/// root; otherwise says which packages to install.
fn system_tools() -> Result<()> {
    let on_path = |program: &str| {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    let missing: Vec<&str> = SYSTEM_TOOLS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    if !root || !on_path("apt-get") {
        bail!(
            "the tests need the Debian packages {}; install them (apt-get install {}) and run again",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("cannot install the test tools with apt-get")
}

/// A Python with the test packages installed, in a venv under `target/`.
fn python_env() -> Result<PathBuf> {
    let venv = target_dir().join("xtask/venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", PYTHON_IMPORTS])
            .output()
            .is_ok_and(|output| output.status.success());
    if ready {
        return Ok(python);
    }
    let system_python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    run(Command::new(&system_python).arg("-m").arg("venv").arg(&venv)).context(
        "cannot create a Python venv; install python3 with its venv module (Debian: apt-get install python3-venv)",
    )?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))
    .context("cannot install the Python test packages from PyPI")?;
    Ok(python)
}

/// libFuzzer needs nightly-only compiler flags; `RUSTC_BOOTSTRAP` lets the stable toolchain
/// (the only one this project's machines have) accept them for this run.
fn fuzz(seconds: &str) -> Result<()> {
    let seconds: u64 = seconds.parse().context("SECONDS must be a number")?;
    run(cargo()
        .args(["fuzz", "run", "--fuzz-dir", "proto/fuzz", "signature_headers", "--"])
        .arg(format!("-max_total_time={seconds}"))
        .env("RUSTC_BOOTSTRAP", "1"))
    .context("the fuzz run failed; install cargo-fuzz with `cargo install cargo-fuzz` if it is missing")
}

fn dist() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--bin",
        "blufiod",
        "--bin",
        "blufioctl",
    ]))?;
    let dist = root().join("dist");
    std::fs::create_dir_all(dist.join("completions"))?;
    for binary in ["blufiod", "blufioctl"] {
        let target = dist.join(binary);
        std::fs::copy(target_dir().join("release").join(binary), &target)?;
        run(Command::new("strip").arg(&target))?;
    }
    let blufioctl = dist.join("blufioctl");
    let man = Command::new(&blufioctl).arg("man").output()?;
    if !man.status.success() {
        bail!("blufioctl man failed: {}", String::from_utf8_lossy(&man.stderr));
    }
    std::fs::write(dist.join("blufioctl.1"), man.stdout)?;
    for (shell, file) in [
        ("bash", "blufioctl.bash"),
        ("zsh", "_blufioctl"),
        ("fish", "blufioctl.fish"),
    ] {
        let output = Command::new(&blufioctl).args(["completions", shell]).output()?;
        if !output.status.success() {
            bail!("blufioctl completions {shell} failed");
        }
        std::fs::write(dist.join("completions").join(file), output.stdout)?;
    }
    // Every packaging file, as README's install steps name them.
    for (file, name) in [
        ("blufiod.service", "blufiod.service"),
        ("blufio.sysusers", "blufio.sysusers"),
        ("blufio.tmpfiles", "blufio.tmpfiles"),
        ("blufiod.example.toml", "blufiod.example.toml"),
        ("logrotate/blufiod", "blufiod.logrotate"),
        ("hooks/postinst.sample", "postinst.sample"),
        ("hooks/budget-webhook", "hooks/budget-webhook"),
        ("hooks/backup-offsite", "hooks/backup-offsite"),
        ("prometheus/alerts.yml", "blufio-alerts.yml"),
        ("grafana/blufio.json", "blufio-grafana.json"),
    ] {
        std::fs::copy(root().join("packaging").join(file), dist.join(name))
            .with_context(|| format!("cannot copy packaging/{file} to dist/"))?;
    }
    eprintln!(
        "dist/: blufiod, blufioctl (stripped), blufioctl.1, completions/, the unit, sysusers, tmpfiles, logrotate, the example config and hook, the alert rules and the Grafana dashboard"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_cargo_summaries() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 36 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.24s");
        totals.add("test result: FAILED. 7 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.77s");
        totals.add("test something ... ok");
        assert_eq!(totals, Totals { passed: 43, failed: 1 });
    }
}
