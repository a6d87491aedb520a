//! `cargo xtask tidy`: the written invariants of ARCHITECTURE.md turned into checks that CI runs.
//!
//! - blufioctl never depends on blufiod;
//! - no sqlx outside `blufiod/src/storage/`;
//! - every control RPC authorizes before anything else (besides the guard layer in front);
//! - every dependency a crate declares is used by its sources (rough, textual);
//! - every module opens with a `//!` line.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Runs every check and reports every problem at once.
pub fn main() -> Result<()> {
    let root = crate::root();
    let mut problems = Vec::new();
    problems.extend(client_is_thin(&root)?);
    problems.extend(sqlx_stays_in_storage(&root)?);
    problems.extend(rpcs_authorize_first(&root)?);
    problems.extend(dependencies_are_used(&root)?);
    problems.extend(modules_open_with_docs(&root)?);
    if problems.is_empty() {
        eprintln!("tidy: ok");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    bail!("{} tidy problem(s)", problems.len())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn client_is_thin(root: &Path) -> Result<Vec<String>> {
    let manifest = read(&root.join("blufioctl/Cargo.toml"))?;
    Ok(manifest
        .lines()
        .any(|line| line.trim_start().starts_with("blufiod"))
        .then(|| "blufioctl/Cargo.toml depends on blufiod; the client talks to it only over the socket".to_owned())
        .into_iter()
        .collect())
}

fn sqlx_stays_in_storage(root: &Path) -> Result<Vec<String>> {
    let storage = root.join("blufiod/src/storage");
    let mut problems = Vec::new();
    for file in rust_files(&root.join("blufiod/src"))? {
        if file.starts_with(&storage) {
            continue;
        }
        if read(&file)?.contains("sqlx") {
            problems.push(format!(
                "{} names sqlx; only blufiod/src/storage/ may",
                file.strip_prefix(root).unwrap_or(&file).display()
            ));
        }
    }
    Ok(problems)
}

fn rpcs_authorize_first(root: &Path) -> Result<Vec<String>> {
    let path = root.join("blufiod/src/control/service.rs");
    let text = read(&path)?;
    let Some(start) = text.find("impl pb::control_server::Control for ControlService") else {
        return Ok(vec![
            "control/service.rs no longer implements the Control service".to_owned(),
        ]);
    };
    let mut problems = Vec::new();
    let mut lines = text[start..].lines().peekable();
    let mut n_rpcs = 0;
    while let Some(line) = lines.next() {
        if line == "}" {
            // The end of the impl block.
            break;
        }
        let Some(signature) = line.trim_start().strip_prefix("async fn ") else {
            continue;
        };
        let name = signature.split('(').next().unwrap_or_default().to_owned();
        // The body starts after the line that ends the signature with `{`.
        let mut opening = line.to_owned();
        while !opening.trim_end().ends_with('{') {
            match lines.next() {
                Some(next) => opening = next.to_owned(),
                None => break,
            }
        }
        let first = lines.find(|line| !line.trim().is_empty()).unwrap_or_default();
        n_rpcs += 1;
        if !first.contains("self.authorize(&request,") {
            problems.push(format!(
                "control/service.rs: `{name}` does not authorize before anything else (first line: {:?})",
                first.trim()
            ));
        }
    }
    if n_rpcs == 0 {
        problems.push("control/service.rs: no RPC found".to_owned());
    }
    Ok(problems)
}

fn dependencies_are_used(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in ["blufiod", "blufioctl", "proto", "xtask"] {
        let manifest = read(&root.join(krate).join("Cargo.toml"))?;
        let mut sources = String::new();
        for dir in ["src", "tests", "benches", "build.rs"] {
            let path = root.join(krate).join(dir);
            if path.is_file() {
                sources.push_str(&read(&path)?);
            } else if path.is_dir() {
                for file in rust_files(&path)? {
                    sources.push_str(&read(&file)?);
                }
            }
        }
        let mut section = String::new();
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            if !section.contains("dependencies") || line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some(name) = line.split(['=', '.']).next().map(str::trim) else {
                continue;
            };
            let name = if name == "blufio-proto" { "blufio_proto" } else { name };
            let used_as = name.replace('-', "_");
            // Crates used in ways this scan does not see: the allocator through an attribute, the
            // code generator's runtime and `prost` through generated code, `protoc` from
            // build.rs, `rustls-webpki` under its library name `webpki`.
            let exempt = [
                ("blufiod", "tikv-jemallocator"),
                ("proto", "tonic-prost"),
                ("proto", "prost"),
                ("proto", "protoc-bin-vendored"),
            ];
            if exempt.contains(&(krate, name)) {
                continue;
            }
            let used_as = if name == "rustls-webpki" {
                "webpki".to_owned()
            } else {
                used_as
            };
            if !sources.contains(&format!("{used_as}::")) && !sources.contains(&format!("use {used_as}")) {
                problems.push(format!("{krate}/Cargo.toml declares `{name}` but no source uses it"));
            }
        }
    }
    Ok(problems)
}

fn modules_open_with_docs(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in ["blufiod/src", "blufioctl/src", "proto/src", "xtask/src"] {
        for file in rust_files(&root.join(krate))? {
            let text = read(&file)?;
            let first = text.lines().find(|line| !line.trim().is_empty()).unwrap_or_default();
            if !first.starts_with("//!") {
                problems.push(format!(
                    "{} does not open with a `//!` line saying what it is for",
                    file.strip_prefix(root).unwrap_or(&file).display()
                ));
            }
        }
    }
    Ok(problems)
}
