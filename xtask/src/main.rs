//! Project automation, run as `cargo xtask <task>`:
//!
//! - `test`: installs what the test suite needs beyond Rust (Python's grpcio and
//!   http-message-signatures, for the interop tests with stock tools, into `target/xtask/venv`;
//!   systemd-analyze, busybox and promtool with apt-get when missing), then runs
//!   `cargo test --workspace`.
//! - `ci`: formatting, clippy with `-D warnings`, `tidy`, then `test`: what `.ci/run` does.
//! - `tidy`: the written invariants of ARCHITECTURE.md as checks (see `tidy.rs`).
//! - `dist`: the release tarball (binaries, man pages, completions, packaging, `install.sh`) and
//!   the Debian package, in `dist/`.
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
        ["dist", rest @ ..] => dist(rest),
        ["bench", rest @ ..] => bench::main(rest),
        ["fuzz"] => fuzz("60"),
        ["fuzz", seconds] => fuzz(seconds),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  test [ARGS...]   install test prerequisites, run cargo test --workspace [ARGS...]\n  ci               fmt --check, clippy -D warnings, tidy, test\n  tidy             the architecture's written invariants, checked\n  dist [--profile P]  the release tarball with install.sh, and the Debian package, in dist/\n  bench TASK       startup | idle | size | turns | gateway | memory | backup | all (see docs/benchmarks.md)\n  fuzz [SECONDS]   run the signature-header fuzz target (needs cargo-fuzz)"
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
    // The package tests read dist/: the tarball tree and the Debian package, made from the debug
    // build the tests share rather than from a second, release build.
    cargo_deb()?;
    dist(&["--profile", "dev"])?;
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
    test(&[])?;
    // Not a timed test: a ratio within one run, failing only on a large regression.
    bench::quick(false)
}

/// Programs the tests run, and the Debian packages that ship them.
const SYSTEM_TOOLS: &[(&str, &str)] = &[
    ("systemd-analyze", "systemd"),
    ("busybox", "busybox"),
    ("promtool", "prometheus"),
    // The packaged hook examples run for real: a webhook with curl, a backup copied with rsync.
    ("curl", "curl"),
    ("rsync", "rsync"),
    // The package tests: the logrotate file is checked inside the container they install into.
    ("logrotate", "logrotate"),
    ("strip", "binutils"),
];

/// The cargo-deb that builds the Debian package (`cargo xtask dist`), installed when missing.
const CARGO_DEB_VERSION: &str = "3.8.0";

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

/// Installs cargo-deb from crates.io when it is missing (about a minute on 2 cores).
fn cargo_deb() -> Result<()> {
    let installed = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if installed {
        return Ok(());
    }
    run(cargo().args(["install", "--locked", "cargo-deb", "--version", CARGO_DEB_VERSION]))
        .context("cannot install cargo-deb, which builds the Debian package")
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

/// What a release tarball holds besides the binaries, man pages and completions: the packaging
/// files `install.sh` installs, under the same relative paths.
const DIST_FILES: &[&str] = &[
    "README.md",
    "packaging/install.sh",
    "packaging/blufiod.service",
    "packaging/blufiod.socket",
    "packaging/blufio.sysusers",
    "packaging/blufio.tmpfiles",
    "packaging/blufiod.example.toml",
    "packaging/logrotate/blufiod",
    "packaging/hooks/budget-webhook",
    "packaging/hooks/backup-offsite",
    "packaging/prometheus/alerts.yml",
    "packaging/grafana/blufio.json",
];

/// `cargo xtask dist [--profile PROFILE]`: the release binaries (stripped), man pages, shell
/// completions and packaging files in `dist/blufio-VERSION-ARCH/` with `install.sh`, the same
/// as a tarball beside it, and the Debian package from cargo-deb when it is installed. The
/// binaries come from `CARGO_TARGET_DIR` when set. `--profile dev` packs the debug build that
/// `cargo test` already made, which the package tests use instead of a second, release build.
fn dist(args: &[&str]) -> Result<()> {
    let profile = match args {
        [] => "release",
        ["--profile", profile] => profile,
        _ => bail!("usage: cargo xtask dist [--profile release|dev]"),
    };
    let profile_dir = if profile == "dev" { "debug" } else { profile };
    run(cargo().args([
        "build",
        "--locked",
        "--profile",
        profile,
        "--bin",
        "blufiod",
        "--bin",
        "blufioctl",
    ]))?;
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("blufio-{version}-{}", std::env::consts::ARCH);
    let dist = root().join("dist");
    let tree = dist.join(&name);
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("cannot empty {}", tree.display()))?;
    }
    for dir in ["bin", "man/man1", "man/man8", "completions"] {
        std::fs::create_dir_all(tree.join(dir))?;
    }
    for binary in ["blufiod", "blufioctl"] {
        let target = tree.join("bin").join(binary);
        std::fs::copy(target_dir().join(profile_dir).join(binary), &target)
            .with_context(|| format!("cannot copy the {profile} build of {binary}"))?;
        run(Command::new("strip").arg(&target))?;
    }
    let blufioctl = tree.join("bin/blufioctl");
    run(Command::new(&blufioctl)
        .arg("man")
        .arg("--dir")
        .arg(tree.join("man/man1")))?;
    let page = Command::new(tree.join("bin/blufiod")).arg("--man-page").output()?;
    if !page.status.success() {
        bail!("blufiod --man-page failed: {}", String::from_utf8_lossy(&page.stderr));
    }
    std::fs::write(tree.join("man/man8/blufiod.8"), page.stdout)?;
    for (shell, file) in [
        ("bash", "blufioctl.bash"),
        ("zsh", "_blufioctl"),
        ("fish", "blufioctl.fish"),
    ] {
        let output = Command::new(&blufioctl).args(["completions", shell]).output()?;
        if !output.status.success() {
            bail!("blufioctl completions {shell} failed");
        }
        std::fs::write(tree.join("completions").join(file), output.stdout)?;
    }
    for file in DIST_FILES {
        let into = if *file == "packaging/install.sh" {
            tree.join("install.sh")
        } else {
            tree.join(file)
        };
        std::fs::create_dir_all(into.parent().expect("a file in a directory"))?;
        std::fs::copy(root().join(file), &into).with_context(|| format!("cannot copy {file} into the tarball"))?;
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .arg("--create")
        .arg("--gzip")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("--file")
        .arg(&tarball)
        .arg("--directory")
        .arg(&dist)
        .arg(&name))?;
    eprintln!("dist/{name}/: binaries, man pages, completions, packaging and install.sh; dist/{name}.tar.gz");
    deb(&tree)
}

/// The Debian package, built by cargo-deb (`cargo install cargo-deb --locked`) from the tree of
/// `dist` (through the link `dist/stage`, which `[package.metadata.deb]` in blufiod/Cargo.toml
/// names), into `dist/`.
fn deb(tree: &Path) -> Result<()> {
    let stage = root().join("dist/stage");
    match std::fs::remove_file(&stage) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).context("cannot replace dist/stage"),
    }
    std::os::unix::fs::symlink(tree.file_name().context("the tree has a name")?, &stage)
        .context("cannot link dist/stage")?;
    let installed = cargo()
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        bail!("cargo-deb is missing: `cargo install cargo-deb --locked` (.ci/run installs it)");
    }
    run(cargo()
        .args(["deb", "-p", "blufiod", "--no-build", "--no-strip", "--output"])
        .arg(root().join("dist")))
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
