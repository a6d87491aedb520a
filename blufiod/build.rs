//! Records the commit blufiod is built from, for `blufio_build_info` and `--version`:
//! `BLUFIOD_BUILD_COMMIT` when set (packagers building from a tarball), else `git rev-parse`,
//! else `unknown`.

use std::path::Path;
use std::process::Command;

/// What `git ARGS` prints, run in this package, when it succeeds and prints something.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=BLUFIOD_BUILD_COMMIT");
    // A new commit moves HEAD, or the branch HEAD names (a loose ref, or `packed-refs`). Their
    // paths come from git: in a worktree `.git` is a file, HEAD is the worktree's own and the
    // branches live in the main checkout, so `../.git/HEAD` would name nothing and the commit
    // would never be read again.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in &watched {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = std::env::var("BLUFIOD_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BLUFIOD_COMMIT={commit}");
}
