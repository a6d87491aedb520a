//! The file a backup archive is written to: with direct I/O while the file system takes it, so
//! that a gigabyte goes from one small reused buffer to the disk without being copied into the
//! page cache (that copy, into freshly allocated pages, was half of blufioctl's CPU in a backup:
//! docs/benchmarks.md), and buffered otherwise, its writeback started as it goes.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Alignment of direct writes (buffer address, length and file offset): a multiple of every
/// common logical block size (512 and 4096 bytes). A device that needs more refuses the first
/// write, and the rest is written buffered.
const ALIGN: usize = 4096;
/// Bytes staged per direct write.
const STAGED: usize = 256 * 1024;
/// Buffered: bytes between two starts of writeback.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// An archive's file, written from its start. Call [`ArchiveFile::into_file`] once the archive
/// is written (after `flush`): it writes what is still staged and hands the file back for
/// positioned writes and the fsync.
///
/// Direct I/O (`O_DIRECT`, set on the open file) writes whole aligned blocks from a staging
/// buffer; the tail that is not a whole block, and everything on a file system that refuses
/// direct I/O (tmpfs, some network file systems), is written buffered. Buffered bytes have their
/// writeback started every [`WRITEBACK_EVERY`] (`POSIX_FADV_DONTNEED` starts it without waiting,
/// and drops them from the page cache once clean), so the fsync at the end waits for the last
/// few MiB rather than the whole archive, and a backup does not push the machine's cache out.
pub struct ArchiveFile {
    file: File,
    /// While direct I/O is on: the staging buffer, with [`ALIGN`] bytes of slack so that an
    /// aligned window of [`STAGED`] bytes fits in it.
    staging: Option<Staging>,
    /// Bytes the file holds (written through either way).
    written: u64,
    /// Buffered bytes up to here have had their writeback started.
    sent: u64,
}

struct Staging {
    buffer: Vec<u8>,
    /// Where the aligned window starts in `buffer`.
    start: usize,
    /// Bytes staged in the window.
    filled: usize,
}

impl ArchiveFile {
    /// `file`, empty and open for writing, written with direct I/O if its file system takes it.
    pub fn new(file: File) -> Self {
        let mut archive = Self::buffered(file);
        let buffer = vec![0u8; STAGED + ALIGN];
        let start = buffer.as_ptr().align_offset(ALIGN);
        if start < ALIGN && set_direct(&archive.file, true).is_ok() {
            archive.staging = Some(Staging {
                buffer,
                start,
                filled: 0,
            });
        }
        archive
    }

    /// `file` written through the page cache only.
    pub fn buffered(file: File) -> Self {
        Self {
            file,
            staging: None,
            written: 0,
            sent: 0,
        }
    }

    /// Whether the next bytes go to the disk directly.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.staging.is_some()
    }

    /// Writes what is staged, and hands the file back without direct I/O (so that positioned
    /// writes of any size work on it).
    pub fn into_file(mut self) -> io::Result<File> {
        self.end_direct()?;
        Ok(self.file)
    }

    /// Writes the staged bytes (whole blocks directly, the rest buffered) and turns direct I/O
    /// off: nothing can be staged after a tail that is not a whole block.
    fn end_direct(&mut self) -> io::Result<()> {
        let Some(staging) = self.staging.take() else {
            return Ok(());
        };
        let staged = &staging.buffer[staging.start..staging.start + staging.filled];
        let whole = staged.len() / ALIGN * ALIGN;
        let (blocks, tail) = staged.split_at(whole);
        if self.write_direct(blocks)? {
            set_direct(&self.file, false)?;
        }
        self.write_buffered(tail)
    }

    /// Writes `blocks` (whole aligned blocks) directly; if the file system refuses, turns direct
    /// I/O off and writes them buffered. Returns whether direct I/O is still on.
    fn write_direct(&mut self, blocks: &[u8]) -> io::Result<bool> {
        let mut at = 0;
        while at < blocks.len() {
            match write_some(&mut self.file, &blocks[at..]) {
                Ok(written) => {
                    at += written;
                    self.written += written as u64;
                    self.sent = self.written;
                }
                // Refused (a file system or device that does not take these blocks direct, or a
                // short write that left the rest unaligned): buffered from here on.
                Err(error) if error.raw_os_error() == Some(nix::libc::EINVAL) => {
                    set_direct(&self.file, false)?;
                    self.write_buffered(&blocks[at..])?;
                    return Ok(false);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    fn write_buffered(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let written = write_some(&mut self.file, bytes)?;
            bytes = &bytes[written..];
            self.written += written as u64;
            if self.written - self.sent >= WRITEBACK_EVERY {
                // Advice only: a file system that ignores it loses nothing but the head start.
                let _ = nix::fcntl::posix_fadvise(
                    &self.file,
                    i64::try_from(self.sent).unwrap_or(i64::MAX),
                    i64::try_from(self.written - self.sent).unwrap_or(i64::MAX),
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
                self.sent = self.written;
            }
        }
        Ok(())
    }
}

/// One `write` of some of `bytes`, again when a signal interrupts it; writing nothing is an error.
fn write_some(file: &mut File, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match file.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

impl Write for ArchiveFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let Some(staging) = &mut self.staging else {
            self.write_buffered(bytes)?;
            return Ok(bytes.len());
        };
        let taken = bytes.len().min(STAGED - staging.filled);
        let window = staging.start + staging.filled;
        staging.buffer[window..window + taken].copy_from_slice(&bytes[..taken]);
        staging.filled += taken;
        if staging.filled == STAGED {
            staging.filled = 0;
            let start = staging.start;
            // Taken out while it is written: `write_direct` may turn direct I/O off.
            let staging = self.staging.take().expect("staging is on");
            if self.write_direct(&staging.buffer[start..start + STAGED])? {
                self.staging = Some(staging);
            }
        }
        Ok(taken)
    }

    /// Writes nothing that is staged: a part of a block cannot go direct. [`Self::into_file`]
    /// writes it.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Turns direct I/O on or off for the open `file`.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_fd(), FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(file.as_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Whether direct I/O is on for `file`.
#[cfg(test)]
fn is_direct(file: &File) -> bool {
    fcntl(file.as_fd(), FcntlArg::F_GETFL).is_ok_and(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_DIRECT))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::os::unix::fs::FileExt as _;

    use super::*;

    /// Bytes that differ at every offset, in writes of awkward sizes.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|index| (index * 7 + index / 4093) as u8).collect()
    }

    fn write_in_pieces(mut archive: ArchiveFile, data: &[u8]) -> File {
        let mut at = 0;
        for size in [1, 511, 4096, 300_000, 262_144, 17, 1 << 20].iter().cycle() {
            if at == data.len() {
                break;
            }
            let end = (at + size).min(data.len());
            archive.write_all(&data[at..end]).unwrap();
            at = end;
        }
        archive.flush().unwrap();
        archive.into_file().unwrap()
    }

    fn contents(mut file: &File) -> Vec<u8> {
        let mut read = Vec::new();
        io::Seek::rewind(&mut file).unwrap();
        file.read_to_end(&mut read).unwrap();
        read
    }

    #[test]
    fn every_byte_lands_in_order_direct_or_buffered_and_the_file_takes_positioned_writes_after() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        // Not a whole number of blocks: the tail is written buffered.
        let data = pattern(3 * STAGED + 5 * 4096 + 1536);
        for direct in [true, false] {
            let path = dir.path().join(format!("archive-{direct}"));
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            let archive = if direct {
                ArchiveFile::new(file)
            } else {
                ArchiveFile::buffered(file)
            };
            let mut archive = archive;
            if direct && archive.is_direct() {
                // A whole staged window goes direct, and direct I/O stays on.
                archive.write_all(&data[..STAGED]).unwrap();
                assert!(
                    archive.is_direct(),
                    "the file system took direct I/O, then refused a whole block"
                );
                archive.write_all(&data[STAGED..]).unwrap();
                let file = archive.into_file().unwrap();
                assert_eq!(contents(&file), data);
                std::fs::remove_file(&path).unwrap();
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .unwrap();
                archive = ArchiveFile::new(file);
            } else if direct {
                eprintln!("{} takes no direct I/O: written buffered", dir.path().display());
            }
            let file = write_in_pieces(archive, &data);
            assert!(!is_direct(&file), "handed back without direct I/O");
            assert_eq!(contents(&file), data, "direct: {direct}");
            // A positioned write of any size and offset (the manifest filled in).
            file.write_all_at(b"manifest", 512 + 3).unwrap();
            let mut expected = data.clone();
            expected[515..523].copy_from_slice(b"manifest");
            assert_eq!(contents(&file), expected);
        }
    }

    #[test]
    fn on_tmpfs_the_bytes_are_the_same_whether_it_takes_direct_io_or_not() {
        // /dev/shm is a tmpfs on Linux: kernels before 6.6 refuse O_DIRECT there (then the file
        // is written buffered from the start), newer ones take it.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let data = pattern(STAGED + 4096 + 7);
        let path = dir.path().join("archive");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let file = write_in_pieces(ArchiveFile::new(file), &data);
        assert_eq!(contents(&file), data);
    }
}
