//! Replay protection: every (keyid, nonce) pair is accepted once while its signature could still
//! pass the clock-skew check. The cache is bounded; when it is full, new requests are refused
//! rather than old nonces forgotten, so a flood can never reopen the door to a replay.
//!
//! Each key may hold at most its share of the cache: what its rate limit lets it send within a
//! nonce's lifetime. The gateway charges the rate limit before it remembers a nonce, so a device
//! never reaches its share in normal use, and no device can take another's room.
//!
//! # Fingerprints
//!
//! The cache keeps no strings. A pair is remembered as 64 bits of SHA-256 over a secret random
//! key and (keyid, nonce), so nobody outside can compute fingerprints, let alone craft two nonces
//! that share one. A fingerprint costs a slot of 8 bytes and a control byte in the set of live
//! ones (a table at most 7/8 full, shrunk when under a quarter full) and 8 bytes in its bucket's
//! list: about 23 bytes per nonce at 100,000 live, where strings cost about 350.
//!
//! Two different pairs with the same fingerprint make the second look replayed. With at most
//! `capacity` fingerprints live, a fresh request is refused that way with probability at most
//! `capacity / 2^64` (5.4e-15 for 100,000 entries), and its client simply retries with a new
//! nonce. The error never goes the other way: a replayed pair always has the same fingerprint.
//!
//! # Buckets
//!
//! Nonces are grouped by the second they were accepted into buckets `width` seconds wide, where
//! `width = max(1, ceil((window + 1) / 16))`: 38 s for the default 600 s window, so at most 17
//! buckets are live. A bucket opened at second `s` takes the nonces accepted in
//! `[s, s + width - 1]` and expires whole once `s + width - 1 + window < now`. A nonce accepted at
//! `t` is therefore remembered through `t + window` inclusive, like the skew check it mirrors, and
//! at most `width - 1` seconds longer. Expiring looks at each live bucket (about 17) and removes
//! the expired ones' fingerprints, which is O(1) per nonce; each bucket counts its nonces per key,
//! so the share check is O(1) and a refusal's retry time O(buckets).
//!
//! Each bucket keeps the last second it is remembered (`until`), fixed when it opens, and expires
//! by it alone. The wall clock may step back: a nonce accepted before the newest bucket opened
//! goes to a bucket that takes nonces at that second, a new one if none does, never to a bucket
//! in the future, which would keep it (and hold its room) until that future second.
//!
//! This module must never forget a live nonce early, to make room or to shed memory: that would
//! let a captured request be replayed. It gives memory back only as buckets expire.
//!
//! # Across restarts
//!
//! A restart must not forget either: a request captured just before it would be accepted again
//! just after. With a journal directory ([`ReplayCache::open`]), each bucket's fingerprints are
//! also appended, 8 bytes each, to `<start>-<until>.fp` there before a nonce counts as accepted (a
//! nonce that cannot be written is refused: fail closed), an expired bucket's file is removed, and
//! the next start loads the live ones. A file's `until` is the one its bucket was opened with, so
//! a restart with a shorter clock-skew window still remembers what the longer one accepted (a file
//! named the older way, `<start>.fp`, is kept for the longest window the configuration allows).
//! A journal that holds more nonces than the cache may is refused at start, before it is read:
//! fail closed, with the way out in the error. The fingerprint key lives beside them in `key`
//! (0600), so the fingerprints stay comparable. The files are written, not synced: they survive a
//! killed or crashed daemon, like `storage.synchronous = "normal"`. Records stay aligned: a write
//! that fails part way (a full disk, a file size limit) is cut back at once, and a file found
//! ending part way, at start or when a bucket's file is reopened, is cut back to its whole
//! records.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest as _, Sha256};

/// Seen nonces, as fingerprints in time buckets that expire whole.
pub struct ReplayCache {
    /// Live fingerprints at most.
    capacity: usize,
    /// Live fingerprints of one key at most.
    share: usize,
    /// The secret key fingerprints are computed with: random, and kept in the journal
    /// directory when there is one.
    key: [u8; 32],
    /// The live nonces: `accept` checks and inserts under one lock.
    inner: Mutex<Inner>,
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The nonce was used before.
    Replayed,
    /// The cache is full of live nonces; its oldest bucket expires in `retry_after` seconds.
    Full {
        /// Seconds until the cache has room again.
        retry_after: u64,
    },
    /// This key holds its whole share of the cache; its oldest nonce expires in `retry_after`
    /// seconds.
    KeyFull {
        /// Seconds until the key has room again.
        retry_after: u64,
    },
    /// The nonce could not be written to the journal, so it is not accepted.
    Unrecorded,
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The directory, the key or a bucket file could not be created or read.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file is not 32 bytes.
    #[error(
        "the replay journal's key {path} is damaged ({len} bytes, not 32); remove the directory {dir} to start afresh (requests signed in the last clock-skew window could then be replayed once)"
    )]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The key file is gone while fingerprints made with it remain: a new key would make them
    /// all meaningless, and every nonce they remember could be replayed.
    #[error(
        "the replay journal's key {path} is missing but its fingerprint files remain; restore the key, or remove the directory {dir} to start afresh (requests signed in the last clock-skew window could then be replayed once)"
    )]
    MissingKey {
        /// The key file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The live buckets hold more nonces than the cache may: loading them would exceed the bound
    /// (`gateway.replay_cache_entries` was lowered, or files were planted).
    #[error(
        "the replay journal {dir} remembers at least {count} nonces, more than gateway.replay_cache_entries ({capacity}) allows; raise gateway.replay_cache_entries, or start again in {wait_secs} s when they have expired (removing the directory instead would let requests signed in that time be replayed once)"
    )]
    TooMany {
        /// The journal directory.
        dir: PathBuf,
        /// The nonces counted so far.
        count: u64,
        /// The cache's capacity.
        capacity: usize,
        /// Seconds until the last live bucket expires.
        wait_secs: i64,
    },
    /// The directory is not one only the daemon controls: a link, or writable by others.
    #[error(
        "the replay journal directory {dir} {problem}; remove it (or fix its owner and mode) to let blufiod make it again"
    )]
    UntrustedDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl ReplayCache {
    /// A cache for at most `capacity` live nonces, each remembered for at least `window_secs`
    /// seconds after the second it was accepted, that second's end included. Each key's share is
    /// what a rate limit of `per_minute` a minute, with bursts of as many, can let through during
    /// a nonce's longest lifetime: see [`ReplayCache::share`]. In memory only, with a random key;
    /// the daemon uses [`ReplayCache::open`].
    #[cfg(test)]
    fn new(capacity: usize, per_minute: u32, window_secs: i64) -> Self {
        let mut key = [0; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        Self::with_key(capacity, per_minute, window_secs, key, None)
    }

    /// Like [`ReplayCache::new`], with the journal in `dir` (created 0700): the nonces of the
    /// buckets still live at `now` are loaded, expired buckets' files removed.
    pub fn open(
        capacity: usize,
        per_minute: u32,
        window_secs: i64,
        dir: &Path,
        now: i64,
    ) -> Result<Self, JournalError> {
        let io = |operation, path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io {
                operation,
                path,
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create the replay journal directory", dir))?;
        check_journal_dir(dir)?;
        // 0700 whatever the umask was when it was made (the control socket's bind narrows the
        // process-wide umask for a moment).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of the replay journal directory", dir))?;
        let key = journal_key(dir)?;
        let cache = Self::with_key(capacity, per_minute, window_secs, key, Some(dir.to_owned()));
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("read the replay journal directory", dir))? {
            let entry = entry.map_err(io("read the replay journal directory", dir))?;
            let Some((start, until)) = bucket_name(&entry.file_name()) else {
                continue;
            };
            files.push((start, until, entry.path()));
        }
        files.sort_unstable();
        // When every live bucket has expired: what a refusal below tells the owner to wait for.
        let latest = files.iter().map(|(_, until, _)| *until).max().unwrap_or(now).max(now);
        let mut inner = cache.lock();
        let mut count = 0_u64;
        for (start, until, path) in files {
            if until < now {
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot remove an expired replay journal file");
                }
                continue;
            }
            let mut file = open_regular(&path, true).map_err(io("read the replay journal file", &path))?;
            // Counted before it is read: a file too large for the cache is never loaded whole.
            let len = file
                .metadata()
                .map_err(io("read the replay journal file", &path))?
                .len();
            count = count.saturating_add(len / RECORD_BYTES);
            if count > capacity as u64 {
                return Err(JournalError::TooMany {
                    dir: dir.to_owned(),
                    count,
                    capacity,
                    wait_secs: latest.saturating_sub(now).saturating_add(1),
                });
            }
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(io("read the replay journal file", &path))?;
            // A record cut short by a crash or a full disk was never accepted; it is cut off, so
            // that records appended to this bucket after the restart stay aligned.
            cut_to_whole_records(&mut file, bytes.len() as u64).map_err(io("repair the replay journal file", &path))?;
            let fingerprints: Vec<u64> = bytes
                .chunks_exact(RECORD_BYTES as usize)
                .map(|record| u64::from_le_bytes(record.try_into().expect("8 bytes")))
                .collect();
            inner.live.extend(fingerprints.iter().copied());
            inner.buckets.push_back(Bucket {
                start,
                until,
                fingerprints,
                per_key: HashMap::new(),
                file: None,
            });
        }
        drop(inner);
        Ok(cache)
    }

    fn with_key(capacity: usize, per_minute: u32, window_secs: i64, key: [u8; 32], journal: Option<PathBuf>) -> Self {
        let lifetime = Lifetime::new(window_secs);
        Self {
            capacity: capacity.max(1),
            share: lifetime.share(per_minute),
            key,
            inner: Mutex::new(Inner {
                lifetime,
                live: FingerprintSet::default(),
                buckets: VecDeque::new(),
                per_key: HashMap::new(),
                journal,
            }),
        }
    }

    /// Whether `nonce` of `keyid` was accepted and is still remembered at `now`.
    pub fn seen(&self, keyid: &str, nonce: &str, now: i64) -> bool {
        let fingerprint = self.fingerprint(keyid, nonce);
        let mut inner = self.lock();
        inner.expire(now);
        inner.live.contains(&fingerprint)
    }

    /// Accepts `nonce` of `keyid` once; it is remembered through `now + window_secs` at least.
    /// Everything is checked again under the lock, so of two concurrent copies of one request
    /// exactly one is accepted.
    pub fn accept(&self, keyid: &str, nonce: &str, now: i64) -> Result<(), ReplayError> {
        let fingerprint = self.fingerprint(keyid, nonce);
        let mut inner = self.lock();
        inner.expire(now);
        if inner.live.contains(&fingerprint) {
            return Err(ReplayError::Replayed);
        }
        if inner.per_key.get(keyid).is_some_and(|held| *held >= self.share) {
            return Err(ReplayError::KeyFull {
                retry_after: inner.retry_after(keyid, now),
            });
        }
        if inner.live.len() >= self.capacity {
            return Err(ReplayError::Full {
                retry_after: inner.retry_after_oldest(now),
            });
        }
        inner.insert(fingerprint, keyid, now)
    }

    /// Live nonces.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// The most live nonces one key may hold:
    /// `per_minute + ceil(per_minute * (window + width) / 60)`, the burst plus what the limiter
    /// refills during a nonce's longest lifetime, `window + width - 1` seconds counted with its
    /// last second whole.
    pub fn share(&self) -> usize {
        self.share
    }

    /// The fingerprint of a pair: the first 8 bytes of SHA-256 over the secret key, the keyid's
    /// length, the keyid and the nonce (the length keeps ("ab", "c") and ("a", "bc") apart).
    fn fingerprint(&self, keyid: &str, nonce: &str) -> u64 {
        let digest = Sha256::new()
            .chain_update(self.key)
            .chain_update((keyid.len() as u64).to_le_bytes())
            .chain_update(keyid.as_bytes())
            .chain_update(nonce.as_bytes())
            .finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
    }

    /// The state, locked.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("replay cache poisoned")
    }
}

/// A set of fingerprints, hashed by themselves: they are digest bits already.
type FingerprintSet = HashSet<u64, BuildHasherDefault<PassThrough>>;

/// A hasher that uses a `u64` as its own hash.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    /// The fingerprint itself.
    fn finish(&self) -> u64 {
        self.0
    }

    /// Only `write_u64` is used (it is how a `u64` hashes itself); anything else is folded in so
    /// that the hasher stays correct, if slow.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    /// Takes the fingerprint as its own hash.
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// How long nonces are remembered.
#[derive(Debug, Clone, Copy)]
struct Lifetime {
    /// A nonce accepted at `t` is remembered through `t + window` at least.
    window: i64,
    /// Seconds of acceptance per bucket, at least 1.
    width: i64,
}

/// How many buckets a nonce's shortest lifetime, `window + 1` seconds counted inclusively, is cut
/// into. Nonces live up to `width - 1` seconds longer than they must, a sixteenth more: finer
/// buckets would save little memory and cost a larger bucket queue.
const BUCKETS_PER_WINDOW: u64 = 16;

impl Lifetime {
    /// The lifetime for a window of `window_secs` (negative counts as 0).
    fn new(window_secs: i64) -> Self {
        let window = u64::try_from(window_secs).unwrap_or(0);
        // In u64, so that no window overflows: the widest is 2^59.
        let width = window.saturating_add(1).div_ceil(BUCKETS_PER_WINDOW).max(1);
        Self {
            window: window_secs.max(0),
            width: i64::try_from(width).unwrap_or(i64::MAX),
        }
    }

    /// The last second a bucket opened at `start` takes new nonces.
    fn last_accepting(self, start: i64) -> i64 {
        start.saturating_add(self.width - 1)
    }

    /// The last second the nonces of a bucket opened at `start` are remembered: `window` after
    /// the last second it took them.
    fn last_remembered(self, start: i64) -> i64 {
        self.last_accepting(start).saturating_add(self.window)
    }

    /// A key's share: see [`ReplayCache::share`].
    fn share(self, per_minute: u32) -> usize {
        let per_minute = u64::from(per_minute.max(1));
        // The longest lifetime is `window + width - 1` seconds; its last second counts whole.
        let span = u64::try_from(self.window.saturating_add(self.width)).unwrap_or(u64::MAX);
        let share = per_minute.saturating_add(per_minute.saturating_mul(span).div_ceil(60));
        usize::try_from(share).unwrap_or(usize::MAX)
    }
}

/// The fingerprint set's slots below which it is not worth shrinking (about 37 KiB).
const MIN_SHRINK_SLOTS: usize = 4_096;

/// Live nonces, behind the cache's lock.
struct Inner {
    /// How long nonces are remembered.
    lifetime: Lifetime,
    /// The fingerprints of the live nonces: each belongs to exactly one bucket.
    live: FingerprintSet,
    /// In the order they opened (their starts grow unless the clock stepped back).
    buckets: VecDeque<Bucket>,
    /// Live nonces per key: the sum of the buckets' counts. Keys without any are removed.
    per_key: HashMap<Box<str>, usize>,
    /// The journal directory, if any (see the module's documentation).
    journal: Option<PathBuf>,
}

/// The nonces accepted during `width` seconds.
struct Bucket {
    /// The second it was opened: it takes nonces through `start + width - 1`.
    start: i64,
    /// The last second its nonces are remembered: `window` after the last second it takes them,
    /// for the window it was opened under (a bucket loaded from the journal keeps its own).
    until: i64,
    /// The fingerprints it added to the live set, to remove when it expires.
    fingerprints: Vec<u64>,
    /// Its nonces per key. Devices are few, so this stays small. Empty for a bucket loaded from
    /// the journal: its nonces count against the capacity, not against a key's share.
    per_key: HashMap<Box<str>, usize>,
    /// Its journal file, open for appending while it takes nonces.
    file: Option<JournalFile>,
}

/// A bucket's journal file open for appending, and the length of its whole records.
#[derive(Debug)]
struct JournalFile {
    file: File,
    whole: u64,
}

/// What appending a record needs of a file: writing, and cutting it back.
trait Truncate: std::io::Write {
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()>;
}

impl Truncate for File {
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
}

impl Inner {
    /// Forgets the buckets whose nonces' windows all ended before `now`, then gives memory back
    /// if the live set is now far smaller than its table.
    fn expire(&mut self, now: i64) {
        let mut expired = false;
        // Each bucket by its own `until`: after a clock step or a window change they need not
        // expire in the order they opened. There are about 17 of them.
        let mut index = 0;
        while index < self.buckets.len() {
            if self.buckets[index].until >= now {
                index += 1;
                continue;
            }
            let Some(bucket) = self.buckets.remove(index) else {
                break;
            };
            if let Some(dir) = &self.journal {
                let path = bucket_path(dir, bucket.start, bucket.until);
                if let Err(error) = std::fs::remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), %error, "cannot remove an expired replay journal file");
                }
            }
            for fingerprint in &bucket.fingerprints {
                self.live.remove(fingerprint);
            }
            for (keyid, count) in &bucket.per_key {
                if let Some(held) = self.per_key.get_mut(keyid) {
                    *held = held.saturating_sub(*count);
                    if *held == 0 {
                        self.per_key.remove(keyid);
                    }
                }
            }
            expired = true;
        }
        if expired {
            self.shrink();
        }
    }

    /// Shrinks the live set once it uses under a quarter of its table, to twice what it holds:
    /// a burst does not pin its memory for ever. Rehashing costs O(live), at most once per
    /// expired bucket, and another shrink needs the set to halve again first, so it is O(1) per
    /// nonce over time.
    fn shrink(&mut self) {
        let live = self.live.len();
        if self.live.capacity() > MIN_SHRINK_SLOTS && self.live.capacity() / 4 > live {
            self.live.shrink_to(live.saturating_mul(2));
        }
        if self.per_key.capacity() > 64 && self.per_key.capacity() / 4 > self.per_key.len() {
            self.per_key.shrink_to(self.per_key.len().saturating_mul(2));
        }
        if self.buckets.capacity() > 64 && self.buckets.capacity() / 4 > self.buckets.len() {
            self.buckets.shrink_to(self.buckets.len().saturating_mul(2));
        }
    }

    /// Remembers a fingerprint not yet live, in a bucket that takes nonces at `now` and remembers
    /// them long enough (the newest, unless the clock stepped back or the window changed), else
    /// in a new one; with a journal, written there first, and refused if it cannot be.
    fn insert(&mut self, fingerprint: u64, keyid: &str, now: i64) -> Result<(), ReplayError> {
        let lifetime = self.lifetime;
        let takes = |bucket: &Bucket| {
            bucket.start <= now
                && now <= lifetime.last_accepting(bucket.start)
                && bucket.until >= now.saturating_add(lifetime.window)
        };
        let index = match self.buckets.iter().rposition(takes) {
            Some(index) => index,
            None => {
                self.buckets.push_back(Bucket {
                    start: now,
                    until: lifetime.last_remembered(now),
                    fingerprints: Vec::new(),
                    per_key: HashMap::new(),
                    file: None,
                });
                self.buckets.len() - 1
            }
        };
        let Some(bucket) = self.buckets.get_mut(index) else {
            return Err(ReplayError::Unrecorded);
        };
        if let Some(dir) = self.journal.as_deref() {
            let written = append(&mut bucket.file, dir, bucket.start, bucket.until, fingerprint);
            if let Err(error) = written {
                tracing::error!(%error, dir = %dir.display(), "cannot write a nonce to the replay journal; the request is refused");
                return Err(ReplayError::Unrecorded);
            }
        }
        bucket.fingerprints.push(fingerprint);
        count_one(&mut bucket.per_key, keyid);
        count_one(&mut self.per_key, keyid);
        self.live.insert(fingerprint);
        Ok(())
    }

    /// Seconds until the oldest bucket expires, at least 1.
    fn retry_after_oldest(&self, now: i64) -> u64 {
        let last = self.buckets.iter().map(|bucket| bucket.until).min().unwrap_or(now);
        u64::try_from(last.saturating_sub(now).saturating_add(1))
            .unwrap_or(1)
            .max(1)
    }

    /// Seconds until `keyid`'s oldest bucket expires, at least 1.
    fn retry_after(&self, keyid: &str, now: i64) -> u64 {
        let last = self
            .buckets
            .iter()
            .filter(|bucket| bucket.per_key.contains_key(keyid))
            .map(|bucket| bucket.until)
            .min()
            .unwrap_or(now);
        u64::try_from(last.saturating_sub(now).saturating_add(1))
            .unwrap_or(1)
            .max(1)
    }
}

impl fmt::Debug for ReplayCache {
    /// Without the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("capacity", &self.capacity)
            .field("share", &self.share)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Inner {
    /// A summary: the fingerprints themselves say nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("lifetime", &self.lifetime)
            .field("live", &self.live.len())
            .field("buckets", &self.buckets.len())
            .field("keys", &self.per_key.len())
            .finish_non_exhaustive()
    }
}

/// Refuses a journal directory that is a link (the journal and its key would go wherever it
/// points), belongs to another user, or that others may write (they could plant or remove
/// files, and so make the daemon forget nonces).
fn check_journal_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::symlink_metadata(dir).map_err(|source| JournalError::Io {
        operation: "inspect the replay journal directory",
        path: dir.to_owned(),
        source,
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    let problem = if !metadata.is_dir() {
        Some("is not a directory (a link?)".to_owned())
    } else if metadata.uid() != euid {
        Some(format!("belongs to uid {}, not blufiod's {euid}", metadata.uid()))
    } else if metadata.mode() & 0o022 != 0 {
        Some(format!(
            "may be written by others (mode {:o})",
            metadata.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(JournalError::UntrustedDir {
            dir: dir.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// The longest window the configuration allows (twice `gateway.max_clock_skew_secs`, at most
/// 3,600): how long a journal file named without its `until` (written before files carried it)
/// is kept.
const LONGEST_WINDOW_SECS: i64 = 2 * 3_600;

/// A bucket's journal file.
fn bucket_path(dir: &Path, start: i64, until: i64) -> PathBuf {
    dir.join(format!("{start}-{until}.fp"))
}

/// The second a bucket's file was opened and the last second its nonces are remembered, from its
/// name: `<start>-<until>.fp`, or `<start>.fp` from before files carried `until` (kept for the
/// longest window). `None` for any other name.
fn bucket_name(name: &std::ffi::OsStr) -> Option<(i64, i64)> {
    let stem = name.to_str()?.strip_suffix(".fp")?;
    match stem.split_once('-') {
        Some((start, until)) => Some((start.parse().ok()?, until.parse().ok()?)),
        None => {
            let start = stem.parse().ok()?;
            Some((start, Lifetime::new(LONGEST_WINDOW_SECS).last_remembered(start)))
        }
    }
}

/// Appends a fingerprint to the file of the bucket opened at `start` and remembered through
/// `until`, opening it (0600, appending) the first time, and cutting off a partial record it may
/// end with.
fn append(file: &mut Option<JournalFile>, dir: &Path, start: i64, until: i64, fingerprint: u64) -> std::io::Result<()> {
    let journal = match file {
        Some(journal) => journal,
        None => {
            let mut opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(bucket_path(dir, start, until))?;
            let len = opened.metadata()?.len();
            let whole = cut_to_whole_records(&mut opened, len)?;
            file.insert(JournalFile { file: opened, whole })
        }
    };
    let appended = append_record(&mut journal.file, &mut journal.whole, fingerprint);
    if appended.is_err()
        && journal
            .file
            .metadata()
            .map_or(true, |metadata| metadata.len() != journal.whole)
    {
        // The record is cut short and could not be cut off: reopen (and repair) next time.
        *file = None;
    }
    appended
}

/// Bytes of a journal record: one fingerprint.
const RECORD_BYTES: u64 = 8;

/// Cuts a journal file of `len` bytes back to its whole records; returns their length.
fn cut_to_whole_records(file: &mut impl Truncate, len: u64) -> std::io::Result<u64> {
    let whole = len - len % RECORD_BYTES;
    if whole != len {
        file.truncate_to(whole)?;
    }
    Ok(whole)
}

/// Appends one record to `file`, whose whole records end at `whole`. A write that fails part
/// way (a full disk, a file size limit) is cut back to `whole` at once, so that the records
/// after it stay aligned: left in place, it would shift them, and the next start would read
/// them as other fingerprints, forgetting nonces accepted after it.
fn append_record(file: &mut impl Truncate, whole: &mut u64, fingerprint: u64) -> std::io::Result<()> {
    match file.write_all(&fingerprint.to_le_bytes()) {
        Ok(()) => {
            *whole += RECORD_BYTES;
            Ok(())
        }
        Err(error) => {
            if let Err(cut) = file.truncate_to(*whole) {
                tracing::error!(%cut, "cannot cut a partial record off the replay journal");
            }
            Err(error)
        }
    }
}

/// Opens a file the journal made, refusing anything else planted in its place: a symlink (it
/// would read or cut a file elsewhere), a FIFO (it would block the start) or a device. Opened
/// without blocking, then checked to be a regular file.
fn open_regular(path: &Path, write: bool) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other(
            "not a regular file; the journal makes only regular files, so remove it",
        ));
    }
    Ok(file)
}

/// The journal's fingerprint key: read, or made (32 random bytes, 0600) the first time.
fn journal_key(dir: &Path) -> Result<[u8; 32], JournalError> {
    let path = dir.join("key");
    let read = open_regular(&path, false).and_then(|mut file| {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map(|_| bytes)
    });
    match read {
        Ok(bytes) => bytes.as_slice().try_into().map_err(|_| JournalError::BadKey {
            path: path.clone(),
            dir: dir.to_owned(),
            len: bytes.len() as u64,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let fingerprints_remain = std::fs::read_dir(dir)
                .map_err(|source| JournalError::Io {
                    operation: "read the replay journal directory",
                    path: dir.to_owned(),
                    source,
                })?
                .filter_map(Result::ok)
                .any(|entry| bucket_name(&entry.file_name()).is_some());
            if fingerprints_remain {
                return Err(JournalError::MissingKey {
                    path,
                    dir: dir.to_owned(),
                });
            }
            let mut key = [0; 32];
            getrandom::fill(&mut key).expect("the operating system's random source");
            let io = |source| JournalError::Io {
                operation: "write the replay journal key",
                path: path.clone(),
                source,
            };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            file.write_all(&key).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(source) => Err(JournalError::Io {
            operation: "read the replay journal key",
            path,
            source,
        }),
    }
}

/// Counts one more nonce of `keyid`, allocating its name only the first time.
fn count_one(counts: &mut HashMap<Box<str>, usize>, keyid: &str) {
    match counts.get_mut(keyid) {
        Some(count) => *count = count.saturating_add(1),
        None => {
            counts.insert(keyid.into(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: i64 = 600;

    /// A file with `room` bytes left: a write takes what fits, then fails as a full disk does.
    struct Filling {
        bytes: Vec<u8>,
        room: usize,
    }

    impl std::io::Write for Filling {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            let taken = bytes.len().min(self.room);
            self.bytes.extend_from_slice(&bytes[..taken]);
            self.room -= taken;
            Ok(taken)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Truncate for Filling {
        fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
            self.bytes.truncate(usize::try_from(len).unwrap());
            Ok(())
        }
    }

    fn records(bytes: &[u8]) -> Vec<u64> {
        assert_eq!(bytes.len() % 8, 0, "whole records only: {} bytes", bytes.len());
        bytes
            .chunks_exact(8)
            .map(|record| u64::from_le_bytes(record.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_journal_directory_others_control_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let state = tempfile::tempdir().unwrap();
        let open = |dir: &Path| ReplayCache::open(100, 60, WINDOW, dir, 1_000);
        // Made by the daemon: fine.
        open(&state.path().join("replay")).unwrap();
        // Writable by others.
        let shared = state.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = open(&shared).unwrap_err().to_string();
        assert!(error.contains("may be written by others (mode 777)"), "{error}");
        // A link to a directory elsewhere.
        let elsewhere = tempfile::tempdir().unwrap();
        let link = state.path().join("linked");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        let error = open(&link).unwrap_err().to_string();
        assert!(error.contains("is not a directory (a link?)"), "{error}");
        assert_eq!(
            std::fs::read_dir(elsewhere.path()).unwrap().count(),
            0,
            "nothing written there"
        );
    }

    #[test]
    fn a_record_written_part_way_is_cut_off_at_once_and_the_next_stays_aligned() {
        let mut file = Filling {
            bytes: Vec::new(),
            room: 20,
        };
        let mut whole = 0;
        append_record(&mut file, &mut whole, 1).unwrap();
        append_record(&mut file, &mut whole, 2).unwrap();
        // Four bytes of the third fit, then the disk is full.
        append_record(&mut file, &mut whole, 3).unwrap_err();
        assert_eq!(file.bytes.len(), 16);
        assert_eq!(whole, 16);
        // Room again: the next record follows the whole ones, and all read back.
        file.room = 64;
        append_record(&mut file, &mut whole, 4).unwrap();
        assert_eq!(records(&file.bytes), [1, 2, 4]);
    }

    #[test]
    fn a_journal_file_that_ends_part_way_is_repaired_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = [1u64.to_le_bytes(), 2u64.to_le_bytes()].concat();
        bytes.extend_from_slice(&[9, 9, 9]);
        std::fs::write(bucket_path(dir.path(), 100, 800), &bytes).unwrap();
        let mut file = None;
        append(&mut file, dir.path(), 100, 800, 3).unwrap();
        assert_eq!(
            records(&std::fs::read(bucket_path(dir.path(), 100, 800)).unwrap()),
            [1, 2, 3]
        );
    }

    #[test]
    fn a_journal_remembers_across_a_restart_and_drops_expired_buckets() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("replay");
        let cache = ReplayCache::open(100, 60, WINDOW, &journal, 1_000).unwrap();
        cache.accept("k", "n1", 1_000).unwrap();
        // Another bucket: the width is 38 s for a 600 s window.
        cache.accept("k", "n2", 1_100).unwrap();
        drop(cache);
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&journal), 0o700);
        assert_eq!(mode(&journal.join("key")), 0o600);
        assert_eq!(mode(&journal.join("1000-1637.fp")), 0o600);

        let restarted = ReplayCache::open(100, 60, WINDOW, &journal, 1_200).unwrap();
        assert_eq!(restarted.accept("k", "n1", 1_200), Err(ReplayError::Replayed));
        assert_eq!(restarted.accept("k", "n2", 1_200), Err(ReplayError::Replayed));
        restarted.accept("k", "n3", 1_200).unwrap();
        drop(restarted);

        // Past the first bucket's last remembered second (1,000 + 37 + 600), before the second's.
        let later = 1_638;
        let again = ReplayCache::open(100, 60, WINDOW, &journal, later).unwrap();
        assert!(!again.seen("k", "n1", later));
        assert!(again.seen("k", "n2", later) && again.seen("k", "n3", later));
        assert!(
            !journal.join("1000-1637.fp").exists(),
            "an expired bucket's file is removed"
        );
        assert_eq!(again.len(), 2);
    }

    /// Attack of 2026-12-01: a restart with a shorter window judged the journal by it, removed a
    /// bucket the longer window still needed, and a request signed for the future was accepted
    /// twice.
    #[test]
    fn a_restart_with_a_shorter_window_remembers_what_the_longer_one_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("replay");
        let long = ReplayCache::open(100, 60, 120, &journal, 1_000).unwrap();
        long.accept("k", "future", 1_000).unwrap();
        let until = last_remembered(&long, 1_000);
        drop(long);
        let short = ReplayCache::open(100, 60, 10, &journal, 1_050).unwrap();
        for now in [1_050, 1_000 + 120, until] {
            assert_eq!(short.accept("k", "future", now), Err(ReplayError::Replayed), "at {now}");
        }
        assert!(
            !short.seen("k", "future", until + 1),
            "forgotten once the long window ends"
        );
        drop(short);
        // A file named the older way (no `until`) is kept for the longest window there is.
        std::fs::write(journal.join("5000.fp"), 7_u64.to_le_bytes()).unwrap();
        let restarted = ReplayCache::open(100, 60, 10, &journal, 5_000 + LONGEST_WINDOW_SECS).unwrap();
        assert_eq!(restarted.len(), 1);
    }

    /// Attack of 2026-12-01: after the clock had been years ahead, the bucket opened then took
    /// every new nonce, so none expired and the cache stayed full.
    #[test]
    fn a_bucket_from_a_clock_once_ahead_takes_no_new_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("replay");
        let ahead = 2_000_000_000;
        let cache = ReplayCache::open(3, 1_000, WINDOW, &journal, ahead).unwrap();
        cache.accept("k", "from the future", ahead).unwrap();
        drop(cache);
        let cache = ReplayCache::open(3, 1_000, WINDOW, &journal, 1_000).unwrap();
        cache.accept("k", "a", 1_000).unwrap();
        cache.accept("k", "b", 1_001).unwrap();
        let Err(ReplayError::Full { retry_after }) = cache.accept("k", "c", 1_002) else {
            panic!("the cache of 3 is full");
        };
        let own = u64::try_from(last_remembered(&cache, 1_000) - 1_002 + 1).unwrap();
        assert_eq!(retry_after, own, "room comes back when a and b expire, not in 2033");
        let later = last_remembered(&cache, 1_000) + 1;
        cache.accept("k", "c", later).unwrap();
        assert!(
            cache.seen("k", "from the future", later),
            "what the clock accepted then stays"
        );
        assert!(!cache.seen("k", "a", later));
    }

    /// Attack of 2026-12-01: an 80 MB journal file was read whole into a cache of 100.
    #[test]
    fn a_journal_larger_than_the_cache_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("replay");
        drop(ReplayCache::open(100, 60, WINDOW, &journal, 1_000).unwrap());
        let records: Vec<u8> = (0..101_u64).flat_map(u64::to_le_bytes).collect();
        std::fs::write(bucket_path(&journal, 990, 1_600), &records).unwrap();
        let error = ReplayCache::open(100, 60, WINDOW, &journal, 1_000).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(
                error,
                JournalError::TooMany {
                    count: 101,
                    capacity: 100,
                    wait_secs: 601,
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("gateway.replay_cache_entries"), "{text}");
        // Room for them: loaded.
        assert_eq!(ReplayCache::open(101, 60, WINDOW, &journal, 1_000).unwrap().len(), 101);
    }

    #[test]
    fn a_cut_record_is_ignored_and_a_damaged_key_refused() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("replay");
        let cache = ReplayCache::open(100, 60, WINDOW, &journal, 1_000).unwrap();
        cache.accept("k", "n1", 1_000).unwrap();
        drop(cache);
        // A crash in the middle of a record leaves a few bytes: they were never accepted.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(journal.join("1000-1637.fp"))
            .unwrap();
        file.write_all(&[1, 2, 3]).unwrap();
        let cache = ReplayCache::open(100, 60, WINDOW, &journal, 1_001).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.accept("k", "n1", 1_001), Err(ReplayError::Replayed));
        // The same bucket takes another nonce after the restart, aligned after the repair.
        cache.accept("k", "n2", 1_002).unwrap();
        drop(cache);
        assert_eq!(std::fs::metadata(journal.join("1000-1637.fp")).unwrap().len(), 16);
        let cache = ReplayCache::open(100, 60, WINDOW, &journal, 1_003).unwrap();
        assert_eq!(cache.accept("k", "n2", 1_003), Err(ReplayError::Replayed));
        drop(cache);

        std::fs::write(journal.join("key"), b"short").unwrap();
        let error = ReplayCache::open(100, 60, WINDOW, &journal, 1_002).unwrap_err();
        assert!(error.to_string().contains("damaged"), "{error}");

        // A key removed while fingerprints remain: a new key would let every one of them be
        // replayed (found by an attack on the release build: a captured request passed again).
        std::fs::remove_file(journal.join("key")).unwrap();
        let error = ReplayCache::open(100, 60, WINDOW, &journal, 1_002).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
        assert!(!journal.join("key").exists(), "no new key is made");
    }

    /// A symlink or a FIFO planted among the journal's files (found by an attack on the release
    /// build): the start refuses with the file's name, at once, and nothing outside the
    /// directory is touched. Before, a symlink's target was cut to whole records (as root, any
    /// file), a FIFO hung the start for good, and a symlinked key was read through.
    #[test]
    fn journal_files_that_are_not_regular_files_are_refused_without_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("replay");
        drop(ReplayCache::open(100, 60, WINDOW, &journal, 1_000).unwrap());
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"0123456789abc").unwrap();
        std::os::unix::fs::symlink(&outside, journal.join("1000.fp")).unwrap();
        let error = ReplayCache::open(100, 60, WINDOW, &journal, 1_001).unwrap_err();
        assert!(error.to_string().contains("1000.fp"), "{error}");
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            b"0123456789abc",
            "the target is untouched"
        );
        std::fs::remove_file(journal.join("1000.fp")).unwrap();

        nix::unistd::mkfifo(
            &journal.join("1000.fp"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let opening = journal.clone();
        std::thread::spawn(move || {
            sender
                .send(ReplayCache::open(100, 60, WINDOW, &opening, 1_001).map(drop))
                .ok();
        });
        let opened = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a journal with a FIFO in it returns");
        let error = opened.unwrap_err();
        assert!(error.to_string().contains("1000.fp"), "{error}");
        std::fs::remove_file(journal.join("1000.fp")).unwrap();

        let key = journal.join("key");
        let real = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        std::fs::write(&outside, &real).unwrap();
        std::os::unix::fs::symlink(&outside, &key).unwrap();
        let error = ReplayCache::open(100, 60, WINDOW, &journal, 1_001).unwrap_err();
        assert!(error.to_string().contains("key"), "{error}");
    }

    /// The last second the nonces of a bucket opened at `start` are remembered.
    fn last_remembered(cache: &ReplayCache, start: i64) -> i64 {
        cache.lock().lifetime.last_remembered(start)
    }

    /// The seconds of acceptance per bucket.
    fn width(cache: &ReplayCache) -> i64 {
        cache.lock().lifetime.width
    }

    /// Bytes the fingerprint set and the buckets hold, from their capacities. The set's layout
    /// is hashbrown's: a slot of 8 bytes and a control byte per slot, at most 7/8 of the slots
    /// used (so `capacity * 8 / 7` slots), plus a group of 16 mirrored control bytes.
    fn allocated_bytes(cache: &ReplayCache) -> usize {
        fn map_bytes(map: &HashMap<Box<str>, usize>) -> usize {
            let slot = std::mem::size_of::<(Box<str>, usize)>() + 1;
            let keys: usize = map.keys().map(|keyid| keyid.len()).sum();
            (map.capacity() * 8).div_ceil(7) * slot + keys
        }
        let inner = cache.lock();
        let set = (inner.live.capacity() * 8).div_ceil(7) * 9 + 16;
        let buckets: usize = inner
            .buckets
            .iter()
            .map(|bucket| bucket.fingerprints.capacity() * 8 + map_bytes(&bucket.per_key))
            .sum();
        let queue = inner.buckets.capacity() * std::mem::size_of::<Bucket>();
        set + buckets + queue + map_bytes(&inner.per_key)
    }

    #[test]
    fn a_nonce_is_accepted_once_per_key_and_forgotten_after_its_window() {
        let cache = ReplayCache::new(10, 60, WINDOW);
        cache.accept("k1", "n1", 1_000).unwrap();
        assert_eq!(cache.accept("k1", "n1", 1_001), Err(ReplayError::Replayed));
        cache.accept("k2", "n1", 1_001).unwrap();
        assert!(
            cache.seen("k1", "n1", 1_000 + WINDOW),
            "the window's last second still counts"
        );
        // The nonce's bucket took nonces through 1_000 + width - 1; after that second's window
        // every signature in it would fail the skew check, so the bucket may go.
        let last = last_remembered(&cache, 1_000);
        assert_eq!(last, 1_000 + width(&cache) - 1 + WINDOW);
        assert!(cache.seen("k1", "n1", last));
        assert!(!cache.seen("k1", "n1", last + 1));
        cache.accept("k1", "n1", last + 1).unwrap();
        assert_eq!(cache.len(), 1, "k2's nonce went with the same bucket");
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let cache = ReplayCache::new(2, 60, WINDOW);
        cache.accept("k", "a", 0).unwrap();
        cache.accept("k", "b", 0).unwrap();
        // Room comes back when the oldest bucket expires, and the refusal says when.
        let wait = u64::try_from(last_remembered(&cache, 0)).unwrap();
        assert_eq!(cache.accept("k", "c", 1), Err(ReplayError::Full { retry_after: wait }));
        assert_eq!(
            cache.accept("k", "a", 1),
            Err(ReplayError::Replayed),
            "old nonces are still known"
        );
        assert_eq!(
            cache.accept("k", "c", last_remembered(&cache, 0)),
            Err(ReplayError::Full { retry_after: 1 })
        );
        cache.accept("k", "c", last_remembered(&cache, 0) + 1).unwrap();
    }

    #[test]
    fn one_key_cannot_take_another_keys_room() {
        // 1 a minute over 600 s: buckets of 38 s, a share of 1 + ceil(638 / 60) = 12.
        let cache = ReplayCache::new(100, 1, WINDOW);
        assert_eq!(cache.share(), 12);
        for nonce in 0..12 {
            cache.accept("greedy", &nonce.to_string(), 100).unwrap();
        }
        let retry_after = last_remembered(&cache, 100) - 150 + 1;
        assert_eq!(retry_after, 588);
        assert_eq!(
            cache.accept("greedy", "12", 150),
            Err(ReplayError::KeyFull {
                retry_after: retry_after.try_into().unwrap()
            })
        );
        cache.accept("other", "12", 150).unwrap();
        // The greedy key gets room back as its own nonces expire.
        cache.accept("greedy", "12", 150 + retry_after).unwrap();
    }

    #[test]
    fn the_share_covers_what_the_rate_limit_lets_through() {
        // 120 a minute over 600 s: width ceil(601 / 16) = 38, so 120 + ceil(120 * 638 / 60).
        assert_eq!(ReplayCache::new(1, 120, 600).share(), 120 + 1_276);
        assert_eq!(width(&ReplayCache::new(1, 120, 600)), 38);
        // 10 a minute: 10 + ceil(10 * 638 / 60) = 10 + 107.
        assert_eq!(ReplayCache::new(1, 10, 600).share(), 117);
        // No window: buckets of 1 s, 60 + ceil(60 * 1 / 60).
        assert_eq!(ReplayCache::new(1, 60, 0).share(), 61);
    }

    #[test]
    fn the_rate_limiter_cannot_overflow_a_share() {
        // A burst of 120 at t0, then 2 a second, for three lifetimes.
        let per_minute = 120;
        let cache = ReplayCache::new(usize::MAX, per_minute, WINDOW);
        let lifetime = WINDOW + width(&cache) - 1;
        let t0 = 1_000_000;
        let mut sent = 0_u64;
        let mut peak = 0;
        for nonce in 0..per_minute {
            cache.accept("k", &format!("burst {nonce}"), t0).unwrap();
        }
        for now in t0 + 1..=t0 + 3 * lifetime {
            for _ in 0..per_minute.div_ceil(60) {
                sent += 1;
                cache.accept("k", &sent.to_string(), now).unwrap();
            }
            peak = peak.max(cache.len());
        }
        // The first bucket, with the burst, lives through t0 + lifetime: the peak is then.
        assert_eq!(peak, 120 + 2 * 637);
        assert!(peak <= cache.share());
    }

    #[test]
    fn the_share_holds_for_any_rate_window_and_phase() {
        // A greedy sender against a GCRA limiter of `per_minute` with bursts of as many: the burst
        // at t0 (at a fraction `phase / per_minute` into its second), then one request every
        // 60 / per_minute seconds. Time is counted in ticks of 1 / per_minute s.
        for per_minute in [1_u32, 7, 61, 120, 1_000] {
            for window in [0, 1, 59, 600, 7_200] {
                let ticks_per_second = i64::from(per_minute);
                for phase in [0, ticks_per_second / 2, ticks_per_second - 1] {
                    let cache = ReplayCache::new(usize::MAX, per_minute, window);
                    let t0 = 1_000_000;
                    let start = t0 * ticks_per_second + phase;
                    let end = (t0 + 2 * (window + width(&cache)) + 60) * ticks_per_second;
                    for nonce in 0..per_minute {
                        cache.accept("k", &format!("burst {nonce}"), t0).unwrap();
                    }
                    let mut tick = start + 60;
                    while tick < end {
                        let now = tick.div_euclid(ticks_per_second);
                        let outcome = cache.accept("k", &tick.to_string(), now);
                        assert_eq!(
                            outcome,
                            Ok(()),
                            "{per_minute}/min, window {window}, phase {phase}, t {now}"
                        );
                        tick += 60;
                    }
                }
            }
        }
    }

    #[test]
    fn a_nonce_is_refused_through_its_whole_window() {
        let cache = ReplayCache::new(10, 60, WINDOW);
        let width = width(&cache);
        for offset in 0..width {
            let cache = ReplayCache::new(10, 60, WINDOW);
            let opened = 1_000;
            cache.accept("k", "opens the bucket", opened).unwrap();
            let accepted = opened + offset;
            cache.accept("k", "n", accepted).unwrap();
            for now in accepted..=accepted + WINDOW {
                assert!(cache.seen("k", "n", now), "forgotten at {now}, accepted at {accepted}");
                assert_eq!(cache.accept("k", "n", now), Err(ReplayError::Replayed));
            }
            let mut now = accepted + WINDOW + 1;
            while cache.accept("k", "n", now).is_err() {
                now += 1;
            }
            // Again as soon as its bucket expires: exactly its window for the bucket's last second.
            assert_eq!(now, opened + width - 1 + WINDOW + 1);
            assert!(now <= accepted + WINDOW + width);
        }
    }

    #[test]
    fn bucket_expiry_frees_capacity() {
        let cache = ReplayCache::new(1_000, 60_000, WINDOW);
        for nonce in 0..1_000 {
            cache
                .accept(&format!("k{}", nonce % 7), &nonce.to_string(), 10 + nonce / 10)
                .unwrap();
        }
        assert!(matches!(
            cache.accept("k0", "one more", 110),
            Err(ReplayError::Full { .. })
        ));
        let longest = WINDOW + width(&cache) - 1;
        let after = 10 + 99 + longest + 1;
        for nonce in 0..1_000 {
            cache
                .accept(&format!("k{}", nonce % 7), &nonce.to_string(), after)
                .unwrap();
        }
        assert_eq!(cache.len(), 1_000);
        assert!(cache.lock().per_key.values().all(|held| *held <= 143));
    }

    #[test]
    fn key_full_waits_for_the_keys_oldest_bucket() {
        // 1 a minute over 60 s: buckets of ceil(61 / 16) = 4 s, a share of 1 + ceil(64 / 60) = 3.
        let cache = ReplayCache::new(100, 1, 60);
        assert_eq!((width(&cache), cache.share()), (4, 3));
        cache.accept("other", "a", 90).unwrap();
        cache.accept("greedy", "a", 100).unwrap();
        cache.accept("greedy", "b", 104).unwrap();
        cache.accept("greedy", "c", 105).unwrap();
        // The greedy key's oldest bucket opened at 100, not the other key's at 90.
        let now = 110;
        let expected = 100 + 4 - 1 + 60 - now + 1;
        assert_eq!(
            cache.accept("greedy", "d", now),
            Err(ReplayError::KeyFull {
                retry_after: expected.try_into().unwrap()
            })
        );
        assert_eq!(
            cache.accept("greedy", "d", now + expected - 1),
            Err(ReplayError::KeyFull { retry_after: 1 })
        );
        cache.accept("greedy", "d", now + expected).unwrap();
        assert!(cache.seen("greedy", "b", now + expected));
    }

    #[test]
    fn a_clock_stepping_back_neither_panics_nor_forgets() {
        let cache = ReplayCache::new(100, 60, WINDOW);
        cache.accept("k", "a", 1_000).unwrap();
        cache.accept("k", "b", 995).unwrap();
        assert_eq!(cache.accept("k", "a", 990), Err(ReplayError::Replayed));
        // b goes to a bucket of its own second, not into the later one.
        assert_eq!(cache.lock().buckets.len(), 2);
        // Each is remembered through its own window, whatever the order they came in.
        for now in [995 + WINDOW, last_remembered(&cache, 995)] {
            assert!(cache.seen("k", "b", now), "b forgotten at {now}");
        }
        for now in [1_000 + WINDOW, last_remembered(&cache, 1_000)] {
            assert!(cache.seen("k", "a", now), "a forgotten at {now}");
        }
        cache.accept("k", "c", 1_000 + width(&cache)).unwrap();
        // A second the 1,000 bucket takes, after the clock stepped back again.
        cache.accept("k", "d", 1_001).unwrap();
        // b's bucket expired at the last look above; a's took d; c opened one.
        assert_eq!(cache.lock().buckets.len(), 2);
        assert!(cache.seen("k", "d", 1_001 + WINDOW));

        // Nonsense times and limits refuse or accept, never panic.
        for window in [i64::MIN, -1, 0, i64::MAX] {
            let cache = ReplayCache::new(0, u32::MAX, window);
            for now in [i64::MAX, 0, i64::MIN, -1, i64::MAX] {
                let _ = cache.accept("k", &now.to_string(), now);
                let _ = cache.seen("k", "x", now);
            }
            assert_eq!(cache.len(), 1, "a capacity of 0 counts as 1");
        }
    }

    #[test]
    fn concurrent_copies_are_accepted_once() {
        let cache = ReplayCache::new(10_000, 60_000, WINDOW);
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for nonce in 0..1_000 {
                        if cache.accept("k", &nonce.to_string(), 1_000).is_ok() {
                            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(accepted.into_inner(), 1_000);
    }

    #[test]
    fn fingerprints_keep_keyid_and_nonce_apart() {
        let cache = ReplayCache::new(10, 60, WINDOW);
        cache.accept("ab", "c", 0).unwrap();
        cache.accept("a", "bc", 0).unwrap();
        assert!(!cache.seen("c", "ab", 0));
    }

    #[test]
    fn a_hundred_thousand_nonces_take_under_40_bytes_each() {
        // Spread over a nonce's lifetime (17 buckets), and in one burst (one bucket).
        for per_second in [157, 100_000] {
            let cache = ReplayCache::new(100_000, 10_000, WINDOW);
            assert!(cache.share() >= 100_000);
            for nonce in 0..100_000_i64 {
                let keyid = format!("device-{}", nonce % 10);
                cache
                    .accept(&keyid, &format!("{nonce:032x}"), 1_000 + nonce / per_second)
                    .unwrap();
            }
            assert_eq!(cache.len(), 100_000);
            let per_entry = allocated_bytes(&cache) as f64 / 100_000.0;
            eprintln!("{per_second}/s: {per_entry:.1} bytes per entry");
            assert!(per_entry < 40.0, "{per_entry} bytes per entry");
        }
    }

    #[test]
    fn a_burst_does_not_pin_memory() {
        let cache = ReplayCache::new(100_000, 10_000, WINDOW);
        for nonce in 0..100_000 {
            cache.accept("k", &nonce.to_string(), 1_000).unwrap();
        }
        let after = last_remembered(&cache, 1_000) + 1;
        cache.accept("k", "later", after).unwrap();
        let inner = cache.lock();
        assert!(inner.live.capacity() <= MIN_SHRINK_SLOTS, "{}", inner.live.capacity());
        assert_eq!((inner.buckets.len(), inner.per_key.get("k").copied()), (1, Some(1)));
    }
}
