//! `blufioctl backup [PATH]`, `backup --verify PATH` and `restore PATH`: backup archives of the
//! daemon's state, moved between the control socket and files. The archive's format and its
//! reader are `blufio_proto::backup`'s, shared with the daemon; this module never parses tar
//! itself.
//!
//! blufiod passes a read-only descriptor of its snapshot on the call's connection, with the
//! manifest and the small members, and the archive is built here from them (moving a large
//! database through HTTP/2 costs both processes more CPU than the rest of a backup together).
//! The descriptor comes before blufiod's integrity check, which runs while the archive is built
//! here; the archive is kept only once blufiod says the check passed and its SHA-256 of the
//! snapshot equals the one of the bytes written, which then goes into the manifest;
//! with `--stream`, or from a daemon that passes none, the archive's bytes come over the socket.
//! Either way, a backup goes to a temporary file (mode 0600: it holds the vault's sealed secrets
//! and the config) beside PATH. A thread of its own writes it and verifies every member's SHA-256
//! against the manifest as the bytes pass (one pass: reading the file back would only read the
//! page cache those bytes came through, at the cost of a second hash on a small machine). It is
//! then flushed to disk and only then renamed to PATH: PATH holds a complete, verified archive or
//! is left as it was. A restore verifies the file here before sending a byte, so a damaged
//! archive fails fast; the daemon verifies it again before it changes anything.

use std::fmt::Write as _;
use std::fs::{File, Permissions};
use std::io::{self, BufWriter, IsTerminal as _, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use blufio_proto::backup::{self as archive, ArchiveError, Manifest};
use blufio_proto::control::v1::backup_chunk::Chunk;
use blufio_proto::control::v1::restore_progress::Progress as RestoreEvent;
use blufio_proto::control::v1::{RestoreChunk, RestoreResponse, RestoreStart, restore_chunk};
use blufio_proto::httpsig::unix_now;
use serde::Serialize;
use tokio::sync::mpsc;

mod archive_file;

use self::archive_file::ArchiveFile;
use super::Context;
use crate::cli::{BackupArgs, JsonArgs, RestoreArgs};
use crate::client::BackupStream;
use crate::output::{
    Cell, Human, Paint, Render, Style, format_utc, humanize_bytes, humanize_seconds, non_empty, printable,
    render_pairs, utc_stamp,
};
use crate::progress::Progress;
use crate::{Failure, Outcome, interrupted, restore_failure, with_hint};

/// Archive bytes per `data` chunk sent to `Restore`: the daemon's socket takes messages of at most
/// 320 KiB, so this leaves room for the framing.
const CHUNK_BYTES: usize = 256 * 1024;
/// Mode of a new archive file: only its owner may read the sealed secrets and the config.
const ARCHIVE_MODE: u32 = 0o600;
/// Names of the temporary files beside PATH, hidden from `ls`.
const TEMP_PREFIX: &str = ".blufio-backup-";
/// The PATH that means stdout (and stdin for `--verify`).
const STDIO: &str = "-";

/// Runs `backup`: makes an archive, or checks one with `--verify`.
pub async fn run(context: &Context<'_>, args: BackupArgs) -> Result<Outcome, Failure> {
    let BackupArgs {
        path,
        verify,
        include_tls,
        without_config,
        force,
        stream,
        output,
    } = args;
    let contents = Contents {
        without_config,
        include_tls,
        descriptor: !stream,
    };
    let started = Instant::now();
    match path {
        Some(path) if verify => verify_command(context, &path, output).await,
        // clap requires PATH with --verify.
        None if verify => Err(anyhow::anyhow!("--verify needs the PATH of an archive").into()),
        Some(path) if path.as_os_str() == STDIO => backup_to_stdout(context, contents, started).await,
        path => {
            let path = target_path(path, unix_now());
            backup_to_file(context, path, contents, force, output, started).await
        }
    }
}

/// What `backup` asks the daemon to put in the archive.
#[derive(Debug, Clone, Copy)]
struct Contents {
    without_config: bool,
    include_tls: bool,
    /// Ask for the snapshot's descriptor rather than the streamed archive.
    descriptor: bool,
}

/// Where a backup goes: PATH, the default name inside PATH when it is a directory, or the default
/// name in the current directory.
fn target_path(given: Option<PathBuf>, now: i64) -> PathBuf {
    let default_name = format!("blufio-backup-{}.tar", utc_stamp(now));
    match given {
        None => PathBuf::from(default_name),
        Some(dir) if dir.is_dir() => dir.join(default_name),
        Some(path) => path,
    }
}

/// The directory that holds `path`, for its temporary file and the fsync after the rename.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Resolves when Ctrl-C is pressed; never, if the handler cannot be installed (then Ctrl-C ends
/// the process as usual).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `backup [PATH]` to a file.
async fn backup_to_file(
    context: &Context<'_>,
    path: PathBuf,
    contents: Contents,
    force: bool,
    output: JsonArgs,
    started: Instant,
) -> Result<Outcome, Failure> {
    // Say so before the daemon spends a snapshot on it.
    if !force && path.symlink_metadata().is_ok() {
        return Err(exists_failure(&path));
    }
    let draw = io::stderr().is_terminal();
    // The temporary file's name lives inside this future: when Ctrl-C wins, dropping the future
    // removes the file (and closes the channel the writing thread reads, which ends it).
    let backup = download_to_file(context, &path, contents, force, draw);
    let (written, placed) = tokio::select! {
        written = backup => written?,
        () = ctrl_c() => {
            return Err(interrupted(anyhow::anyhow!(
                "interrupted: no backup was written to {}",
                path.display()
            )));
        }
    };
    // The archive is at PATH: from here on Ctrl-C no longer stops anything.
    if let Err(error) = File::open(parent_dir(&path)).and_then(|dir| dir.sync_all()) {
        context.printer.warning(&format!(
            "cannot flush the directory of {} to disk ({error}); a power loss now could undo the rename",
            path.display()
        ));
    }
    // Only now, with the archive in place, does blufiod hear that the backup was made.
    if let Some(snapshot) = &placed.snapshot {
        confirm(snapshot).context("cannot tell blufiod that the archive is in place")?;
    }
    end_call(placed.stream).await;
    let shown = std::fs::canonicalize(&path).unwrap_or(path);
    let view = BackupWritten {
        archive: Archive {
            path: Some(&shown.display().to_string()),
            bytes: written.bytes,
            manifest: &written.manifest,
        },
        duration_seconds: started.elapsed().as_secs_f64(),
    };
    context.printer.emit(&view, output.json)?;
    Ok(Outcome::Success)
}

/// A backup that is in place at PATH.
struct Written {
    bytes: u64,
    manifest: Manifest,
}

/// The call of a backup whose archive is at PATH, still open: the caller flushes the directory,
/// then confirms with the passed snapshot and ends the call.
struct Placed {
    stream: BackupStream,
    snapshot: Option<File>,
}

/// Streams the archive into a temporary file beside `path`, verifying every member against the
/// manifest as it is written, flushes it to disk and renames it to `path`; returns the call still
/// open, for the caller to confirm once the directory is flushed too.
async fn download_to_file(
    context: &Context<'_>,
    path: &Path,
    contents: Contents,
    force: bool,
    draw: bool,
) -> Result<(Written, Placed), Failure> {
    let dir = parent_dir(path);
    // Created before the daemon is asked, so that an unwritable directory fails fast.
    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tar")
        .permissions(Permissions::from_mode(ARCHIVE_MODE))
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // The file goes to the writing thread; its name stays here, and removes it when dropped.
    let (file, temp_path) = temp.into_parts();
    let mut client = context.connect().await?;
    let mut stream = client
        .backup(contents.without_config, contents.include_tls, contents.descriptor)
        .await?;
    let (archive_bytes, mut announced, local) = started(&mut stream).await?;
    let pending = local.as_ref().is_some_and(|local| local.check_pending);

    let receiving = Progress::new(
        if local.is_some() { "writing" } else { "receiving" },
        archive_bytes,
        draw,
    );
    let target = format!("the temporary file {}", temp_path.display());
    let out = ArchiveFile::new(file);
    // On any failure, dropping `temp_path` removes the temporary file: PATH is untouched.
    let (out, snapshot) = receive(
        &mut stream,
        archive_bytes,
        &mut announced,
        local,
        out,
        &target,
        &receiving,
    )
    .await?;
    receiving.finish();
    let write_error = |error: io::Error| {
        anyhow::Error::new(error).context(format!("cannot write the archive to {}", temp_path.display()))
    };
    let file = out.into_file().map_err(write_error)?;
    if pending {
        fill_in_manifest(&file, &announced).map_err(write_error)?;
    }
    file.sync_all().map_err(write_error)?;
    drop(file);

    let persisted = if force {
        temp_path.persist(path)
    } else {
        temp_path.persist_noclobber(path)
    };
    if let Err(error) = persisted {
        // Dropping the returned name removes the temporary file.
        let tempfile::PathPersistError { error, path: temp_path } = error;
        drop(temp_path);
        if error.kind() == io::ErrorKind::AlreadyExists && !force {
            return Err(exists_failure(path));
        }
        return Err(anyhow::Error::new(error)
            .context(format!("cannot rename the verified archive to {}", path.display()))
            .into());
    }
    Ok((
        Written {
            bytes: archive_bytes,
            manifest: announced,
        },
        Placed { stream, snapshot },
    ))
}

/// Receives the rest of a backup stream (after `started`), or builds the archive here from the
/// snapshot blufiod passed (`local`), and writes it to `out` on a thread of its own, which
/// verifies every member's SHA-256 against the manifest as the bytes pass. Fails unless exactly
/// the announced archive, with the announced manifest, was written. `target` names `out` in
/// errors.
///
/// When blufiod checks its snapshot while the archive is built here (`check_pending`), the
/// manifest written carries [`archive::PENDING_SHA256`] for the database: this waits for
/// blufiod's `checked`, compares its SHA-256 with the one of the bytes written, and puts it in
/// `announced`; the caller then writes that manifest over the pending one
/// ([`fill_in_manifest`]). A failed check ends the call with blufiod's error, and this fails.
///
/// Returns `out` and the passed snapshot, if any: the caller confirms with it ([`confirm`]) once
/// the archive is in place, not before, so that blufiod never counts a backup that a failed
/// fsync or rename left nowhere.
async fn receive<W: io::Write + Send + 'static>(
    stream: &mut BackupStream,
    archive_bytes: u64,
    announced: &mut Manifest,
    local: Option<LocalArchive>,
    out: W,
    target: &str,
    progress: &Progress,
) -> Result<(W, Option<File>), Failure> {
    let pending = local.as_ref().is_some_and(|local| local.check_pending);
    let (sender, receiver) = mpsc::channel::<Vec<u8>>(4);
    // The writer may be slow (a pipe, a disk): a thread of its own, so that Ctrl-C is still heard.
    let writing = tokio::task::spawn_blocking(move || {
        lower_priority();
        write_and_verify(receiver, out, pending)
    });
    // From a descriptor, a thread of its own builds the archive's bytes in place of the stream.
    let (mut built, building) = match local {
        Some(local) => {
            let (chunks, built) = mpsc::channel::<Vec<u8>>(4);
            let manifest = announced.clone();
            let building = tokio::task::spawn_blocking(move || {
                lower_priority();
                local.build(&manifest, chunks)
            });
            (Some(built), Some(building))
        }
        None => (None, None),
    };
    let mut received = 0u64;
    // Whether the writer stopped before the stream ended: only a failure stops it, which then
    // explains a short archive; otherwise a short archive is blufiod's.
    let mut writer_stopped = false;
    // blufiod's SHA-256 of its snapshot, once its check passed (when it was pending).
    let mut checked = None;
    let streamed = async {
        loop {
            let data = match built.as_mut() {
                // The stream is heard while the archive is built: a failed check stops the
                // copy at once.
                Some(built) => tokio::select! {
                    data = built.recv() => match data {
                        Some(data) => data,
                        None => break,
                    },
                    next = stream.next(), if pending && checked.is_none() => {
                        checked = Some(checked_sha256(next?)?);
                        continue;
                    }
                },
                None => match stream.next().await? {
                    Some(Chunk::Data(data)) => data,
                    Some(_) => return Err(anyhow::anyhow!("blufiod announced its backup twice").into()),
                    None => break,
                },
            };
            received += data.len() as u64;
            if received > archive_bytes {
                return Err(anyhow::anyhow!("blufiod sent more than the {archive_bytes} bytes it announced").into());
            }
            progress.advance(data.len() as u64);
            // A closed channel means the writer stopped; its result says why.
            if sender.send(data).await.is_err() {
                writer_stopped = true;
                break;
            }
        }
        if pending && checked.is_none() && !writer_stopped {
            checked = Some(checked_sha256(stream.next().await?)?);
        }
        Ok::<_, Failure>(())
    }
    .await;
    // Stops the building thread at its next chunk if the writer stopped first.
    drop(built);
    drop(sender);
    let written = writing.await.context("the thread writing the archive failed")?;
    let built = match building {
        Some(building) => Some(building.await.context("the thread building the archive failed")?),
        None => None,
    };
    let tee_failure = |error| -> Failure {
        match error {
            TeeError::Write(error) => {
                anyhow::Error::new(error).context(format!("cannot write the archive to {target}"))
            }
            TeeError::Archive(error) => {
                anyhow::Error::new(error).context(format!("the archive written to {target} failed verification"))
            }
        }
        .into()
    };
    // A failed write (a full disk) is the cause whatever the stream did afterwards.
    if let Err(error @ TeeError::Write(_)) = written {
        return Err(tee_failure(error));
    }
    // blufiod's own error on the stream (a failed check, its stop) explains a snapshot that
    // ended early, and a truncated archive, better than the reading or the verification does.
    streamed?;
    // A builder the writer stopped fails for that reason, which the writer's result gives.
    let snapshot = match built {
        Some(Err(error)) if !writer_stopped => return Err(snapshot_failure(stream, error).await),
        Some(built) => built.ok(),
        None => None,
    };
    if received != archive_bytes && !writer_stopped {
        return Err(
            anyhow::anyhow!("blufiod's stream ended after {received} of the archive's {archive_bytes} bytes").into(),
        );
    }
    let (verified, written, out) = written.map_err(tee_failure)?;
    if written != archive_bytes || verified.manifest != *announced {
        return Err(anyhow::anyhow!(
            "the archive written to {target} ({written} bytes) differs from what blufiod announced \
             ({archive_bytes} bytes and its manifest)"
        )
        .into());
    }
    if let Some(database_sha256) = verified.database_sha256 {
        if checked.as_ref() != Some(&database_sha256) {
            return Err(anyhow::anyhow!(
                "the database written to {target} differs from the snapshot blufiod checked (SHA-256 {database_sha256}, \
                 blufiod's {}): the copy is damaged; back up again",
                checked.as_deref().unwrap_or("none")
            )
            .into());
        }
        if let Some(database) = announced
            .members
            .iter_mut()
            .find(|member| member.name == archive::DATABASE)
        {
            database.sha256 = database_sha256;
        }
    }
    Ok((out, snapshot))
}

/// Ends the backup call, so that blufiod lets go of its snapshot and of the one backup place
/// now rather than when this process exits: the yield lets the connection send the call's end
/// before anything blocking that follows.
async fn end_call(stream: BackupStream) {
    drop(stream);
    tokio::task::yield_now().await;
}

/// The SHA-256 in blufiod's `checked`, the next chunk after a `started` whose check was pending.
fn checked_sha256(next: Option<Chunk>) -> Result<String, Failure> {
    match next {
        Some(Chunk::Checked(checked)) => Ok(checked.database_sha256),
        Some(_) => Err(anyhow::anyhow!("blufiod sent its backup's bytes where its check's result belongs").into()),
        None => Err(anyhow::anyhow!("blufiod ended the backup before its snapshot's check did; back up again").into()),
    }
}

/// Writes `manifest`, whose database SHA-256 is now known, over the pending one at the start of
/// the archive `file` (the same length: only the hash's characters change).
fn fill_in_manifest(file: &File, manifest: &Manifest) -> io::Result<()> {
    let json = archive::manifest_json(manifest);
    let mut pending = manifest.clone();
    for member in &mut pending.members {
        if member.name == archive::DATABASE {
            archive::PENDING_SHA256.clone_into(&mut member.sha256);
        }
    }
    if archive::manifest_json(&pending).len() != json.len() {
        return Err(io::Error::other(
            "the filled-in manifest does not fit where the pending one is",
        ));
    }
    std::os::unix::fs::FileExt::write_all_at(file, &json, archive::MANIFEST_DATA_OFFSET)
}

/// The first chunk of a backup stream: the archive's size, its manifest, and the snapshot's
/// descriptor with the other members when blufiod passed it.
async fn started(stream: &mut BackupStream) -> Result<(u64, Manifest, Option<LocalArchive>), Failure> {
    let Some(Chunk::Started(started)) = stream.next().await? else {
        return Err(anyhow::anyhow!("blufiod's backup stream did not start with the archive's manifest").into());
    };
    let manifest: Manifest =
        serde_json::from_str(&started.manifest_json).context("blufiod's backup manifest does not parse")?;
    if !started.descriptor {
        return Ok((started.archive_bytes, manifest, None));
    }
    let retry = "run `blufioctl backup --stream` to have the archive streamed instead";
    let Some(snapshot) = stream.take_snapshot(started.descriptor_device, started.descriptor_inode) else {
        return Err(
            anyhow::anyhow!("blufiod said it passed the snapshot's descriptor, but none arrived; {retry}").into(),
        );
    };
    let metadata = snapshot
        .metadata()
        .context("cannot inspect the snapshot blufiod passed")?;
    let database = manifest.members.iter().find(|member| member.name == archive::DATABASE);
    if database.is_some_and(|member| (member.sha256 == archive::PENDING_SHA256) != started.check_pending) {
        return Err(
            anyhow::anyhow!("blufiod's manifest and its word on the snapshot's check disagree; {retry}").into(),
        );
    }
    if !metadata.is_file() || database.is_none_or(|member| member.bytes != metadata.len()) {
        let mismatch = anyhow::anyhow!(
            "the snapshot blufiod passed is not the file its manifest describes ({} bytes); {retry}",
            metadata.len()
        );
        return Err(daemons_error_or(stream, mismatch).await.into());
    }
    // Built here, the archive must come to the size blufiod announced: a manifest with fields
    // this blufioctl does not know would not.
    if archive::archive_size(&manifest) != started.archive_bytes {
        return Err(anyhow::anyhow!(
            "blufiod's manifest does not round-trip through this blufioctl (another version?); {retry}"
        )
        .into());
    }
    let members = started
        .members
        .into_iter()
        .map(|member| (member.name, member.data))
        .collect();
    Ok((
        started.archive_bytes,
        manifest,
        Some(LocalArchive {
            snapshot,
            members,
            check_pending: started.check_pending,
        }),
    ))
}

/// The archive's parts when blufiod passed its snapshot's descriptor.
struct LocalArchive {
    /// The checked snapshot, read-only.
    snapshot: File,
    /// The other members, whole: (name, bytes).
    members: Vec<(String, Vec<u8>)>,
    /// blufiod checks the snapshot while the archive is built: `checked` follows.
    check_pending: bool,
}

impl LocalArchive {
    /// Writes the archive as chunks to `chunks` (blocking); stops when the receiver is gone.
    /// Returns the snapshot, for the confirmation.
    fn build(self, manifest: &Manifest, chunks: mpsc::Sender<Vec<u8>>) -> Result<File, ArchiveError> {
        let Self { snapshot, members, .. } = self;
        let out = ChunkSender {
            chunks,
            buffer: Vec::with_capacity(CHUNK_BYTES),
        };
        let mut out = archive::write(out, manifest, |name| {
            if let Some(member) = manifest.members.iter().find(|member| member.name == name)
                && name == archive::DATABASE
            {
                // Positioned reads: the descriptor's offset is the confirmation (`confirm`).
                let reader = PositionedReader {
                    file: &snapshot,
                    at: 0,
                    size: member.bytes,
                };
                return Ok(Box::new(io::BufReader::with_capacity(CHUNK_BYTES, reader)) as Box<dyn Read>);
            }
            let (_, bytes) = members
                .iter()
                .find(|(member, _)| member == name)
                .ok_or_else(|| io::Error::other(format!("blufiod sent no member {name}")))?;
            Ok(Box::new(&bytes[..]) as Box<dyn Read>)
        })?;
        io::Write::flush(&mut out)?;
        Ok(snapshot)
    }
}

/// Tells blufiod that the archive built from `snapshot` is verified and in place, so that it
/// counts the backup as made: the descriptor's offset, which blufiod's copy shares, goes to the
/// end.
fn confirm(mut snapshot: &File) -> io::Result<()> {
    io::Seek::seek(&mut snapshot, io::SeekFrom::End(0)).map(drop)
}

/// Reads a file of `size` bytes from its start with `pread`; ending early is an error (blufiod
/// empties the snapshot at its deadline).
struct PositionedReader<'a> {
    file: &'a File,
    at: u64,
    size: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = std::os::unix::fs::FileExt::read_at(self.file, buffer, self.at)?;
        self.at += read as u64;
        if read == 0 && !buffer.is_empty() && self.at < self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the snapshot ended after {} of its {} bytes", self.at, self.size),
            ));
        }
        Ok(read)
    }
}

/// Sends what is written to it as chunks of [`CHUNK_BYTES`] (from a blocking thread).
struct ChunkSender {
    chunks: mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl io::Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let taken = bytes.len().min(CHUNK_BYTES - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK_BYTES {
            self.flush()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the archive's writer stopped"))
    }
}

/// Building from the passed snapshot failed: blufiod's own error on the call explains it best
/// when there is one ([`daemons_error_or`]).
async fn snapshot_failure(stream: &mut BackupStream, error: ArchiveError) -> Failure {
    daemons_error_or(stream, anyhow::Error::new(error))
        .await
        .context("cannot read the snapshot blufiod passed")
        .into()
}

/// blufiod's error on the call if it sends one within a second, else `fallback`. A passed
/// snapshot that is short or empty is most often one blufiod emptied on purpose (a failed check,
/// its deadline, its stop), and its own error says why.
async fn daemons_error_or(stream: &mut BackupStream, fallback: anyhow::Error) -> anyhow::Error {
    match tokio::time::timeout(std::time::Duration::from_secs(1), stream.next()).await {
        Ok(Err(daemon)) => anyhow::Error::new(daemon),
        _ => fallback,
    }
}

/// PATH exists and `--force` was not given.
fn exists_failure(path: &Path) -> Failure {
    with_hint(
        anyhow::anyhow!("{} already exists; refusing to overwrite it", path.display()).into(),
        Some("pass --force to replace it once the new archive is verified, or choose another PATH"),
    )
}

/// `backup -`: the archive to stdout, verified as it passes through.
async fn backup_to_stdout(context: &Context<'_>, contents: Contents, started_at: Instant) -> Result<Outcome, Failure> {
    let work = async {
        let mut client = context.connect().await?;
        // Streamed: a pipe may drain slower than blufiod's deadline for a passed snapshot, and
        // the stream's stall limit counts progress instead.
        let mut stream = client
            .backup(contents.without_config, contents.include_tls, false)
            .await?;
        let (archive_bytes, mut announced, local) = started(&mut stream).await?;
        let out = BufWriter::with_capacity(CHUNK_BYTES, io::stdout());
        let silent = Progress::new("receiving", archive_bytes, false);
        let (out, _) = receive(
            &mut stream,
            archive_bytes,
            &mut announced,
            local,
            out,
            "stdout",
            &silent,
        )
        .await?;
        end_call(stream).await;
        out.into_inner()
            .map_err(|error| anyhow::Error::new(error.into_error()).context("cannot write the archive to stdout"))?;
        Ok::<_, Failure>(Written {
            bytes: archive_bytes,
            manifest: announced,
        })
    };
    let written = tokio::select! {
        written = work => written?,
        () = ctrl_c() => {
            return Err(interrupted(anyhow::anyhow!("interrupted: the archive on stdout is incomplete")));
        }
    };
    let view = BackupWritten {
        archive: Archive {
            path: None,
            bytes: written.bytes,
            manifest: &written.manifest,
        },
        duration_seconds: started_at.elapsed().as_secs_f64(),
    };
    context.printer.human_on_stderr(&view);
    Ok(Outcome::Success)
}

/// The nice value of the threads that build, write, hash and verify an archive: the same as
/// blufiod's own bulk work (its snapshot, check and hash), so that on a small machine the
/// daemon's requests and turns, at nice 0, preempt a backup or a restore's verification rather
/// than wait behind it; on an idle machine it costs nothing. (Measured under load in
/// docs/benchmarks.md: faster backups and a lower gateway p99 at once.)
const BULK_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BULK_NICE`] (on Linux a nice value is per
/// thread). Failing to is harmless: the work then runs at the usual priority.
fn lower_priority() {
    let thread = nix::unistd::gettid().as_raw();
    #[allow(unsafe_code)] // reason: setpriority(2) has no safe wrapper in nix or std
    // SAFETY: setpriority only reads its integer arguments.
    unsafe {
        nix::libc::setpriority(
            nix::libc::PRIO_PROCESS,
            nix::libc::id_t::try_from(thread).unwrap_or_default(),
            BULK_NICE,
        );
    }
}

/// Why writing an archive on its thread failed.
enum TeeError {
    Write(io::Error),
    Archive(ArchiveError),
}

/// Writes the chunks from `receiver` to `out` while another thread verifies the same chunks
/// (hashing runs beside the writing, not after it); returns the manifest, the bytes written and
/// `out`, flushed. A failed write stops both; so does a verification failure.
/// With `pending`, the manifest lists [`archive::PENDING_SHA256`] for the database, whose
/// SHA-256 as written is returned for the caller to compare with the daemon's.
fn write_and_verify<W: io::Write>(
    mut receiver: mpsc::Receiver<Vec<u8>>,
    mut out: W,
    pending: bool,
) -> Result<(Verified, u64, W), TeeError> {
    let (to_verifier, chunks) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(4);
    let verifier = std::thread::Builder::new()
        .name("blufioctl-verify".to_owned())
        .spawn(move || {
            lower_priority();
            let mut reader = ChunkReader {
                chunks,
                current: Arc::new(Vec::new()),
                at: 0,
            };
            // Read to its end, so that everything written is verified, end blocks included.
            if pending {
                let verified = archive::verify_pending(&mut reader, archive::DATABASE, |_, data| {
                    io::copy(data, &mut io::sink())
                });
                io::copy(&mut reader, &mut io::sink())?;
                verified.map(|(manifest, database_sha256)| Verified {
                    manifest,
                    database_sha256: Some(database_sha256),
                })
            } else {
                verify_reader(&mut reader).map(|manifest| Verified {
                    manifest,
                    database_sha256: None,
                })
            }
        })
        .map_err(TeeError::Write)?;
    let mut written = 0u64;
    let mut write_error = None;
    while let Some(chunk) = receiver.blocking_recv() {
        let chunk = Arc::new(chunk);
        if let Err(error) = out.write_all(&chunk) {
            write_error = Some(error);
            break;
        }
        written += chunk.len() as u64;
        // A closed channel means the verifier stopped early: its result says why.
        if to_verifier.send(chunk).is_err() {
            break;
        }
    }
    // Stops the sender at its next chunk, and ends the verifier's input.
    receiver.close();
    drop(to_verifier);
    let flushed = out.flush();
    let verified = verifier
        .join()
        .map_err(|_| TeeError::Write(io::Error::other("the verifying thread panicked")))?;
    if let Some(error) = write_error {
        return Err(TeeError::Write(error));
    }
    let manifest = verified.map_err(TeeError::Archive)?;
    flushed.map_err(TeeError::Write)?;
    Ok((manifest, written, out))
}

/// What the verifying thread found in an archive as it was written.
#[derive(Debug)]
struct Verified {
    manifest: Manifest,
    /// The database's SHA-256 as written, when the manifest's was pending.
    database_sha256: Option<String>,
}

/// Reads the chunks of a channel in order.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<Arc<Vec<u8>>>,
    current: Arc<Vec<u8>>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(next) => {
                    self.current = next;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let read = buffer.len().min(self.current.len() - self.at);
        buffer[..read].copy_from_slice(&self.current[self.at..self.at + read]);
        self.at += read;
        Ok(read)
    }
}

/// Verifies the archive in `file` on a thread of its own, with a progress bar when `draw`, and
/// returns its manifest and the bytes read; `cancel` stops it at its next read.
async fn verify_file(
    file: File,
    total: u64,
    label: &'static str,
    draw: bool,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<(Manifest, u64)> {
    let (_, verified) = verify_file_returning(file, total, label, draw, cancel).await?;
    Ok(verified)
}

/// [`verify_file`], handing the file back.
async fn verify_file_returning(
    file: File,
    total: u64,
    label: &'static str,
    draw: bool,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<(File, (Manifest, u64))> {
    let progress = Progress::new(label, total, draw);
    let (file, verified) = tokio::task::spawn_blocking(move || {
        lower_priority();
        let mut counting = Counting {
            inner: io::BufReader::with_capacity(CHUNK_BYTES, file),
            progress: &progress,
            cancel: &cancel,
            read: 0,
        };
        let verified = verify_reader(&mut counting);
        let read = counting.read;
        (counting.inner.into_inner(), verified.map(|manifest| (manifest, read)))
    })
    .await
    .context("the verifying thread failed")?;
    Ok((file, verified?))
}

/// Verifies the archive `reader` holds and reads it to its end (the end-of-archive blocks
/// included), so the bytes read are the archive's size.
fn verify_reader(reader: &mut impl Read) -> Result<Manifest, ArchiveError> {
    let manifest = archive::verify(&mut *reader, |_, data| io::copy(data, &mut io::sink()))?;
    io::copy(reader, &mut io::sink())?;
    Ok(manifest)
}

/// Counts what passes, for the progress bar and the size check, and stops when cancelled.
struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
    cancel: &'a AtomicBool,
    read: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        let read = self.inner.read(buffer)?;
        self.read += read as u64;
        self.progress.advance(read as u64);
        Ok(read)
    }
}

/// `backup --verify PATH`: checks an archive without the daemon.
async fn verify_command(context: &Context<'_>, path: &Path, output: JsonArgs) -> Result<Outcome, Failure> {
    let (shown, verified) = if path.as_os_str() == STDIO {
        let verified = tokio::task::spawn_blocking(|| {
            let mut counting = Counting {
                inner: io::stdin().lock(),
                progress: &Progress::new("verifying", 0, false),
                cancel: &AtomicBool::new(false),
                read: 0,
            };
            verify_reader(&mut counting).map(|manifest| (manifest, counting.read))
        })
        .await
        .context("the verifying thread failed")?
        .context("the archive on stdin failed verification")?;
        (None, verified)
    } else {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let total = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        let draw = io::stderr().is_terminal();
        let verified = verify_file(file, total, "verifying", draw, Arc::new(AtomicBool::new(false)))
            .await
            .map_err(|error| error.context(format!("{} failed verification", path.display())))?;
        (Some(path.display().to_string()), verified)
    };
    let (manifest, bytes) = verified;
    let view = BackupVerified(Archive {
        path: shown.as_deref(),
        bytes,
        manifest: &manifest,
    });
    context.printer.emit(&view, output.json)?;
    Ok(Outcome::Success)
}

/// How far a restore got, for the message when Ctrl-C stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Verifying the file here; nothing was sent.
    Checking,
    /// Sending; the daemon has part of the archive at most, which it refuses.
    Sending,
    /// The whole archive was handed to the connection: the daemon goes on without us.
    Sent,
}

/// Runs `restore PATH`.
pub async fn restore(context: &Context<'_>, args: RestoreArgs) -> Result<Outcome, Failure> {
    let stage = std::cell::Cell::new(Stage::Checking);
    let cancel = Arc::new(AtomicBool::new(false));
    let work = restore_file(context, &args, &stage, cancel.clone());
    let (response, manifest) = tokio::select! {
        restored = work => restored?,
        () = ctrl_c() => {
            cancel.store(true, Ordering::Relaxed);
            let what = match stage.get() {
                Stage::Checking => "nothing was sent to blufiod",
                Stage::Sending => "the archive was not sent whole, so blufiod changes nothing",
                Stage::Sent => {
                    "blufiod has the archive and goes on with the restore; 'blufioctl status' shows its phase"
                }
            };
            return Err(interrupted(anyhow::anyhow!("interrupted: {what}")));
        }
    };
    // The daemon's manifest is the archive it restored; the one checked here describes the same.
    let manifest = serde_json::from_str::<Manifest>(&response.manifest_json).unwrap_or(manifest);
    let shown = std::fs::canonicalize(&args.path).unwrap_or_else(|_| args.path.clone());
    let view = Restored {
        path: &shown.display().to_string(),
        response: &response,
        manifest: &manifest,
    };
    context.printer.emit(&view, args.output.json)?;
    Ok(Outcome::Success)
}

/// Verifies the archive, sends it, and follows the daemon's phases to its result.
async fn restore_file(
    context: &Context<'_>,
    args: &RestoreArgs,
    stage: &std::cell::Cell<Stage>,
    cancel: Arc<AtomicBool>,
) -> Result<(RestoreResponse, Manifest), Failure> {
    let path = &args.path;
    let draw = io::stderr().is_terminal();
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let total = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let (file, (manifest, _)) = verify_file_returning(file, total, "checking", draw, cancel)
        .await
        .map_err(|error| error.context(format!("{} failed verification; nothing was sent", path.display())))?;

    let mut client = context.connect().await?;
    let (sender, receiver) = mpsc::channel::<RestoreChunk>(2);
    let start = RestoreChunk {
        chunk: Some(restore_chunk::Chunk::Start(RestoreStart {
            archive_bytes: total,
            without_secrets: args.without_secrets,
            restore_config: args.restore_config,
            restore_tls: args.restore_tls,
        })),
    };
    // The channel has room for it, and its receiver is alive.
    let _ = sender.send(start).await;
    stage.set(Stage::Sending);
    let progress = Arc::new(Progress::new("sending", total, draw));
    let mut sending = Sending {
        producer: tokio::spawn(send_archive(
            tokio::fs::File::from_std(file),
            total,
            sender,
            progress.clone(),
        )),
        progress,
    };
    let mut stream = client
        .restore(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .map_err(restore_failure)?;
    let mut sent = false;
    loop {
        tokio::select! {
            result = &mut sending.producer, if !sent => {
                sent = true;
                let sent_bytes = result
                    .context("the sending task failed")?
                    .with_context(|| format!("cannot read {}", path.display()))?;
                // Cut short: blufiod ended the call, and its status, next, says why.
                let Some(bytes) = sent_bytes else { continue };
                if bytes != total {
                    return Err(anyhow::anyhow!(
                        "{} shrank while it was sent ({bytes} of {total} bytes); blufiod refuses what it got",
                        path.display()
                    )
                    .into());
                }
                sending.progress.finish();
                stage.set(Stage::Sent);
            }
            next = stream.next() => match next.map_err(restore_failure)? {
                Some(RestoreEvent::Phase(phase)) => {
                    sending.progress.note(&format!("restore: {}", printable(&phase, false)));
                }
                Some(RestoreEvent::Done(response)) => return Ok((response, manifest)),
                None => {
                    return Err(anyhow::anyhow!(
                        "blufiod ended the restore without a result; 'blufioctl status' shows whether one runs"
                    )
                    .into());
                }
            },
        }
    }
}

/// The task that sends the archive, and its progress bar; dropped, it stops the task (a
/// partial archive, which the daemon refuses) and clears the bar.
struct Sending {
    producer: tokio::task::JoinHandle<io::Result<Option<u64>>>,
    progress: Arc<Progress>,
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.producer.abort();
        self.progress.finish();
    }
}

/// Sends the first `total` bytes of `file`, the archive, as `data` chunks of [`CHUNK_BYTES`];
/// returns the bytes sent, or none when the call ended before all were sent (its status says why).
async fn send_archive(
    mut file: tokio::fs::File,
    total: u64,
    sender: mpsc::Sender<RestoreChunk>,
    progress: Arc<Progress>,
) -> io::Result<Option<u64>> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    file.seek(io::SeekFrom::Start(0)).await?;
    // Never more than was verified, should the file have grown since.
    let mut file = file.take(total);
    let mut sent = 0u64;
    loop {
        let mut data = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        while filled < CHUNK_BYTES {
            let read = file.read(&mut data[filled..]).await?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            return Ok(Some(sent));
        }
        data.truncate(filled);
        let chunk = RestoreChunk {
            chunk: Some(restore_chunk::Chunk::Data(data)),
        };
        if sender.send(chunk).await.is_err() {
            return Ok(None);
        }
        sent += filled as u64;
        progress.advance(filled as u64);
    }
}

/// An archive as `backup` wrote it or `backup --verify` checked it.
pub struct Archive<'a> {
    /// Its file; none for stdout or stdin.
    pub path: Option<&'a str>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its manifest, verified against every member.
    pub manifest: &'a Manifest,
}

impl Archive<'_> {
    fn json(&self) -> ArchiveJson<'_> {
        let manifest = self.manifest;
        ArchiveJson {
            path: self.path,
            bytes: self.bytes,
            created_at: manifest.created_at,
            blufio_version: &manifest.blufio_version,
            schema_version: manifest.schema_version,
            hostname: &manifest.daemon.hostname,
            members: manifest
                .members
                .iter()
                .map(|member| MemberJson {
                    name: &member.name,
                    bytes: member.bytes,
                    sha256: &member.sha256,
                })
                .collect(),
            vault: manifest.vault.as_ref().map(|vault| VaultJson {
                sealed_with: &vault.sealed_with,
                entries: vault.entries,
            }),
        }
    }

    /// The `key: value` rows that `backup` and `backup --verify` share.
    fn rows(&self, style: Style) -> Vec<(String, Cell)> {
        let manifest = self.manifest;
        let mut size = humanize_bytes(self.bytes);
        if self.bytes >= 1024 {
            let _ = write!(size, " ({} bytes)", self.bytes);
        }
        let mut rows = vec![
            (
                "created".to_owned(),
                // The archive says what it wants here: never let it drive the terminal.
                Cell::plain(&printable(
                    &format!(
                        "{} on {} by blufiod {}",
                        format_utc(manifest.created_at),
                        manifest.daemon.hostname,
                        manifest.blufio_version
                    ),
                    false,
                )),
            ),
            ("schema".to_owned(), Cell::plain(&manifest.schema_version.to_string())),
            ("size".to_owned(), Cell::plain(&size)),
        ];
        let vault = match &manifest.vault {
            Some(vault) => Cell::plain(&format!(
                "{} {}, sealed with a {} key",
                vault.entries,
                if vault.entries == 1 { "secret" } else { "secrets" },
                vault.sealed_with
            )),
            None => Cell::painted(style, Paint::Dim, "none"),
        };
        rows.push(("vault".to_owned(), vault));
        rows.push(("members".to_owned(), Cell::plain("")));
        for member in &manifest.members {
            rows.push((
                format!("  {}", printable(&member.name, false)),
                Cell::plain(&format!("{}, sha256 {}", humanize_bytes(member.bytes), member.sha256)),
            ));
        }
        rows
    }
}

/// A backup just written by `backup`, to a file or to stdout.
pub struct BackupWritten<'a> {
    pub archive: Archive<'a>,
    /// From the start of the command to the archive in place.
    pub duration_seconds: f64,
}

impl Render for BackupWritten<'_> {
    /// `backup --json`.
    fn json(&self) -> impl Serialize {
        BackupJson {
            archive: self.archive.json(),
            duration_seconds: self.duration_seconds,
        }
    }

    /// `backup`: where the archive went, what it holds, and what else a restore will need.
    fn human(&self, style: Style) -> Human {
        let archive = &self.archive;
        let mut stdout = match archive.path {
            Some(path) => format!("wrote {}\n", style.paint(Paint::Bold, &printable(path, false))),
            None => "wrote the backup to stdout\n".to_owned(),
        };
        let mut rows = archive.rows(style);
        rows.push(("took".to_owned(), Cell::plain(&humanize_seconds(self.duration_seconds))));
        stdout.push_str(&render_pairs(style, &rows));
        let manifest = archive.manifest;
        if manifest.vault.as_ref().is_some_and(|vault| vault.entries > 0) {
            let note = "its secrets open only with this vault's key, which no archive holds: \
                        'blufioctl vault status' shows where the key is; keep a copy of it apart from the backups";
            let _ = writeln!(stdout, "{}", style.paint(Paint::Dim, note));
        }
        if manifest.members.iter().any(|member| member.name == archive::TLS_KEY) {
            let note = "it holds the gateway's TLS private key: keep it as private as the key itself";
            let _ = writeln!(stdout, "{}", style.paint(Paint::Dim, note));
        }
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// An archive that `backup --verify` found sound.
pub struct BackupVerified<'a>(pub Archive<'a>);

impl Render for BackupVerified<'_> {
    /// `backup --verify --json`.
    fn json(&self) -> impl Serialize {
        VerifiedJson {
            archive: self.0.json(),
            verified: true,
        }
    }

    /// `backup --verify`: the verdict, then what the archive holds.
    fn human(&self, style: Style) -> Human {
        let archive = &self.0;
        let name = archive
            .path
            .map_or_else(|| "stdin".to_owned(), |path| printable(path, false));
        let mut stdout = format!(
            "{name}: {}, every member matches its manifest\n",
            style.paint(Paint::Bold, "verified")
        );
        stdout.push_str(&render_pairs(style, &archive.rows(style)));
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// The daemon's answer to `restore`, with the archive it restored.
pub struct Restored<'a> {
    /// The file restored from.
    pub path: &'a str,
    pub response: &'a RestoreResponse,
    pub manifest: &'a Manifest,
}

impl Render for Restored<'_> {
    /// `restore --json`.
    fn json(&self) -> impl Serialize {
        let Restored {
            path,
            response,
            manifest,
        } = *self;
        RestoredJson {
            path,
            archive: RestoredArchiveJson {
                created_at: manifest.created_at,
                hostname: &manifest.daemon.hostname,
                blufio_version: &manifest.blufio_version,
                schema_version: manifest.schema_version,
            },
            safety_copy: non_empty(&response.safety_copy),
            schema_version_from: response.schema_version_from,
            schema_version_now: response.schema_version_now,
            secrets_restored: response.secrets_restored,
            config_restored: response.config_restored,
            tls_restored: response.tls_restored,
            turns_finished: response.turns_finished,
        }
    }

    /// `restore`: what came back, where the replaced database is, and a warning for secrets that
    /// did not.
    fn human(&self, style: Style) -> Human {
        let Restored {
            path,
            response,
            manifest,
        } = *self;
        let mut stdout = format!(
            "{} {}\n",
            style.paint(Paint::Bold, "restored"),
            printable(
                &format!(
                    "{path}: the backup of {} from {} (blufiod {})",
                    manifest.daemon.hostname,
                    format_utc(manifest.created_at),
                    manifest.blufio_version
                ),
                false
            )
        );
        let yes_no = |restored: bool| {
            if restored {
                Cell::plain("restored")
            } else {
                Cell::painted(style, Paint::Dim, "not restored")
            }
        };
        let schema = if response.schema_version_now == response.schema_version_from {
            response.schema_version_now.to_string()
        } else {
            format!(
                "{}, migrated to {}",
                response.schema_version_from, response.schema_version_now
            )
        };
        let mut rows = vec![
            ("schema".to_owned(), Cell::plain(&schema)),
            ("secrets".to_owned(), yes_no(response.secrets_restored)),
            ("config".to_owned(), yes_no(response.config_restored)),
            ("tls".to_owned(), yes_no(response.tls_restored)),
        ];
        if response.turns_finished > 0 {
            let turns = if response.turns_finished == 1 { "turn" } else { "turns" };
            rows.push((
                "waited for".to_owned(),
                Cell::plain(&format!("{} running {turns} to finish", response.turns_finished)),
            ));
        }
        let mut safety_copy =
            non_empty(&response.safety_copy).map_or_else(|| Cell::painted(style, Paint::Dim, "none"), Cell::plain);
        safety_copy.push(style, Paint::Dim, " (the database it replaced)");
        rows.push(("safety copy".to_owned(), safety_copy));
        stdout.push_str(&render_pairs(style, &rows));
        let mut human = Human {
            stdout,
            ..Human::default()
        };
        if !response.secrets_restored {
            human.warnings.push(
                "the archive's secrets were not restored: store each one again with \
                 'blufioctl config set-secret NAME'"
                    .to_owned(),
            );
        }
        human
    }
}

#[derive(Debug, Serialize)]
struct ArchiveJson<'a> {
    path: Option<&'a str>,
    bytes: u64,
    created_at: i64,
    blufio_version: &'a str,
    schema_version: i64,
    hostname: &'a str,
    members: Vec<MemberJson<'a>>,
    vault: Option<VaultJson<'a>>,
}

#[derive(Debug, Serialize)]
struct MemberJson<'a> {
    name: &'a str,
    bytes: u64,
    sha256: &'a str,
}

#[derive(Debug, Serialize)]
struct VaultJson<'a> {
    sealed_with: &'a str,
    entries: u64,
}

#[derive(Debug, Serialize)]
struct BackupJson<'a> {
    #[serde(flatten)]
    archive: ArchiveJson<'a>,
    duration_seconds: f64,
}

#[derive(Debug, Serialize)]
struct VerifiedJson<'a> {
    #[serde(flatten)]
    archive: ArchiveJson<'a>,
    verified: bool,
}

#[derive(Debug, Serialize)]
struct RestoredJson<'a> {
    path: &'a str,
    archive: RestoredArchiveJson<'a>,
    safety_copy: Option<&'a str>,
    schema_version_from: i64,
    schema_version_now: i64,
    secrets_restored: bool,
    config_restored: bool,
    tls_restored: bool,
    turns_finished: u32,
}

#[derive(Debug, Serialize)]
struct RestoredArchiveJson<'a> {
    created_at: i64,
    hostname: &'a str,
    blufio_version: &'a str,
    schema_version: i64,
}

#[cfg(test)]
mod tests {
    use blufio_proto::backup::{DaemonIdentity, Member, VaultSummary};
    use serde_json::json;

    use super::*;
    use crate::output::testing::{ALIGNED, NOW};

    const DATABASE: &[u8] = b"SQLite format 3\0 and its pages";
    const CONFIG: &[u8] = b"[log]\nlevel = \"info\"\n";

    fn sample_manifest() -> Manifest {
        let member = |name: &str, data: &[u8]| {
            let (sha256, bytes) = archive::sha256_of(data).expect("hashes");
            Member {
                name: name.to_owned(),
                bytes,
                sha256,
            }
        };
        Manifest {
            format: archive::FORMAT.to_owned(),
            format_version: archive::FORMAT_VERSION,
            blufio_version: "0.1.0".to_owned(),
            schema_version: 4,
            created_at: NOW,
            daemon: DaemonIdentity {
                hostname: "pi".to_owned(),
                database_path: "/var/lib/blufio/blufio.db".to_owned(),
            },
            members: vec![member(archive::DATABASE, DATABASE), member(archive::CONFIG, CONFIG)],
            vault: Some(VaultSummary {
                sealed_with: "generated".to_owned(),
                entries: 2,
            }),
        }
    }

    fn sample_archive() -> (Manifest, Vec<u8>) {
        let manifest = sample_manifest();
        let bytes = archive::write(Vec::new(), &manifest, |name| {
            let data: &'static [u8] = if name == archive::DATABASE { DATABASE } else { CONFIG };
            Ok(Box::new(data) as Box<dyn Read>)
        })
        .expect("writes");
        (manifest, bytes)
    }

    #[test]
    fn a_snapshot_that_ends_early_is_an_error_not_a_short_member() {
        let mut file = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut file, &[1u8; 10]).unwrap();
        let mut whole = PositionedReader {
            file: &file,
            at: 0,
            size: 10,
        };
        let mut read = Vec::new();
        whole.read_to_end(&mut read).unwrap();
        assert_eq!(read.len(), 10);
        let mut emptied = PositionedReader {
            file: &file,
            at: 0,
            size: 20,
        };
        let error = emptied.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(error.to_string().contains("after 10 of its 20 bytes"), "{error}");
    }

    #[test]
    fn the_default_path_is_a_utc_stamp_here_or_in_a_directory() {
        assert_eq!(
            target_path(None, NOW + 7),
            PathBuf::from("blufio-backup-20261128T080007Z.tar")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            target_path(Some(dir.path().to_path_buf()), NOW),
            dir.path().join("blufio-backup-20261128T080000Z.tar")
        );
        let file = dir.path().join("mine.tar");
        assert_eq!(target_path(Some(file.clone()), NOW), file);
        assert_eq!(parent_dir(Path::new("x.tar")), PathBuf::from("."));
        assert_eq!(parent_dir(&file), dir.path());
    }

    /// `archive` with one bit flipped in the database member's bytes.
    fn with_a_bit_flipped(archive: &[u8]) -> Vec<u8> {
        let mut flipped = archive.to_vec();
        let at = flipped
            .windows(DATABASE.len())
            .position(|window| window == DATABASE)
            .expect("the database is in the archive");
        flipped[at + 3] ^= 0x01;
        flipped
    }

    /// A channel holding `bytes` in chunks of 700, closed behind them.
    fn chunks_of(bytes: &[u8]) -> mpsc::Receiver<Vec<u8>> {
        let (sender, receiver) = mpsc::channel(bytes.len().div_ceil(700).max(1));
        for chunk in bytes.chunks(700) {
            sender.try_send(chunk.to_vec()).expect("room");
        }
        receiver
    }

    #[test]
    fn verifying_reads_the_whole_archive_and_names_the_damage() {
        let (manifest, bytes) = sample_archive();
        let mut reader = &bytes[..];
        assert_eq!(verify_reader(&mut reader).expect("verifies"), manifest);
        assert!(reader.is_empty(), "the end-of-archive blocks are read too");

        let flipped = with_a_bit_flipped(&bytes);
        let error = verify_reader(&mut &flipped[..]).unwrap_err().to_string();
        assert!(error.contains("SHA-256 differs"), "{error}");
        let error = verify_reader(&mut &bytes[..bytes.len() / 2]).unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
    }

    #[test]
    fn the_writer_passes_every_byte_on_verified_and_stops_when_a_write_fails() {
        let (manifest, bytes) = sample_archive();
        let Ok((verified, written, out)) = write_and_verify(chunks_of(&bytes), Vec::new(), false) else {
            panic!("a whole archive verifies");
        };
        assert_eq!(verified.manifest, manifest);
        assert_eq!(verified.database_sha256, None);
        assert_eq!(out, bytes);
        assert_eq!(written, bytes.len() as u64);

        // A damaged archive is refused.
        assert!(matches!(
            write_and_verify(chunks_of(&with_a_bit_flipped(&bytes)), Vec::new(), false),
            Err(TeeError::Archive(ArchiveError::Mismatch { .. }))
        ));
        // An archive whose database hash is pending is refused as it is, and verified apart when
        // the caller says it is pending.
        let mut pending = manifest.clone();
        let database = pending
            .members
            .iter_mut()
            .find(|member| member.name == archive::DATABASE)
            .unwrap();
        let real = std::mem::replace(&mut database.sha256, archive::PENDING_SHA256.to_owned());
        let pending_bytes = {
            let mut bytes = bytes.clone();
            let json = archive::manifest_json(&pending);
            let at = usize::try_from(archive::MANIFEST_DATA_OFFSET).unwrap();
            bytes[at..at + json.len()].copy_from_slice(&json);
            bytes
        };
        assert!(matches!(
            write_and_verify(chunks_of(&pending_bytes), Vec::new(), false),
            Err(TeeError::Archive(ArchiveError::Mismatch { .. }))
        ));
        let Ok((verified, _, out)) = write_and_verify(chunks_of(&pending_bytes), Vec::new(), true) else {
            panic!("a pending archive verifies as one");
        };
        assert_eq!(verified.database_sha256.as_deref(), Some(real.as_str()));
        assert_eq!(verified.manifest, pending);
        // The filled-in manifest makes it the archive written whole.
        let mut file = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut file, &out).unwrap();
        fill_in_manifest(&file, &manifest).unwrap();
        let mut filled = Vec::new();
        io::Seek::rewind(&mut file).unwrap();
        file.read_to_end(&mut filled).unwrap();
        assert_eq!(filled, bytes);

        struct Broken;
        impl io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let Err(TeeError::Write(error)) = write_and_verify(chunks_of(&bytes), Broken, false) else {
            panic!("a failed write is the error");
        };
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn bulk_threads_yield_to_the_daemon_and_leave_the_caller_as_it_was() {
        fn own_nice() -> i32 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            after_name.split_whitespace().nth(16).unwrap().parse().unwrap()
        }
        let here = own_nice();
        let lowered = std::thread::spawn(|| {
            lower_priority();
            own_nice()
        })
        .join()
        .unwrap();
        assert!(
            lowered >= BULK_NICE && lowered >= here,
            "nice {lowered} (the caller's is {here})"
        );
        assert_eq!(own_nice(), here);
    }

    #[test]
    fn backup_lines_and_json() {
        let manifest = sample_manifest();
        let view = BackupWritten {
            archive: Archive {
                path: Some("/home/me/b.tar"),
                bytes: 3072,
                manifest: &manifest,
            },
            duration_seconds: 1.25,
        };
        let database_sha = &manifest.members[0].sha256;
        let config_sha = &manifest.members[1].sha256;
        let human = view.human(ALIGNED);
        let expected = format!(
            "\
wrote /home/me/b.tar
created:         2026-11-28 08:00 UTC on pi by blufiod 0.1.0
schema:          4
size:            3.0 KiB (3072 bytes)
vault:           2 secrets, sealed with a generated key
members:
  blufio.db:     30 B, sha256 {database_sha}
  blufiod.toml:  21 B, sha256 {config_sha}
took:            1.2s
its secrets open only with this vault's key, which no archive holds: 'blufioctl vault status' shows where the \
             key is; keep a copy of it apart from the backups
"
        );
        assert_eq!(human.stdout, expected);
        assert!(human.warnings.is_empty());
        assert_eq!(
            serde_json::to_value(view.json()).expect("serializes"),
            json!({"path": "/home/me/b.tar", "bytes": 3072, "created_at": NOW, "blufio_version": "0.1.0",
                   "schema_version": 4, "hostname": "pi",
                   "members": [{"name": "blufio.db", "bytes": 30, "sha256": database_sha},
                               {"name": "blufiod.toml", "bytes": 21, "sha256": config_sha}],
                   "vault": {"sealed_with": "generated", "entries": 2},
                   "duration_seconds": 1.25})
        );

        let bare = Manifest {
            vault: None,
            members: vec![Member {
                name: archive::TLS_KEY.to_owned(),
                bytes: 10,
                sha256: "ab".repeat(32),
            }],
            ..sample_manifest()
        };
        let view = BackupWritten {
            archive: Archive {
                path: None,
                bytes: 900,
                manifest: &bare,
            },
            duration_seconds: 0.04,
        };
        let stdout = view.human(Style::PLAIN).stdout;
        assert!(stdout.starts_with("wrote the backup to stdout\n"), "{stdout}");
        assert!(stdout.contains("\nsize: 900 B\nvault: none\n"), "{stdout}");
        assert!(stdout.ends_with("it holds the gateway's TLS private key: keep it as private as the key itself\n"));
        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(value["path"], serde_json::Value::Null);
        assert_eq!(value["vault"], serde_json::Value::Null);
    }

    #[test]
    fn verified_lines_and_json() {
        let manifest = sample_manifest();
        let view = BackupVerified(Archive {
            path: Some("b.tar"),
            bytes: 3072,
            manifest: &manifest,
        });
        let stdout = view.human(Style::PLAIN).stdout;
        assert!(
            stdout.starts_with("b.tar: verified, every member matches its manifest\ncreated: 2026-11-28 08:00 UTC"),
            "{stdout}"
        );
        assert!(!stdout.contains("took"), "{stdout}");
        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(value["verified"], true);
        assert_eq!(value["path"], "b.tar");
        assert_eq!(value["members"][0]["name"], "blufio.db");
        assert!(value.get("duration_seconds").is_none());
    }

    #[test]
    fn restored_lines_json_and_the_warning_for_secrets() {
        let manifest = sample_manifest();
        let response = RestoreResponse {
            manifest_json: String::new(),
            safety_copy: "/var/lib/blufio/blufio.db.before-restore".into(),
            schema_version_from: 4,
            schema_version_now: 5,
            secrets_restored: false,
            config_restored: true,
            tls_restored: false,
            turns_finished: 1,
        };
        let view = Restored {
            path: "/home/me/b.tar",
            response: &response,
            manifest: &manifest,
        };
        let human = view.human(ALIGNED);
        let expected = "\
restored /home/me/b.tar: the backup of pi from 2026-11-28 08:00 UTC (blufiod 0.1.0)
schema:       4, migrated to 5
secrets:      not restored
config:       restored
tls:          not restored
waited for:   1 running turn to finish
safety copy:  /var/lib/blufio/blufio.db.before-restore (the database it replaced)
";
        assert_eq!(human.stdout, expected);
        assert_eq!(
            human.warnings,
            ["the archive's secrets were not restored: store each one again with 'blufioctl config set-secret NAME'"]
        );
        assert_eq!(
            serde_json::to_value(view.json()).expect("serializes"),
            json!({"path": "/home/me/b.tar",
                   "archive": {"created_at": NOW, "hostname": "pi", "blufio_version": "0.1.0", "schema_version": 4},
                   "safety_copy": "/var/lib/blufio/blufio.db.before-restore",
                   "schema_version_from": 4, "schema_version_now": 5, "secrets_restored": false,
                   "config_restored": true, "tls_restored": false, "turns_finished": 1})
        );

        let clean = RestoreResponse {
            schema_version_from: 5,
            secrets_restored: true,
            turns_finished: 0,
            ..response
        };
        let view = Restored {
            path: "b.tar",
            response: &clean,
            manifest: &manifest,
        };
        let human = view.human(Style::PLAIN);
        assert!(human.warnings.is_empty());
        assert!(
            human.stdout.contains("\nschema: 5\nsecrets: restored\n"),
            "{}",
            human.stdout
        );
        assert!(!human.stdout.contains("waited"), "{}", human.stdout);
    }
}
