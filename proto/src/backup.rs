//! The backup archive: one POSIX tar file (`tar tvf` lists it) whose first member is
//! `manifest.json`, followed by the members the manifest lists, in its order, each with its size
//! and SHA-256. The daemon writes it; `blufioctl backup --verify` and the daemon's restore read it
//! through [`verify`], which checks every byte before the caller uses any of it.
//!
//! Members: `blufio.db` (an online snapshot of the database, the vault's sealed secrets
//! included), optionally `blufiod.toml` (the config file, whose secrets are `secret:` references)
//! and `tls/cert.pem` + `tls/key.pem` (only when asked for).

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `format` of every manifest.
pub const FORMAT: &str = "blufio-backup";
/// The version of the layout described here.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest member, always first.
pub const MANIFEST: &str = "manifest.json";
/// The database snapshot.
pub const DATABASE: &str = "blufio.db";
/// The config file.
pub const CONFIG: &str = "blufiod.toml";
/// The gateway's certificate and key.
pub const TLS_CERT: &str = "tls/cert.pem";
/// See [`TLS_CERT`].
pub const TLS_KEY: &str = "tls/key.pem";
/// Every member name an archive may hold besides the manifest.
pub const MEMBERS: [&str; 4] = [DATABASE, CONFIG, TLS_CERT, TLS_KEY];
/// The largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Where the manifest's JSON starts in an archive: after its one 512-byte tar header (its name
/// is short, so no extension header comes before it).
pub const MANIFEST_DATA_OFFSET: u64 = 512;
/// The SHA-256 a manifest carries for a member that is still being checked (a backup whose
/// client copies while the daemon checks): as long as a real one, so the manifest's size, and
/// the archive's layout, do not change when it is filled in, and never equal to one.
pub const PENDING_SHA256: &str = "----------------------------------------------------------------";

/// What an archive holds and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The blufiod version that wrote it.
    pub blufio_version: String,
    /// The database's schema version (its last migration).
    pub schema_version: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// The daemon that wrote it.
    pub daemon: DaemonIdentity,
    /// The members after the manifest, in order.
    pub members: Vec<Member>,
    /// The vault in the database (its secrets are sealed; the key is never in an archive).
    pub vault: Option<VaultSummary>,
}

/// Which daemon wrote an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonIdentity {
    /// The machine's host name.
    pub hostname: String,
    /// The database file it backed up.
    pub database_path: String,
}

/// One member: its name, size and SHA-256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The tar path.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// The vault as the snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultSummary {
    /// The kind of key that seals it (`generated`, `key-file`, `credential`, `passphrase`).
    pub sealed_with: String,
    /// Secrets in it.
    pub entries: u64,
}

/// Why an archive is refused. Each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("cannot read or write the archive")]
    Io(#[from] std::io::Error),
    /// The data ends before the archive does.
    #[error("the archive is truncated: {0}")]
    Truncated(String),
    /// The first member is not a manifest this version reads.
    #[error("not a blufio backup: {0}")]
    NotABackup(String),
    /// A member's bytes differ from what the manifest says.
    #[error("member {name} does not match the manifest ({what}): the archive is damaged")]
    Mismatch {
        /// The member.
        name: String,
        /// What differs.
        what: String,
    },
    /// A member the manifest does not list, or listed twice.
    #[error("unexpected member {0} in the archive")]
    Unexpected(String),
}

/// The SHA-256 of `bytes` read from `reader`, lower-case hex, and the byte count.
pub fn sha256_of(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            return Ok((hex(&hasher.finalize()), total));
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The manifest's bytes as [`write`] puts them in the archive.
pub fn manifest_json(manifest: &Manifest) -> Vec<u8> {
    serde_json::to_vec_pretty(manifest).expect("a manifest serializes")
}

/// The size of the archive [`write`] makes for `manifest`, so a reader can show progress.
pub fn archive_size(manifest: &Manifest) -> u64 {
    let manifest_bytes = manifest_json(manifest).len() as u64;
    let padded = |bytes: u64| 512 + bytes.div_ceil(512) * 512;
    // A 512-byte header per member, its data padded to 512 bytes, and two zero blocks at the end.
    padded(manifest_bytes) + manifest.members.iter().map(|member| padded(member.bytes)).sum::<u64>() + 1024
}

/// Writes the archive: the manifest, then each member in the manifest's order, its bytes read
/// from `open(name)`. Each member must give exactly the bytes the manifest lists.
pub fn write<'a, W: Write>(
    out: W,
    manifest: &Manifest,
    mut open: impl FnMut(&str) -> std::io::Result<Box<dyn Read + 'a>>,
) -> Result<W, ArchiveError> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    let json = manifest_json(manifest);
    append(
        &mut builder,
        MANIFEST,
        json.len() as u64,
        manifest.created_at,
        &json[..],
    )?;
    for member in &manifest.members {
        let reader = open(&member.name)?;
        append(&mut builder, &member.name, member.bytes, manifest.created_at, reader)?;
    }
    Ok(builder.into_inner()?)
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    bytes: u64,
    mtime: i64,
    data: impl Read,
) -> Result<(), ArchiveError> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes);
    header.set_mode(0o600);
    header.set_mtime(u64::try_from(mtime).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, data.take(bytes))?;
    Ok(())
}

/// Reads an archive from `reader`, checks the manifest and every member against it, and hands
/// each member's bytes to `sink` as they are read. The caller must not use what `sink` received
/// unless this returns `Ok`: a mismatch is found only at a member's end.
pub fn verify(
    reader: impl Read,
    sink: impl FnMut(&Member, &mut dyn Read) -> std::io::Result<u64>,
) -> Result<Manifest, ArchiveError> {
    verify_members(reader, sink, None).map(|(manifest, _)| manifest)
}

/// [`verify`] for an archive whose manifest lists [`PENDING_SHA256`] for `pending` (a member
/// still being checked where it came from): every other member is verified, and the SHA-256
/// `pending` has is returned beside the manifest, for the caller to compare with the one it is
/// given. Refused when the manifest lists a real hash for `pending`, or lacks it.
pub fn verify_pending(
    reader: impl Read,
    pending: &str,
    sink: impl FnMut(&Member, &mut dyn Read) -> std::io::Result<u64>,
) -> Result<(Manifest, String), ArchiveError> {
    let (manifest, computed) = verify_members(reader, sink, Some(pending))?;
    let computed = computed.ok_or_else(|| {
        ArchiveError::NotABackup(format!("its manifest lists no member {pending} whose check is pending"))
    })?;
    Ok((manifest, computed))
}

fn verify_members(
    reader: impl Read,
    mut sink: impl FnMut(&Member, &mut dyn Read) -> std::io::Result<u64>,
    pending: Option<&str>,
) -> Result<(Manifest, Option<String>), ArchiveError> {
    let mut pending_sha256 = None;
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries()?;
    let truncated = |what: &str| ArchiveError::Truncated(what.to_owned());
    let mut first = entries
        .next()
        .ok_or_else(|| ArchiveError::NotABackup("it is empty".to_owned()))?
        .map_err(|error| ArchiveError::NotABackup(format!("it is not a tar archive ({error})")))?;
    let first_name = first.path()?.to_string_lossy().into_owned();
    if first_name != MANIFEST {
        return Err(ArchiveError::NotABackup(format!(
            "its first member is {first_name}, not {MANIFEST}"
        )));
    }
    if first.size() > MAX_MANIFEST_BYTES {
        return Err(ArchiveError::NotABackup("its manifest is too large".to_owned()));
    }
    let mut json = Vec::new();
    first.read_to_end(&mut json).map_err(|_| truncated("in the manifest"))?;
    drop(first);
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|error| ArchiveError::NotABackup(format!("its manifest does not parse: {error}")))?;
    if manifest.format != FORMAT {
        return Err(ArchiveError::NotABackup(format!("its format is {:?}", manifest.format)));
    }
    if manifest.format_version > FORMAT_VERSION {
        return Err(ArchiveError::NotABackup(format!(
            "it is format version {}, newer than this blufio reads ({FORMAT_VERSION}); use a newer blufioctl and blufiod",
            manifest.format_version
        )));
    }
    let mut names: Vec<&str> = manifest.members.iter().map(|member| member.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(ArchiveError::NotABackup("its manifest lists a member twice".to_owned()));
    }
    let mut expected = manifest.members.iter();
    for entry in entries {
        let mut entry = entry.map_err(|error| ArchiveError::Truncated(error.to_string()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        // Only plain files: a link or device entry is never a member.
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(ArchiveError::Unexpected(format!("{name} (not a regular file)")));
        }
        let member = expected
            .next()
            .filter(|member| member.name == name && MEMBERS.contains(&member.name.as_str()))
            .ok_or_else(|| ArchiveError::Unexpected(name.clone()))?;
        if entry.size() != member.bytes {
            return Err(ArchiveError::Mismatch {
                name,
                what: format!("{} bytes, the manifest says {}", entry.size(), member.bytes),
            });
        }
        let mut hashing = Hashing {
            inner: &mut entry,
            hasher: Sha256::new(),
            read: 0,
        };
        sink(member, &mut hashing).map_err(|error| {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                truncated(&format!("in member {name}"))
            } else {
                ArchiveError::Io(error)
            }
        })?;
        // Whatever the sink left unread still counts.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|_| truncated(&format!("in member {name}")))?;
        if hashing.read != member.bytes {
            return Err(truncated(&format!(
                "member {name} has {} of its {} bytes",
                hashing.read, member.bytes
            )));
        }
        let sha256 = hex(&hashing.hasher.finalize());
        if pending == Some(name.as_str()) && member.sha256 == PENDING_SHA256 {
            pending_sha256 = Some(sha256);
            continue;
        }
        if sha256 != member.sha256 {
            return Err(ArchiveError::Mismatch {
                name,
                what: "its SHA-256 differs".to_owned(),
            });
        }
    }
    if let Some(missing) = expected.next() {
        return Err(truncated(&format!("member {} is missing", missing.name)));
    }
    Ok((manifest, pending_sha256))
}

struct Hashing<'a, R> {
    inner: &'a mut R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        self.read += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(members: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            blufio_version: "0.1.0".to_owned(),
            schema_version: 4,
            created_at: 1_764_500_000,
            daemon: DaemonIdentity {
                hostname: "host".to_owned(),
                database_path: "/var/lib/blufio/blufio.db".to_owned(),
            },
            members: members
                .iter()
                .map(|(name, data)| {
                    let (sha256, bytes) = sha256_of(*data).unwrap();
                    Member {
                        name: (*name).to_owned(),
                        bytes,
                        sha256,
                    }
                })
                .collect(),
            vault: None,
        }
    }

    fn archive(members: &[(&'static str, &'static [u8])]) -> (Manifest, Vec<u8>) {
        let manifest = manifest(members);
        let bytes = write(Vec::new(), &manifest, |name| {
            let data = members.iter().find(|(member, _)| *member == name).unwrap().1;
            Ok(Box::new(data) as Box<dyn Read>)
        })
        .unwrap();
        (manifest, bytes)
    }

    type Members = Vec<(String, Vec<u8>)>;

    fn read_all(bytes: &[u8]) -> Result<(Manifest, Members), ArchiveError> {
        let mut seen = Vec::new();
        let manifest = verify(bytes, |member, data| {
            let mut buffer = Vec::new();
            data.read_to_end(&mut buffer)?;
            seen.push((member.name.clone(), buffer));
            Ok(0)
        })?;
        Ok((manifest, seen))
    }

    #[test]
    fn an_archive_round_trips_and_its_size_is_known_in_advance() {
        let (manifest, bytes) = archive(&[(DATABASE, b"SQLite format 3\0 and pages"), (CONFIG, b"[log]\n")]);
        assert_eq!(archive_size(&manifest), bytes.len() as u64);
        let (read, members) = read_all(&bytes).unwrap();
        assert_eq!(read, manifest);
        assert_eq!(
            members[0],
            (DATABASE.to_owned(), b"SQLite format 3\0 and pages".to_vec())
        );
        assert_eq!(members[1].0, CONFIG);
    }

    #[test]
    fn truncation_bit_flips_and_strangers_are_refused() {
        let (_, bytes) = archive(&[(DATABASE, &[7u8; 5000]), (CONFIG, b"[log]\n")]);
        for cut in [0, 100, 600, 1500, 5000, bytes.len() - 1100] {
            let error = read_all(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(error, ArchiveError::Truncated(_) | ArchiveError::NotABackup(_)),
                "cut at {cut}: {error}"
            );
        }
        // A flipped bit in the database member's data.
        let at = bytes.windows(4).position(|window| window == [7, 7, 7, 7]).unwrap() + 2000;
        let mut flipped = bytes.clone();
        flipped[at] ^= 1;
        let error = read_all(&flipped).unwrap_err();
        assert!(
            matches!(&error, ArchiveError::Mismatch { name, .. } if name == DATABASE),
            "{error}"
        );
        // A tar file that is not a backup.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        builder.append_data(&mut header, "notes.txt", &b"hi\n"[..]).unwrap();
        let other = builder.into_inner().unwrap();
        assert!(matches!(read_all(&other), Err(ArchiveError::NotABackup(_))));
        assert!(matches!(
            read_all(b"not a tar at all"),
            Err(ArchiveError::NotABackup(_) | ArchiveError::Truncated(_))
        ));
    }

    #[test]
    fn a_pending_hash_is_verified_apart_and_filled_in_at_the_manifests_offset() {
        let (mut manifest, _) = archive(&[(DATABASE, b"pages"), (CONFIG, b"[log]\n")]);
        let real = manifest.clone();
        manifest.members[0].sha256 = PENDING_SHA256.to_owned();
        let bytes = write(Vec::new(), &manifest, |name| {
            Ok(Box::new(if name == DATABASE {
                &b"pages"[..]
            } else {
                &b"[log]\n"[..]
            }) as Box<dyn Read>)
        })
        .unwrap();
        // The layout does not change when the hash is filled in.
        assert_eq!(archive_size(&manifest), archive_size(&real));
        // A pending hash never verifies as a real one.
        assert!(matches!(read_all(&bytes), Err(ArchiveError::Mismatch { name, .. }) if name == DATABASE));
        let (listed, computed) = verify_pending(&bytes[..], DATABASE, |_, _| Ok(0)).unwrap();
        assert_eq!(listed, manifest);
        assert_eq!(computed, real.members[0].sha256);
        // The other members are still checked.
        let mut flipped = bytes.clone();
        let at = flipped.windows(5).position(|window| window == b"[log]").unwrap();
        flipped[at] ^= 1;
        assert!(matches!(
            verify_pending(&flipped[..], DATABASE, |_, _| Ok(0)),
            Err(ArchiveError::Mismatch { name, .. }) if name == CONFIG
        ));
        // Filled in where the manifest's JSON starts, the archive is the one written whole.
        let mut filled = bytes.clone();
        let json = manifest_json(&real);
        let at = usize::try_from(MANIFEST_DATA_OFFSET).unwrap();
        filled[at..at + json.len()].copy_from_slice(&json);
        assert_eq!(read_all(&filled).unwrap().0, real);
        // An archive whose manifest holds a real hash has nothing pending.
        assert!(matches!(
            verify_pending(&filled[..], DATABASE, |_, _| Ok(0)),
            Err(ArchiveError::NotABackup(_))
        ));
    }

    #[test]
    fn a_newer_format_and_unlisted_members_are_refused() {
        let mut newer = manifest(&[]);
        newer.format_version = FORMAT_VERSION + 1;
        let bytes = write(Vec::new(), &newer, |_| unreachable!()).unwrap();
        let error = read_all(&bytes).unwrap_err().to_string();
        assert!(error.contains("newer than this blufio reads"), "{error}");

        // The manifest lists one member; the archive carries another.
        let listed = manifest(&[(CONFIG, b"x")]);
        let mut builder = tar::Builder::new(Vec::new());
        let json = serde_json::to_vec(&listed).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(json.len() as u64);
        builder.append_data(&mut header, MANIFEST, &json[..]).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        builder.append_data(&mut header, "etc/passwd", &b"x"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        assert!(matches!(read_all(&bytes), Err(ArchiveError::Unexpected(name)) if name.contains("passwd")));
    }
}
