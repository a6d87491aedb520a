//! Records the commit blufiod is built from, for `blufio_build_info` and `--version`:
//! `BLUFIOD_BUILD_COMMIT` when set (packagers building from a tarball), else `git rev-parse`,
//! else `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BLUFIOD_BUILD_COMMIT");
    let git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    // A new commit moves the branch ref (loose or packed) that HEAD names.
    for watched in ["HEAD", "refs/heads", "packed-refs"] {
        if git.join(watched).exists() {
            println!("cargo:rerun-if-changed={}", git.join(watched).display());
        }
    }
    let commit = std::env::var("BLUFIOD_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| {
            let output = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()?;
            let commit = String::from_utf8(output.stdout).ok()?.trim().to_owned();
            (output.status.success() && !commit.is_empty()).then_some(commit)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BLUFIOD_COMMIT={commit}");
}
