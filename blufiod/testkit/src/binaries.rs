//! Where the `blufiod` and `blufioctl` executables come from.
//!
//! A library cannot use `env!("CARGO_BIN_EXE_blufiod")`: cargo defines it only while compiling an
//! integration test or benchmark of blufiod itself. So [`Binaries::from_env`] looks, in order, at
//! an override (`BLUFIOD_BIN`), at the same path cargo sets at run time for blufiod's tests and
//! benchmarks (`CARGO_BIN_EXE_blufiod`, which cargo also builds before running them), and at the
//! target directory of the running executable (`target/<profile>/` for a test or benchmark in
//! `target/<profile>/deps/`). `blufioctl` is `BLUFIOCTL_BIN`, else the one next to that
//! `blufiod` (`cargo test --workspace` builds it; `cargo test -p blufiod` does not).
//!
//! A missing binary is a panic that says how to build it, at the first use, not at lookup.

use std::path::{Path, PathBuf};

/// The daemon and the client that one [`crate::Daemon`] runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    blufiod: Located,
    blufioctl: Located,
}

/// One binary's path, with where it came from and how to build it, for the missing-file message.
#[derive(Debug, Clone)]
struct Located {
    path: PathBuf,
    source: String,
    remedy: &'static str,
}

impl Binaries {
    /// The binaries of this test or benchmark's own build (see the module docs for the order).
    pub fn from_env() -> Self {
        let (path, source) = match (
            std::env::var_os("BLUFIOD_BIN"),
            std::env::var_os("CARGO_BIN_EXE_blufiod"),
        ) {
            (Some(path), _) => (path.into(), "from BLUFIOD_BIN"),
            (None, Some(path)) => (path.into(), "from CARGO_BIN_EXE_blufiod"),
            (None, None) => (
                profile_dir().join("blufiod"),
                "in the target directory of the running executable",
            ),
        };
        let blufiod = Located {
            path,
            source: source.to_owned(),
            remedy: "build it with `cargo build --bin blufiod` (add `--release` for a benchmark) or set BLUFIOD_BIN",
        };
        let (path, source) = match std::env::var_os("BLUFIOCTL_BIN") {
            Some(path) => (path.into(), "from BLUFIOCTL_BIN"),
            None => (blufiod.path.with_file_name("blufioctl"), "next to blufiod"),
        };
        let blufioctl = Located {
            path,
            source: source.to_owned(),
            remedy: "run the tests with `cargo test --workspace` (which builds blufioctl) or set BLUFIOCTL_BIN",
        };
        Self { blufiod, blufioctl }
    }

    /// Both binaries from `dir`, whatever the environment says: for a caller that has just built
    /// them there, as `cargo xtask bench` does with `target/release/`.
    pub fn in_dir(dir: &Path) -> Self {
        let located = |name: &str| Located {
            path: dir.join(name),
            source: format!("in {}", dir.display()),
            remedy: "build both there first (for target/release: `cargo build --release --bin blufiod --bin blufioctl`)",
        };
        Self {
            blufiod: located("blufiod"),
            blufioctl: located("blufioctl"),
        }
    }

    /// The daemon's executable; panics with how to build it when it does not exist.
    pub fn blufiod(&self) -> &Path {
        self.blufiod.existing()
    }

    /// The client's executable; panics with how to build it when it does not exist.
    pub fn blufioctl(&self) -> &Path {
        self.blufioctl.existing()
    }
}

/// The daemon of [`Binaries::from_env`].
pub fn blufiod_bin() -> PathBuf {
    Binaries::from_env().blufiod().to_owned()
}

/// The client of [`Binaries::from_env`].
pub fn blufioctl_bin() -> PathBuf {
    Binaries::from_env().blufioctl().to_owned()
}

impl Located {
    fn existing(&self) -> &Path {
        self.check().unwrap_or_else(|problem| panic!("{problem}"))
    }

    fn check(&self) -> Result<&Path, String> {
        if self.path.exists() {
            return Ok(&self.path);
        }
        Err(format!(
            "{} does not exist ({}): {}",
            self.path.display(),
            self.source,
            self.remedy
        ))
    }
}

/// `target/<profile>/` of the running executable: its own directory, or the parent of `deps/`,
/// where cargo puts test and benchmark executables.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let dir = exe.parent().expect("an executable lives in a directory");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_owned(),
        _ => dir.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_executable_finds_the_profile_directory_above_deps() {
        // This unit test itself runs from target/<profile>/deps/.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(exe.parent().unwrap().file_name().unwrap(), "deps");
        assert_eq!(profile_dir(), exe.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn a_directory_names_both_binaries_and_a_missing_one_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let binaries = Binaries::in_dir(dir.path());
        assert_eq!(binaries.blufiod.path, dir.path().join("blufiod"));
        assert_eq!(binaries.blufioctl.path, dir.path().join("blufioctl"));
        let message = binaries.blufiod.check().unwrap_err();
        assert!(message.contains("does not exist"), "{message}");
        assert!(message.contains("cargo build --release --bin blufiod"), "{message}");
        std::fs::write(dir.path().join("blufioctl"), "").unwrap();
        assert_eq!(binaries.blufioctl(), dir.path().join("blufioctl"));
    }
}
