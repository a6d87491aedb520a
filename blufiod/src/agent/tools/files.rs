//! `read_file` and `write_file`: read and write text files inside the workspace directory.
//!
//! They must never touch anything outside the workspace: paths are relative, `..` is refused,
//! symbolic links are resolved and anything that leads out of the workspace is refused, reads
//! open the resolved path with `O_NOFOLLOW`, and writes go to a fresh temporary file (created with
//! `O_EXCL`, which never follows a link) renamed over the target, so a link is never written
//! through. Directories are created one at a time and checked as they go, so a link cannot make
//! them appear elsewhere. Files with more than one hard link are refused for reading and for
//! replacing: a hard link cannot be told from the original, so one made inside the workspace to
//! a file outside would otherwise lead out of it unseen. A process that swaps path components for
//! links while a call runs could still race the checks; only the agent's own tools write in the
//! workspace.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use serde::Deserialize;
use serde_json::json;

use super::{ToolOutput, error_chain, parse_input};
use crate::agent::provider::ToolSpec;

/// The `read_file` spec.
pub(super) fn read_spec() -> ToolSpec {
    ToolSpec {
        name: "read_file".to_owned(),
        description: "Read a text file from your workspace directory. The path is relative to the workspace; \
large files are cut at a size limit."
            .to_owned(),
        input_schema: json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Path relative to the workspace, e.g. notes/todo.md"}
            },
            "required": ["path"],
            "additionalProperties": false
        }),
    }
}

/// The `write_file` spec.
pub(super) fn write_spec() -> ToolSpec {
    ToolSpec {
        name: "write_file".to_owned(),
        description: "Write a text file in your workspace directory, replacing it if it exists. Missing parent \
directories are created. The path is relative to the workspace."
            .to_owned(),
        input_schema: json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Path relative to the workspace, e.g. notes/todo.md"},
                "content": {"type": "string", "description": "The complete new contents of the file"}
            },
            "required": ["path", "content"],
            "additionalProperties": false
        }),
    }
}

/// `read_file` and `write_file`, configured.
pub(super) struct Files {
    workspace: PathBuf,
    max_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadInput {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteInput {
    path: String,
    content: String,
}

/// Why a file call failed; the message is what the model sees.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("{tool} refused {path:?}: {reason}")]
    InvalidPath {
        tool: &'static str,
        path: String,
        reason: &'static str,
    },
    #[error("{tool} refused {path:?}: it leads outside the workspace through a symbolic link")]
    Escapes { tool: &'static str, path: String },
    #[error("{tool} refused {path:?}: it is a symbolic link, which {tool} does not follow or replace")]
    Symlink { tool: &'static str, path: String },
    #[error(
        "{tool} refused {path:?}: it has {links} hard links, so it may be a file outside the workspace \
linked in; {tool} only handles files with a single link"
    )]
    HardLinked {
        tool: &'static str,
        path: String,
        links: u64,
    },
    #[error("{tool} refused {path:?}: it is not a regular file")]
    NotAFile { tool: &'static str, path: String },
    #[error("{tool} refused {path:?}: {component:?} is not a directory")]
    NotADirectory {
        tool: &'static str,
        path: String,
        component: String,
    },
    #[error("read_file: {path:?} does not exist in the workspace")]
    NotFound { path: String },
    #[error(
        "write_file refused {path:?}: the content is {size} bytes, more than tools.files.max_bytes ({max}); \
write it in smaller files"
    )]
    TooLarge { path: String, size: usize, max: u64 },
    #[error("{tool} cannot {action} {path:?}: {reason}")]
    Io {
        tool: &'static str,
        action: &'static str,
        path: String,
        reason: String,
    },
    #[error("{tool} cannot create the workspace {workspace}: {reason}")]
    Workspace {
        tool: &'static str,
        workspace: String,
        reason: String,
    },
}

impl Files {
    /// The tools confined to `workspace`, moving at most `max_bytes` per call.
    pub(super) fn new(workspace: PathBuf, max_bytes: u64) -> Self {
        Self { workspace, max_bytes }
    }

    /// Runs `read_file`.
    pub(super) async fn read(&self, input: &serde_json::Value) -> ToolOutput {
        let input: ReadInput = match parse_input("read_file", input, r#"{"path": "relative/path"}"#) {
            Ok(input) => input,
            Err(output) => return output,
        };
        let workspace = self.workspace.clone();
        let max_bytes = self.max_bytes;
        blocking("read_file", move || read_file(&workspace, &input.path, max_bytes)).await
    }

    /// Runs `write_file`.
    pub(super) async fn write(&self, input: &serde_json::Value) -> ToolOutput {
        let input: WriteInput =
            match parse_input("write_file", input, r#"{"path": "relative/path", "content": "text"}"#) {
                Ok(input) => input,
                Err(output) => return output,
            };
        let workspace = self.workspace.clone();
        let max_bytes = self.max_bytes;
        blocking("write_file", move || {
            write_file(&workspace, &input.path, &input.content, max_bytes)
        })
        .await
    }
}

/// Runs file work off the async threads; it is bounded by `max_bytes`, so an abandoned (cancelled)
/// call finishes soon on its own.
async fn blocking(tool: &'static str, work: impl FnOnce() -> Result<String, FileError> + Send + 'static) -> ToolOutput {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(content)) => ToolOutput::ok(content),
        Ok(Err(error)) => ToolOutput::error(error.to_string()),
        Err(error) => ToolOutput::error(format!("{tool} failed unexpectedly: {error}")),
    }
}

fn read_file(workspace: &Path, raw_path: &str, max_bytes: u64) -> Result<String, FileError> {
    const TOOL: &str = "read_file";
    let components = relative_components(TOOL, raw_path)?;
    let workspace = ensure_workspace(TOOL, workspace)?;
    let full = components.iter().fold(workspace.clone(), |path, part| path.join(part));
    let resolved = match fs::canonicalize(&full) {
        Ok(resolved) => resolved,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(FileError::NotFound {
                path: raw_path.to_owned(),
            });
        }
        Err(error) => return Err(io_error(TOOL, "resolve", raw_path, &error)),
    };
    if !resolved.starts_with(&workspace) {
        return Err(FileError::Escapes {
            tool: TOOL,
            path: raw_path.to_owned(),
        });
    }
    // O_NOFOLLOW refuses a link swapped in after the check; O_NONBLOCK keeps a FIFO from blocking
    // the open (it is refused just below as not a regular file).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(&resolved)
        .map_err(|error| open_error(TOOL, raw_path, &error))?;
    let metadata = file
        .metadata()
        .map_err(|error| io_error(TOOL, "inspect", raw_path, &error))?;
    if !metadata.is_file() {
        return Err(FileError::NotAFile {
            tool: TOOL,
            path: raw_path.to_owned(),
        });
    }
    // Checked on the open file, so the link count is that of what is read.
    refuse_hard_links(TOOL, raw_path, &metadata)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|error| io_error(TOOL, "read", raw_path, &error))?;
    let cut = u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max_bytes;
    if cut {
        bytes.truncate(usize::try_from(max_bytes).unwrap_or(usize::MAX));
    }
    let mut content = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        content.push_str(&format!(
            "\n[... file cut at {max_bytes} bytes (tools.files.max_bytes); it has {} bytes]",
            metadata.len()
        ));
    }
    Ok(content)
}

fn write_file(workspace: &Path, raw_path: &str, content: &str, max_bytes: u64) -> Result<String, FileError> {
    const TOOL: &str = "write_file";
    if u64::try_from(content.len()).unwrap_or(u64::MAX) > max_bytes {
        return Err(FileError::TooLarge {
            path: raw_path.to_owned(),
            size: content.len(),
            max: max_bytes,
        });
    }
    let mut components = relative_components(TOOL, raw_path)?;
    let Some(file_name) = components.pop() else {
        return Err(empty_path(TOOL, raw_path));
    };
    let workspace = ensure_workspace(TOOL, workspace)?;

    // Walk (and create) the parent directories one at a time, resolving each, so a link to a
    // directory outside is refused before anything is created through it.
    let mut directory = workspace.clone();
    for component in &components {
        let next = directory.join(component);
        match fs::symlink_metadata(&next) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                match DirBuilder::new().mode(0o700).create(&next) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(error) => return Err(io_error(TOOL, "create a directory for", raw_path, &error)),
                }
            }
            Err(error) => return Err(io_error(TOOL, "inspect a directory of", raw_path, &error)),
        }
        let resolved = fs::canonicalize(&next).map_err(|error| io_error(TOOL, "resolve", raw_path, &error))?;
        if !resolved.starts_with(&workspace) {
            return Err(FileError::Escapes {
                tool: TOOL,
                path: raw_path.to_owned(),
            });
        }
        if !resolved.is_dir() {
            return Err(FileError::NotADirectory {
                tool: TOOL,
                path: raw_path.to_owned(),
                component: component.to_string_lossy().into_owned(),
            });
        }
        directory = resolved;
    }

    let target = directory.join(&file_name);
    match fs::symlink_metadata(&target) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(FileError::Symlink {
                tool: TOOL,
                path: raw_path.to_owned(),
            });
        }
        Ok(metadata) if !metadata.is_file() => {
            return Err(FileError::NotAFile {
                tool: TOOL,
                path: raw_path.to_owned(),
            });
        }
        // The rename below would not write through the link, but it would silently split the
        // file in two; refusing keeps reads and writes consistent.
        Ok(metadata) => refuse_hard_links(TOOL, raw_path, &metadata)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(TOOL, "inspect", raw_path, &error)),
    }

    // A temporary file in the same directory renamed over the target: readers see the old or the
    // new contents, never half a file, and a crash leaves at most a stray temporary file.
    let mut temporary = tempfile::Builder::new()
        .prefix(".blufio-write-")
        .suffix(".tmp")
        .tempfile_in(&directory)
        .map_err(|error| io_error(TOOL, "create a temporary file for", raw_path, &error))?;
    temporary
        .write_all(content.as_bytes())
        .and_then(|()| temporary.as_file().sync_all())
        .map_err(|error| io_error(TOOL, "write", raw_path, &error))?;
    temporary
        .persist(&target)
        .map_err(|error| io_error(TOOL, "replace", raw_path, &error.error))?;
    File::open(&directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| io_error(TOOL, "sync the directory of", raw_path, &error))?;
    Ok(format!("wrote {} bytes to {raw_path}", content.len()))
}

/// Refuses a file with more than one hard link: it cannot be told whether another of its names
/// lies outside the workspace.
fn refuse_hard_links(tool: &'static str, raw_path: &str, metadata: &fs::Metadata) -> Result<(), FileError> {
    let links = metadata.nlink();
    if links > 1 {
        return Err(FileError::HardLinked {
            tool,
            path: raw_path.to_owned(),
            links,
        });
    }
    Ok(())
}

/// The path's parts, if it is relative and has no `..`.
fn relative_components(tool: &'static str, raw_path: &str) -> Result<Vec<OsString>, FileError> {
    let invalid = |reason| FileError::InvalidPath {
        tool,
        path: raw_path.to_owned(),
        reason,
    };
    let path = Path::new(raw_path);
    if path.is_absolute() {
        return Err(invalid(
            "absolute paths are not allowed; give a path relative to the workspace",
        ));
    }
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => components.push(part.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid("'..' is not allowed; give a path inside the workspace"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(
                    "absolute paths are not allowed; give a path relative to the workspace",
                ));
            }
        }
    }
    if components.is_empty() {
        return Err(empty_path(tool, raw_path));
    }
    Ok(components)
}

fn empty_path(tool: &'static str, raw_path: &str) -> FileError {
    FileError::InvalidPath {
        tool,
        path: raw_path.to_owned(),
        reason: "it names no file; give a file path relative to the workspace",
    }
}

/// Creates the workspace (owner-only) if missing and returns its resolved path.
fn ensure_workspace(tool: &'static str, workspace: &Path) -> Result<PathBuf, FileError> {
    let failed = |error: io::Error| FileError::Workspace {
        tool,
        workspace: workspace.display().to_string(),
        reason: error_chain(&error),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(workspace)
        .map_err(failed)?;
    fs::canonicalize(workspace).map_err(failed)
}

fn open_error(tool: &'static str, raw_path: &str, error: &io::Error) -> FileError {
    // ELOOP is what O_NOFOLLOW reports for a link.
    if error.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
        FileError::Symlink {
            tool,
            path: raw_path.to_owned(),
        }
    } else {
        io_error(tool, "open", raw_path, error)
    }
}

fn io_error(tool: &'static str, action: &'static str, raw_path: &str, error: &io::Error) -> FileError {
    FileError::Io {
        tool,
        action,
        path: raw_path.to_owned(),
        reason: error_chain(error),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    struct Fixture {
        root: tempfile::TempDir,
        workspace: PathBuf,
        files: Files,
    }

    fn fixture(max_bytes: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("state").join("workspace");
        let files = Files::new(workspace.clone(), max_bytes);
        Fixture {
            root: dir,
            workspace,
            files,
        }
    }

    async fn read(files: &Files, path: &str) -> ToolOutput {
        files.read(&json!({ "path": path })).await
    }

    async fn write(files: &Files, path: &str, content: &str) -> ToolOutput {
        files.write(&json!({ "path": path, "content": content })).await
    }

    #[tokio::test]
    async fn round_trip_creates_the_workspace_and_parents() {
        let fixture = fixture(1024);
        let written = write(&fixture.files, "notes/2024/todo.md", "buy milk\n").await;
        assert!(!written.is_error, "{}", written.content);
        assert_eq!(written.content, "wrote 9 bytes to notes/2024/todo.md");
        let mode = fs::metadata(&fixture.workspace).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            fs::read_to_string(fixture.workspace.join("notes/2024/todo.md")).unwrap(),
            "buy milk\n"
        );

        let read_back = read(&fixture.files, "./notes/2024/todo.md").await;
        assert_eq!(read_back, ToolOutput::ok("buy milk\n"));

        let replaced = write(&fixture.files, "notes/2024/todo.md", "done").await;
        assert!(!replaced.is_error, "{}", replaced.content);
        assert_eq!(read(&fixture.files, "notes/2024/todo.md").await, ToolOutput::ok("done"));
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(fixture.workspace.join("notes/2024")).unwrap().count(), 1);

        let missing = read(&fixture.files, "nothing.txt").await;
        assert!(missing.is_error);
        assert!(missing.content.contains("does not exist"), "{}", missing.content);
    }

    #[tokio::test]
    async fn parent_components_and_absolute_paths_are_refused() {
        let fixture = fixture(1024);
        for path in ["../escape.txt", "a/../../escape.txt", "a/../b.txt"] {
            let output = write(&fixture.files, path, "x").await;
            assert!(output.is_error, "{path}");
            assert!(output.content.contains("'..' is not allowed"), "{}", output.content);
            let output = read(&fixture.files, path).await;
            assert!(output.content.contains("'..' is not allowed"), "{}", output.content);
        }
        for path in ["/etc/passwd", "/tmp/x"] {
            let output = read(&fixture.files, path).await;
            assert!(output.is_error, "{path}");
            assert!(
                output.content.contains("absolute paths are not allowed"),
                "{}",
                output.content
            );
            let output = write(&fixture.files, path, "x").await;
            assert!(
                output.content.contains("absolute paths are not allowed"),
                "{}",
                output.content
            );
        }
        for path in ["", ".", "./"] {
            let output = write(&fixture.files, path, "x").await;
            assert!(output.is_error, "{path:?}");
            assert!(output.content.contains("names no file"), "{}", output.content);
        }
        assert!(!fixture.root.path().join("state/escape.txt").exists());
    }

    #[tokio::test]
    async fn symlinks_out_of_the_workspace_are_refused() {
        let fixture = fixture(1024);
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        assert!(!write(&fixture.files, "placeholder", "").await.is_error);
        symlink(outside.path(), fixture.workspace.join("out")).unwrap();
        symlink(outside.path().join("secret.txt"), fixture.workspace.join("secret-link")).unwrap();

        let through_directory = read(&fixture.files, "out/secret.txt").await;
        assert!(through_directory.is_error);
        assert!(
            through_directory.content.contains("outside the workspace"),
            "{}",
            through_directory.content
        );
        let to_file = read(&fixture.files, "secret-link").await;
        assert!(to_file.is_error);
        assert!(to_file.content.contains("outside the workspace"), "{}", to_file.content);

        let write_through_directory = write(&fixture.files, "out/new.txt", "x").await;
        assert!(write_through_directory.is_error);
        assert!(!outside.path().join("new.txt").exists());
        let create_through_directory = write(&fixture.files, "out/sub/new.txt", "x").await;
        assert!(create_through_directory.is_error);
        assert!(!outside.path().join("sub").exists());
        let write_to_file = write(&fixture.files, "secret-link", "overwritten").await;
        assert!(write_to_file.is_error);
        assert!(
            write_to_file.content.contains("symbolic link"),
            "{}",
            write_to_file.content
        );
        assert_eq!(fs::read_to_string(outside.path().join("secret.txt")).unwrap(), "secret");

        // A link that stays inside the workspace is fine to read.
        assert!(!write(&fixture.files, "real.txt", "inside").await.is_error);
        symlink(
            fixture.workspace.join("real.txt"),
            fixture.workspace.join("inside-link"),
        )
        .unwrap();
        assert_eq!(read(&fixture.files, "inside-link").await, ToolOutput::ok("inside"));
    }

    #[tokio::test]
    async fn hard_links_are_refused() {
        let fixture = fixture(1024);
        assert!(!write(&fixture.files, "placeholder", "").await.is_error);
        let outside = fixture.root.path().join("secret.txt");
        fs::write(&outside, "secret").unwrap();
        fs::hard_link(&outside, fixture.workspace.join("linked.txt")).unwrap();

        let read_linked = read(&fixture.files, "linked.txt").await;
        assert!(read_linked.is_error);
        assert!(read_linked.content.contains("2 hard links"), "{}", read_linked.content);
        assert!(!read_linked.content.contains("secret"), "{}", read_linked.content);
        let write_linked = write(&fixture.files, "linked.txt", "overwritten").await;
        assert!(write_linked.is_error);
        assert!(write_linked.content.contains("hard links"), "{}", write_linked.content);
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret");
        assert_eq!(
            fs::read_to_string(fixture.workspace.join("linked.txt")).unwrap(),
            "secret"
        );

        // Once the other name is gone, the file is the workspace's own again.
        fs::remove_file(&outside).unwrap();
        assert_eq!(read(&fixture.files, "linked.txt").await, ToolOutput::ok("secret"));
        assert!(!write(&fixture.files, "linked.txt", "mine").await.is_error);
    }

    #[tokio::test]
    async fn sizes_are_capped() {
        let fixture = fixture(10);
        let too_large = write(&fixture.files, "big.txt", "01234567890").await;
        assert!(too_large.is_error);
        assert!(
            too_large.content.contains("tools.files.max_bytes"),
            "{}",
            too_large.content
        );
        assert!(!fixture.workspace.join("big.txt").exists());
        assert!(!write(&fixture.files, "fits.txt", "0123456789").await.is_error);

        fs::write(fixture.workspace.join("large.txt"), "abcdefghijklmnopqrstuvwxyz").unwrap();
        let cut = read(&fixture.files, "large.txt").await;
        assert!(!cut.is_error, "{}", cut.content);
        assert_eq!(
            cut.content,
            "abcdefghij\n[... file cut at 10 bytes (tools.files.max_bytes); it has 26 bytes]"
        );
        assert_eq!(read(&fixture.files, "fits.txt").await, ToolOutput::ok("0123456789"));
    }

    #[tokio::test]
    async fn directories_are_not_files() {
        let fixture = fixture(1024);
        assert!(!write(&fixture.files, "dir/a.txt", "a").await.is_error);
        let read_directory = read(&fixture.files, "dir").await;
        assert!(read_directory.is_error);
        assert!(
            read_directory.content.contains("not a regular file"),
            "{}",
            read_directory.content
        );
        let write_directory = write(&fixture.files, "dir", "x").await;
        assert!(write_directory.is_error);
        let file_as_directory = write(&fixture.files, "dir/a.txt/b.txt", "x").await;
        assert!(file_as_directory.is_error);
        assert!(
            file_as_directory.content.contains("not a directory"),
            "{}",
            file_as_directory.content
        );
    }
}
