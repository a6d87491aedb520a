//! The secrets vault: the one place secret values live, sealed in the daemon's database.
//!
//! Each entry is sealed with XChaCha20-Poly1305 under a random data key, with its name as
//! associated data. The data key is stored only wrapped, in a key slot, under a key-encryption
//! key derived from a key source that is never stored beside the data (see [`source`]), except
//! for the generated key file of a vault that was given no other source, which is warned about.
//!
//! Opening checks the key first (the slot's key check value): a wrong key is an error naming the
//! source tried, and nothing is changed. A rekey writes a second, `pending` slot wrapping the same
//! data key under the new key; the switch is one transaction, and until then the old key opens
//! the vault. Entries are never re-encrypted by a rekey, so none can be lost by one.
//!
//! Values are decrypted on each use into types that zeroize on drop; the sealed rows are kept in
//! memory (at most [`MAX_ENTRIES`] of at most [`MAX_VALUE_BYTES`]) so that a lookup touches no
//! database. Last use is recorded at most once a minute per entry, by a task that stops on the
//! daemon's token.

pub mod crypto;
pub mod source;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::config::Secret;
use crate::storage::{SlotName, Storage, StorageError, VaultEntryRecord, VaultSlotRecord};
use crate::util::unix_now;
use crypto::{Argon2Params, CryptoError, DataKey, EntryCipher, Kdf, Root};
pub use source::{KeySource, SourceInputs, SourceKind};

/// The AEAD of entries and of the wrapped data key, as status names it.
pub const CIPHER: &str = "xchacha20-poly1305";
/// Most entries a vault holds.
pub const MAX_ENTRIES: usize = 256;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Longest entry name.
pub const MAX_NAME_CHARS: usize = 64;
/// Seconds between two recordings of one entry's last use.
const USE_GRANULARITY_SECS: i64 = 60;
/// Uses waiting to be recorded; beyond it a use is recorded on a later lookup.
const USE_QUEUE: usize = 32;
/// Values shorter than this show no preview at all: four characters of an eight-character token
/// are half of it.
const PREVIEW_MIN_CHARS: usize = 16;

/// Errors of the vault, each naming what failed. None carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A key source is present but unusable.
    #[error("vault key source {tried}: {problem}")]
    KeySource {
        /// Which source.
        tried: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A key file cannot be written.
    #[error("cannot write the vault key file {path}")]
    WriteKey {
        /// The file.
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The vault exists but no key source is present.
    #[error(
        "the vault in the database is sealed with a {sealed_with} key, and no key source is present: supply {}; nothing was changed",
        .sealed_with.how_to_supply()
    )]
    NoKey {
        /// What sealed it.
        sealed_with: SourceKind,
    },
    /// The key source present does not open the vault.
    #[error(
        "the key from the {tried} does not open the vault, which is sealed with a {sealed_with} key: supply {}{}; nothing was changed",
        .sealed_with.how_to_supply(),
        pending_note(*.pending)
    )]
    WrongKey {
        /// The source tried.
        tried: String,
        /// What sealed it.
        sealed_with: SourceKind,
        /// The kind of key a pending rekey waits for, which would open it too.
        pending: Option<SourceKind>,
    },
    /// A rekey is pending, and a new key file would drop it.
    #[error(
        "a rekey to a new {waiting_for} key is pending: restart blufiod with that key ({}) to complete it, or give another new key with `vault rekey --new-passphrase` or `--new-key FILE`, which replaces it",
        .waiting_for.how_to_supply()
    )]
    RekeyPending {
        /// The kind of key it waits for.
        waiting_for: SourceKind,
    },
    /// What the vault's rows hold is not what blufiod wrote.
    #[error("the vault's {what} is damaged or was changed outside blufiod; restore the database from a backup")]
    Damaged {
        /// What is damaged.
        what: String,
        #[source]
        source: CryptoError,
    },
    /// Deriving a key failed.
    #[error("cannot derive the vault key from the {tried}")]
    Derive {
        /// The source.
        tried: String,
        #[source]
        source: CryptoError,
    },
    /// A database step failed.
    #[error("cannot {operation}")]
    Storage {
        /// What was being done.
        operation: &'static str,
        #[source]
        source: StorageError,
    },
    /// No entry by that name.
    #[error("no secret named `{name}` in the vault; add it with `blufioctl config set-secret {name}`")]
    NotFound {
        /// The name.
        name: String,
    },
    /// A name outside the allowed form.
    #[error("`{name}` is not a secret name: {problem}")]
    InvalidName {
        /// The name, as given (names are not secret).
        name: String,
        /// Why.
        problem: &'static str,
    },
    /// A value outside the allowed form (never quoted).
    #[error("the value of secret `{name}` {problem}")]
    InvalidValue {
        /// The entry.
        name: String,
        /// Why.
        problem: String,
    },
    /// The vault holds as many entries as it may.
    #[error(
        "the vault holds {MAX_ENTRIES} secrets, as many as it may; delete one with `blufioctl config delete-secret NAME`"
    )]
    Full,
    /// A rekey needs a new key the daemon cannot make for this source.
    #[error("the vault key comes from the {tried}, which blufiod cannot replace: {fix}")]
    RekeyNeedsKey {
        /// The source in effect.
        tried: String,
        /// What to do.
        fix: &'static str,
    },
}

/// A key slot's description, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The kind of source that sealed it.
    pub source: SourceKind,
    /// How its key is derived.
    pub kdf: Kdf,
    /// Unix seconds.
    pub created_at: i64,
}

/// The vault's state, for `blufioctl vault status` (never a key or value).
#[derive(Debug, Clone)]
pub struct VaultStatus {
    /// The source in effect.
    pub source: KeySource,
    /// The slot that opens the vault.
    pub current: SlotInfo,
    /// A rekey waiting for its key to be put in place.
    pub pending: Option<SlotInfo>,
    /// Entries held.
    pub entries: usize,
}

/// One entry's description, for `list-secrets` (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change of value.
    pub updated_at: i64,
    /// Unix seconds of the last use by the daemon.
    pub last_used_at: Option<i64>,
    /// `…` and the last four characters, for values of 16 characters or more; else empty.
    pub preview: String,
}

/// The key a rekey moves to.
pub enum NewKey {
    /// A new random key, written by the daemon to the key file in effect (generated or
    /// `vault.key_file`); completes at once.
    Generate,
    /// A new passphrase; pending until blufiod starts with it.
    Passphrase(Zeroizing<String>),
    /// New key material (for a systemd credential or a key file the owner installs); pending until
    /// blufiod starts with it.
    Material(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Generate => "Generate",
            Self::Passphrase(_) => "Passphrase(..)",
            Self::Material(_) => "Material(..)",
        })
    }
}

/// What a rekey did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rekeyed {
    /// The new key is in place and the old one no longer opens the vault.
    Completed,
    /// The new key opens the vault once blufiod starts with it; the old one opens it until then.
    Pending(SourceKind),
}

/// The open vault. Made once by the composition root.
pub struct Vault {
    storage: Storage,
    /// Where the key comes from, read again by a reload and by [`Vault::opens`].
    inputs: SourceInputs,
    /// blufiod's uid: the owner a key file it writes must have.
    owner: u32,
    state: RwLock<State>,
    /// Serializes changes (set, delete, rekey): each is a database write, then the state.
    writing: tokio::sync::Mutex<()>,
    /// Changes with every change of an entry.
    generation: std::sync::atomic::AtomicU64,
    uses: tokio::sync::mpsc::Sender<(String, i64)>,
    pending_uses: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<(String, i64)>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Vault").finish_non_exhaustive()
    }
}

struct State {
    source: KeySource,
    data_key: DataKey,
    cipher: EntryCipher,
    current: SlotInfo,
    pending: Option<SlotInfo>,
    entries: BTreeMap<String, Entry>,
}

struct Entry {
    record: VaultEntryRecord,
    /// The last use written to the database.
    recorded_use: Option<i64>,
}

fn stored(operation: &'static str) -> impl FnOnce(StorageError) -> VaultError {
    move |source| VaultError::Storage { operation, source }
}

impl Vault {
    /// Opens the vault in `storage` with the first key source `inputs` finds, creating the vault
    /// (and, with no source at all, the generated key file) on first use. A wrong key changes
    /// nothing. A pending rekey whose key is now the one supplied is completed.
    pub async fn open(storage: Storage, inputs: SourceInputs) -> Result<Arc<Self>, VaultError> {
        let state = load_state(&storage, &inputs).await?;
        let (uses, receiver) = tokio::sync::mpsc::channel(USE_QUEUE);
        Ok(Arc::new(Self {
            storage,
            owner: inputs.euid,
            inputs,
            state: RwLock::new(state),
            writing: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
            uses,
            pending_uses: std::sync::Mutex::new(Some(receiver)),
        }))
    }

    /// The key source in effect.
    pub fn inputs(&self) -> &SourceInputs {
        &self.inputs
    }
}

/// The data key of a vault with these key slots, if the key `inputs` finds opens one of them.
fn opening_key(inputs: &SourceInputs, slots: &[VaultSlotRecord]) -> Result<Option<DataKey>, VaultError> {
    let Some(loaded) = inputs.load()? else {
        return Ok(None);
    };
    for slot in slots {
        if let Some(data_key) = try_slot(slot, &loaded)? {
            return Ok(Some(data_key));
        }
    }
    Ok(None)
}

/// Whether the key `inputs` finds opens the vault in `storage` (another database: an archive's)
/// and every entry in it, without writing anything. `Ok(false)` when the key opens no slot.
pub async fn opens_whole(storage: &Storage, inputs: &SourceInputs) -> Result<bool, VaultError> {
    let slots = storage
        .vault_slots()
        .await
        .map_err(stored("read the vault's key slots"))?;
    let Some(data_key) = opening_key(inputs, &slots)? else {
        return Ok(false);
    };
    let cipher = data_key.cipher();
    for record in storage
        .vault_entries()
        .await
        .map_err(stored("read the vault's entries"))?
    {
        open_record(&cipher, &record)?;
    }
    Ok(true)
}

/// Opens a stored entry. A failure means the row was changed (or moved to another name) or the
/// data key is not this vault's.
fn open_record(cipher: &EntryCipher, record: &VaultEntryRecord) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    cipher
        .open(&record.name, &record.nonce, &record.ciphertext)
        .map_err(|source| VaultError::Damaged {
            what: format!("entry `{}`", record.name),
            source,
        })
}

impl Vault {
    /// Opens the vault again from the database (after a restore swapped it), as at start.
    pub async fn reload(&self) -> Result<(), VaultError> {
        let _writing = self.writing.lock().await;
        let state = load_state(&self.storage, &self.inputs).await?;
        *self.write() = state;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("vault state poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("vault state poisoned")
    }
}

/// The vault's state read from `storage` with the first key source `inputs` finds (see
/// [`Vault::open`]).
async fn load_state(storage: &Storage, inputs: &SourceInputs) -> Result<State, VaultError> {
    {
        let slots = storage
            .vault_slots()
            .await
            .map_err(stored("read the vault's key slots"))?;
        let current = slots.iter().find(|slot| slot.slot == SlotName::Current);
        let pending = slots.iter().find(|slot| slot.slot == SlotName::Pending);
        let loaded = inputs.load()?;
        let records = storage
            .vault_entries()
            .await
            .map_err(stored("read the vault's entries"))?;
        let (loaded, data_key, current_info, pending_info) = match (current, loaded) {
            (None, loaded) => {
                if !records.is_empty() {
                    return Err(VaultError::Damaged {
                        what: format!("key slot ({} entries but no slot to open them)", records.len()),
                        source: CryptoError::Authentication,
                    });
                }
                let loaded = match loaded {
                    Some(loaded) => loaded,
                    None => {
                        let path = inputs.generated_path();
                        source::write_key(&path, &source::generate_key(), inputs.euid)?;
                        inputs.load()?.expect("the key file was just written")
                    }
                };
                let data_key = DataKey::generate();
                let slot = seal_slot(SlotName::Current, &loaded, &data_key)?;
                storage
                    .put_vault_slot(&slot)
                    .await
                    .map_err(stored("create the vault"))?;
                tracing::info!(source = %loaded.source.describe(), "vault created");
                let info = slot_info(&slot)?;
                (loaded, data_key, info, None)
            }
            (Some(current), None) => {
                return Err(VaultError::NoKey {
                    sealed_with: slot_info(current)?.source,
                });
            }
            (Some(current), Some(loaded)) => {
                let current_info = slot_info(current)?;
                if let Some(data_key) = try_slot(current, &loaded)? {
                    let pending_info = pending.map(slot_info).transpose()?;
                    (loaded, data_key, current_info, pending_info)
                } else if let Some(data_key) = match pending {
                    Some(pending) => try_slot(pending, &loaded)?,
                    None => None,
                } {
                    storage
                        .promote_vault_slot()
                        .await
                        .map_err(stored("complete the pending rekey"))?;
                    let promoted = slot_info(pending.expect("a pending slot opened"))?;
                    tracing::info!(source = %loaded.source.describe(), "vault rekey completed: the new key opens the vault, the old one no longer does");
                    retire_generated_key(inputs, current_info.source, &loaded.source);
                    (loaded, data_key, promoted, None)
                } else {
                    return Err(VaultError::WrongKey {
                        tried: loaded.source.describe(),
                        sealed_with: current_info.source,
                        pending: pending.map(slot_info).transpose()?.map(|pending| pending.source),
                    });
                }
            }
        };
        if loaded.source.beside_data {
            tracing::warn!(
                key = %loaded.source.path.as_deref().unwrap_or(std::path::Path::new("")).display(),
                "the vault key is a file in the state directory, beside the data it protects: a copy of the directory is a copy of the secrets. Use a systemd credential (LoadCredentialEncrypted=vault-key), vault.key_file elsewhere, or a passphrase; see `blufioctl vault rekey`"
            );
        }
        let cipher = data_key.cipher();
        let mut entries = BTreeMap::new();
        for record in records {
            // Every entry must open now, not at its first use.
            open_record(&cipher, &record)?;
            let recorded_use = record.last_used_at;
            entries.insert(record.name.clone(), Entry { record, recorded_use });
        }
        Ok(State {
            source: loaded.source,
            data_key,
            cipher,
            current: current_info,
            pending: pending_info,
            entries,
        })
    }
}

impl Vault {
    /// The value of `name`, decrypted now, for its owner: records the use.
    pub fn get(&self, name: &str) -> Result<Secret, VaultError> {
        self.open_entry(name, true)
    }

    /// The value of `name`, decrypted now, for a check (not a use: the last-use time stays).
    pub fn inspect(&self, name: &str) -> Result<Secret, VaultError> {
        self.open_entry(name, false)
    }

    fn open_entry(&self, name: &str, used: bool) -> Result<Secret, VaultError> {
        let now = unix_now();
        let (value, record_use) = {
            let mut state = self.write();
            let State { cipher, entries, .. } = &mut *state;
            let entry = entries
                .get_mut(name)
                .ok_or_else(|| VaultError::NotFound { name: name.to_owned() })?;
            let plain = open_record(cipher, &entry.record)?;
            if used {
                entry.record.last_used_at = Some(now);
            }
            let record_use = used && entry.recorded_use.is_none_or(|at| now - at >= USE_GRANULARITY_SECS);
            if record_use {
                entry.recorded_use = Some(now);
            }
            // The values were checked to be UTF-8 when set.
            (Secret(String::from_utf8_lossy(&plain).into_owned()), record_use)
        };
        if record_use {
            // A full queue skips this recording; a later use records it.
            let _ = self.uses.try_send((name.to_owned(), now));
        }
        Ok(value)
    }

    /// Records a use of `name` without decrypting it (a token compared elsewhere).
    pub fn note_use(&self, name: &str) {
        let now = unix_now();
        let record_use = {
            let mut state = self.write();
            let Some(entry) = state.entries.get_mut(name) else {
                return;
            };
            entry.record.last_used_at = Some(now);
            let due = entry.recorded_use.is_none_or(|at| now - at >= USE_GRANULARITY_SECS);
            if due {
                entry.recorded_use = Some(now);
            }
            due
        };
        if record_use {
            let _ = self.uses.try_send((name.to_owned(), now));
        }
    }

    /// A number that changes whenever an entry is set or deleted.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether an entry named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.read().entries.contains_key(name)
    }

    /// Creates or replaces the entry `name`; whether it was created.
    pub async fn set(&self, name: &str, value: &Secret) -> Result<bool, VaultError> {
        check_name(name)?;
        let bytes = value.expose().as_bytes();
        let invalid = |problem: String| VaultError::InvalidValue {
            name: name.to_owned(),
            problem,
        };
        if bytes.is_empty() {
            return Err(invalid("is empty; a secret needs a value".to_owned()));
        }
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!("has {} bytes; at most {MAX_VALUE_BYTES}", bytes.len())));
        }
        if value.expose().chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(invalid(
                "holds a control or invisible character (a line break, a tab, a zero-width or direction mark); a pasted key ends at its last visible character"
                    .to_owned(),
            ));
        }
        let _writing = self.writing.lock().await;
        let (nonce, ciphertext, exists) = {
            let state = self.read();
            let exists = state.entries.contains_key(name);
            if !exists && state.entries.len() >= MAX_ENTRIES {
                return Err(VaultError::Full);
            }
            let (nonce, ciphertext) = state.cipher.seal(name, bytes);
            (nonce, ciphertext, exists)
        };
        let record = self
            .storage
            .put_vault_entry(name, &nonce, &ciphertext)
            .await
            .map_err(stored("store a secret"))?;
        let recorded_use = record.last_used_at;
        self.write()
            .entries
            .insert(name.to_owned(), Entry { record, recorded_use });
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(!exists)
    }

    /// Deletes the entry `name`.
    pub async fn delete(&self, name: &str) -> Result<(), VaultError> {
        check_name(name)?;
        let _writing = self.writing.lock().await;
        if !self.contains(name) {
            return Err(VaultError::NotFound { name: name.to_owned() });
        }
        self.storage
            .delete_vault_entry(name)
            .await
            .map_err(stored("delete a secret"))?;
        self.write().entries.remove(name);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Every entry, by name, without values.
    pub fn list(&self) -> Vec<EntryInfo> {
        let state = self.read();
        state
            .entries
            .values()
            .map(|entry| {
                let record = &entry.record;
                let preview = state
                    .cipher
                    .open(&record.name, &record.nonce, &record.ciphertext)
                    .ok()
                    .map(|plain| preview_of(&String::from_utf8_lossy(&plain)))
                    .unwrap_or_default();
                EntryInfo {
                    name: record.name.clone(),
                    created_at: record.created_at,
                    updated_at: record.updated_at,
                    last_used_at: record.last_used_at,
                    preview,
                }
            })
            .collect()
    }

    /// The vault's state.
    pub fn status(&self) -> VaultStatus {
        let state = self.read();
        VaultStatus {
            source: state.source.clone(),
            current: state.current.clone(),
            pending: state.pending.clone(),
            entries: state.entries.len(),
        }
    }

    /// Rotates the key-encryption key. Entries are not touched: the data key is wrapped again.
    ///
    /// - [`NewKey::Generate`] with a key file in effect (generated or `vault.key_file`): a pending
    ///   slot under a new random key, the key file replaced atomically, then the slot promoted in
    ///   one transaction. A crash at any point leaves the file and a slot that match: the next
    ///   start opens with whichever key the file then holds.
    /// - a new passphrase or key material: a pending slot, which the next start with that key
    ///   promotes; the key in effect keeps opening the vault until then.
    pub async fn rekey(&self, new: NewKey) -> Result<Rekeyed, VaultError> {
        let _writing = self.writing.lock().await;
        let (source, pending) = {
            let state = self.read();
            (
                state.source.clone(),
                state.pending.as_ref().map(|pending| pending.source),
            )
        };
        let (kind, secret) = match new {
            NewKey::Generate => {
                let (SourceKind::Generated | SourceKind::KeyFile, Some(path)) = (source.kind, &source.path) else {
                    return Err(VaultError::RekeyNeedsKey {
                        tried: source.describe(),
                        fix: if source.kind == SourceKind::Passphrase {
                            "give a new passphrase with `blufioctl vault rekey --new-passphrase`"
                        } else {
                            "give new key material with `blufioctl vault rekey --new-key FILE` (for example from `openssl rand -hex 32`), then install it as the credential and restart"
                        },
                    });
                };
                // A new key file would silently drop a rekey the owner is in the middle of.
                if let Some(waiting_for) = pending {
                    return Err(VaultError::RekeyPending { waiting_for });
                }
                let material = source::generate_key();
                let slot = self.seal_pending(source.kind, material.clone()).await?;
                self.storage
                    .put_vault_slot(&slot)
                    .await
                    .map_err(stored("write the new key slot"))?;
                if let Err(error) = source::write_key(path, &material, self.owner) {
                    // The old key and slot still open the vault; the pending slot is useless.
                    self.drop_pending().await;
                    return Err(error);
                }
                self.storage
                    .promote_vault_slot()
                    .await
                    .map_err(stored("switch to the new key"))?;
                let mut state = self.write();
                state.current = slot_info(&slot)?;
                state.pending = None;
                return Ok(Rekeyed::Completed);
            }
            NewKey::Passphrase(passphrase) => {
                // As when it is read: trailing whitespace is not part of a passphrase.
                let passphrase = passphrase.trim_end();
                let chars = passphrase.chars().count();
                if chars < source::MIN_PASSPHRASE_CHARS || passphrase.len() > source::MAX_KEY_BYTES {
                    return Err(VaultError::KeySource {
                        tried: "new passphrase".to_owned(),
                        problem: format!(
                            "a passphrase has {} to {} characters, this one {chars}",
                            source::MIN_PASSPHRASE_CHARS,
                            source::MAX_KEY_BYTES
                        ),
                    });
                }
                (SourceKind::Passphrase, Zeroizing::new(passphrase.as_bytes().to_vec()))
            }
            NewKey::Material(material) => {
                if !(source::MIN_KEY_BYTES..=source::MAX_KEY_BYTES).contains(&material.len()) {
                    return Err(VaultError::KeySource {
                        tried: "new key".to_owned(),
                        problem: format!(
                            "it holds {} bytes; a key has {} to {} (make one with `openssl rand -hex 32`)",
                            material.len(),
                            source::MIN_KEY_BYTES,
                            source::MAX_KEY_BYTES
                        ),
                    });
                }
                let kind = if source.kind == SourceKind::Credential {
                    SourceKind::Credential
                } else {
                    SourceKind::KeyFile
                };
                (kind, material)
            }
        };
        let slot = self.seal_pending(kind, secret).await?;
        self.storage
            .put_vault_slot(&slot)
            .await
            .map_err(stored("write the new key slot"))?;
        self.write().pending = Some(slot_info(&slot)?);
        Ok(Rekeyed::Pending(kind))
    }

    /// A pending slot wrapping the data key under what `secret` derives to. The derivation
    /// (Argon2id: 19 MiB and tens of milliseconds) runs on a blocking thread and holds no lock.
    async fn seal_pending(&self, kind: SourceKind, secret: Zeroizing<Vec<u8>>) -> Result<VaultSlotRecord, VaultError> {
        let kdf = kdf_for(kind);
        let salt = crypto::random::<{ crypto::SALT_LEN }>();
        let root = tokio::task::spawn_blocking(move || Root::derive(&secret, kdf, &salt))
            .await
            .expect("key derivation panicked")
            .map_err(|source| VaultError::Derive {
                tried: format!("new {kind} key"),
                source,
            })?;
        Ok(slot_record(
            SlotName::Pending,
            kind,
            kdf,
            &salt,
            &root,
            &self.read().data_key,
        ))
    }

    async fn drop_pending(&self) {
        if let Err(error) = self.storage.delete_vault_slot(SlotName::Pending).await {
            tracing::warn!(error = %crate::error_chain(&error), "cannot remove an unused pending vault key slot");
        }
    }

    /// Records entries' last use in the database until `token` is cancelled. Run once.
    pub async fn record_uses(self: Arc<Self>, token: CancellationToken) {
        let Some(mut receiver) = self.pending_uses.lock().expect("vault uses poisoned").take() else {
            return;
        };
        loop {
            let (name, at) = tokio::select! {
                () = token.cancelled() => return,
                received = receiver.recv() => match received {
                    Some(used) => used,
                    None => return,
                },
            };
            if let Err(error) = self.storage.touch_vault_entry(&name, at).await {
                tracing::debug!(error = %crate::error_chain(&error), secret = %name, "cannot record a secret's use");
            }
        }
    }
}

/// Checks a name: 1 to 64 of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), VaultError> {
    match crate::config::secret_name_problem(name) {
        Some(problem) => Err(VaultError::InvalidName {
            name: name.chars().take(MAX_NAME_CHARS + 1).collect(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Whether `c` is invisible formatting that a paste can carry into a key unseen: zero-width
/// characters, direction marks and overrides, the byte-order mark, the soft hyphen.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// For a wrong key: what a pending rekey waits for, which would open the vault too.
fn pending_note(pending: Option<SourceKind>) -> String {
    pending.map_or_else(String::new, |kind| {
        format!(" (or, to complete the pending rekey, {})", kind.how_to_supply())
    })
}

/// `…` and the last four characters of a value of 16 characters or more.
fn preview_of(value: &str) -> String {
    let count = value.chars().count();
    if count < PREVIEW_MIN_CHARS {
        return String::new();
    }
    let last: String = value.chars().skip(count - 4).collect();
    format!("…{last}")
}

fn kdf_for(kind: SourceKind) -> Kdf {
    if kind.is_passphrase() {
        Kdf::Argon2id(crypto::ARGON2_MIN)
    } else {
        Kdf::Hkdf
    }
}

fn seal_slot(slot: SlotName, loaded: &source::Loaded, data_key: &DataKey) -> Result<VaultSlotRecord, VaultError> {
    let kdf = kdf_for(loaded.source.kind);
    let salt = crypto::random::<{ crypto::SALT_LEN }>();
    let root = Root::derive(&loaded.secret, kdf, &salt).map_err(|source| VaultError::Derive {
        tried: loaded.source.describe(),
        source,
    })?;
    Ok(slot_record(slot, loaded.source.kind, kdf, &salt, &root, data_key))
}

fn slot_record(
    slot: SlotName,
    kind: SourceKind,
    kdf: Kdf,
    salt: &[u8],
    root: &Root,
    data_key: &DataKey,
) -> VaultSlotRecord {
    let (nonce, wrapped_key) = root.wrap(data_key);
    VaultSlotRecord {
        slot,
        source: kind.as_str().to_owned(),
        kdf: kdf.as_str().to_owned(),
        argon2: match kdf {
            Kdf::Argon2id(params) => Some((
                i64::from(params.m_cost_kib),
                i64::from(params.t_cost),
                i64::from(params.p_cost),
            )),
            Kdf::Hkdf => None,
        },
        salt: salt.to_vec(),
        check_value: root.check_value().to_vec(),
        nonce,
        wrapped_key,
        created_at: unix_now(),
    }
}

fn slot_info(slot: &VaultSlotRecord) -> Result<SlotInfo, VaultError> {
    let damaged = |what: &str| VaultError::Damaged {
        what: format!("key slot ({what})"),
        source: CryptoError::Authentication,
    };
    let source = SourceKind::parse(&slot.source).ok_or_else(|| damaged("unknown source"))?;
    let kdf = match (slot.kdf.as_str(), slot.argon2) {
        ("hkdf-sha256", None) => Kdf::Hkdf,
        ("argon2id", Some((m, t, p))) => {
            let param = |value: i64| u32::try_from(value).map_err(|_| damaged("Argon2id parameter out of range"));
            Kdf::Argon2id(Argon2Params {
                m_cost_kib: param(m)?,
                t_cost: param(t)?,
                p_cost: param(p)?,
            })
        }
        _ => return Err(damaged("unknown key derivation")),
    };
    Ok(SlotInfo {
        source,
        kdf,
        created_at: slot.created_at,
    })
}

/// The data key, if `loaded` is the key of `slot`: the check value is compared before anything
/// is decrypted. A slot sealed for a passphrase is tried only with a passphrase, and key material
/// only with key material, so a source never pays for the other's derivation.
fn try_slot(slot: &VaultSlotRecord, loaded: &source::Loaded) -> Result<Option<DataKey>, VaultError> {
    let info = slot_info(slot)?;
    if info.source.is_passphrase() != loaded.source.kind.is_passphrase() {
        return Ok(None);
    }
    let root = Root::derive(&loaded.secret, info.kdf, &slot.salt).map_err(|source| VaultError::Derive {
        tried: loaded.source.describe(),
        source,
    })?;
    if !root.matches(&slot.check_value) {
        return Ok(None);
    }
    root.unwrap(&slot.nonce, &slot.wrapped_key)
        .map(Some)
        .map_err(|source| VaultError::Damaged {
            what: "wrapped data key (its key check matched)".to_owned(),
            source,
        })
}

/// After a rekey away from the generated key file completes, that file (a key beside the data)
/// no longer opens anything: remove it.
fn retire_generated_key(inputs: &SourceInputs, old: SourceKind, now: &KeySource) {
    if old != SourceKind::Generated || now.kind == SourceKind::Generated {
        return;
    }
    let path = inputs.generated_path();
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(key = %path.display(), "removed the old generated vault key file"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(key = %path.display(), %error, "cannot remove the old generated vault key file"),
    }
}

#[cfg(test)]
mod tests;
