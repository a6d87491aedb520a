//! `cargo xtask tidy`: the written invariants of ARCHITECTURE.md turned into checks that CI runs.
//!
//! - blufioctl never depends on blufiod;
//! - test support (`blufio-testkit`) is only ever a dev-dependency of the shipped crates, and never
//!   depends on blufiod itself;
//! - no sqlx outside `blufiod/src/storage/`;
//! - every control RPC authorizes before anything else (besides the guard layer in front);
//! - every dependency a crate declares is used by its sources (rough, textual);
//! - every module opens with a `//!` line;
//! - no import cycle between blufiod's top-level modules; the agent knows no transport, and the
//!   transports see the agent's model, never storage rows or provider wire types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Runs every check and reports every problem at once.
pub fn main() -> Result<()> {
    let root = crate::root();
    let mut problems = Vec::new();
    problems.extend(client_is_thin(&root)?);
    problems.extend(testkit_stays_in_tests(&root)?);
    problems.extend(sqlx_stays_in_storage(&root)?);
    problems.extend(rpcs_authorize_first(&root)?);
    problems.extend(dependencies_are_used(&root)?);
    problems.extend(modules_open_with_docs(&root)?);
    let graph = module_graph(&root)?;
    problems.extend(module_cycles(&graph));
    problems.extend(module_boundaries(&root, &graph)?);
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

/// The crates that ship, and the test support that must not ship inside them.
const SHIPPED: [&str; 3] = ["blufiod", "blufioctl", "proto"];

fn testkit_stays_in_tests(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in SHIPPED {
        let manifest = read(&root.join(krate).join("Cargo.toml"))?;
        let mut section = "";
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if line.starts_with("blufio-testkit") && section != "[dev-dependencies]" {
                problems.push(format!(
                    "{krate}/Cargo.toml names blufio-testkit under {section}; test support is only a dev-dependency"
                ));
            }
        }
    }
    let manifest = read(&root.join("blufiod/testkit/Cargo.toml"))?;
    if manifest.lines().any(|line| line.trim_start().starts_with("blufiod")) {
        problems.push(
            "blufiod/testkit/Cargo.toml depends on blufiod; test support runs the binaries, as users do".to_owned(),
        );
    }
    Ok(problems)
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
    for krate in ["blufiod", "blufiod/testkit", "blufioctl", "proto", "xtask"] {
        let manifest = read(&root.join(krate).join("Cargo.toml"))?;
        let mut sources = String::new();
        for dir in ["src", "tests", "benches", "build.rs"] {
            let path = root.join(krate).join(dir);
            if path.is_file() {
                sources.push_str(&read_with_path_modules(&path)?);
            } else if path.is_dir() {
                for file in rust_files(&path)? {
                    sources.push_str(&read_with_path_modules(&file)?);
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

/// A source file followed by the files its `#[path = "..."]` modules name (one level), which
/// may live outside the crate's directories: blufio-testkit's fake provider does.
fn read_with_path_modules(file: &Path) -> Result<String> {
    let mut text = read(file)?;
    let dir = file.parent().unwrap_or(file);
    let included: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("#[path = \"")?
                .strip_suffix("\"]")
                .map(|path| dir.join(path))
        })
        .collect();
    for path in included {
        text.push_str(&read(&path)?);
    }
    Ok(text)
}

fn modules_open_with_docs(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in [
        "blufiod/src",
        "blufiod/testkit/src",
        "blufioctl/src",
        "proto/src",
        "xtask/src",
    ] {
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

/// blufiod's top-level modules and the modules each names (`crate::name`), outside its tests.
fn module_graph(root: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let src = root.join("blufiod/src");
    let module_of = |file: &Path| -> String {
        let relative = file.strip_prefix(&src).unwrap_or(file);
        let first = relative
            .components()
            .next()
            .map(|part| part.as_os_str().to_string_lossy().into_owned());
        first.unwrap_or_default().trim_end_matches(".rs").to_owned()
    };
    let files = rust_files(&src)?;
    let modules: BTreeSet<String> = files.iter().map(|file| module_of(file)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let text = read(file)?;
        // Unit tests may reach anything; only the code itself makes the module's shape.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let named = graph.entry(module.clone()).or_default();
        for name in crate_paths(code) {
            if name != module && modules.contains(&name) {
                named.insert(name);
            }
        }
    }
    Ok(graph)
}

/// The first segment of every `crate::` path in `code`, groups (`crate::{a, b::c}`) included.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (start, _) in code.match_indices("crate::") {
        let rest = &code[start + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (index, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        names.push(ident(&group[index..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names
}

fn module_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|seen| *seen == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module);
            found.push(format!(
                "blufiod modules import each other in a cycle: {}",
                cycle.join(" -> ")
            ));
            return;
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done, found);
        }
        path.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn module_boundaries(root: &Path, graph: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for transport in ["control", "gateway", "lifecycle", "daemon", "main"] {
        if graph.get("agent").is_some_and(|named| named.contains(transport)) {
            problems.push(format!(
                "blufiod/src/agent names crate::{transport}; the agent knows no transport"
            ));
        }
    }
    let src = root.join("blufiod/src");
    for file in rust_files(&src.join("agent"))? {
        if read(&file)?.contains("blufio_proto") {
            problems.push(format!(
                "{} names blufio_proto; the agent knows no wire format",
                file.display()
            ));
        }
    }
    for transport in ["control", "gateway"] {
        for file in rust_files(&src.join(transport))? {
            let text = read(&file)?;
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
            if code.contains("agent::provider") {
                problems.push(format!(
                    "{shown} names agent::provider; transports use the agent's model"
                ));
            }
            let rows = code
                .match_indices("storage::")
                .any(|(at, _)| !code[at + "storage::".len()..].starts_with("Storage"));
            if rows {
                problems.push(format!(
                    "{shown} names a storage type other than the Storage handle; transports use the agent's model"
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_paths_see_plain_paths_and_groups() {
        let code =
            "use crate::agent::{Agent, AgentDeps};\nuse crate::{config::Live, events};\nlet x = crate::util::now();";
        assert_eq!(crate_paths(code), ["agent", "config", "events", "util"]);
    }

    #[test]
    fn a_cycle_is_reported_with_its_path() {
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("agent", &["storage"][..]),
            ("gateway", &["agent"][..]),
            ("storage", &["gateway"][..]),
            ("util", &[][..]),
        ]
        .into_iter()
        .map(|(module, named)| (module.to_owned(), named.iter().map(|name| (*name).to_owned()).collect()))
        .collect();
        let found = module_cycles(&graph);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with("agent -> storage -> gateway -> agent"), "{found:?}");
        let acyclic: BTreeMap<String, BTreeSet<String>> =
            [("agent".to_owned(), BTreeSet::from(["storage".to_owned()]))].into();
        assert!(module_cycles(&acyclic).is_empty());
    }
}
