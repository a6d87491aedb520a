//! Devices allowed to sign gateway requests: registration (public keys only, validated), listing,
//! immediate revocation, and key lookup for verification.
//!
//! This module never sees a private key and never decides whether a request is authentic; the
//! gateway does, with the key it gets from here.
//!
//! Lookups are served from an in-memory copy of the active devices with their keys already
//! decoded, so a signed request costs no database read and no point decompression. The copy is
//! dropped by every change made through the registry (after the change commits, so the next
//! request sees it: revocation stays immediate) and whenever the database's epoch moves (a restore
//! replaced the file). A load that raced a change is never installed: the copy carries the
//! generation it was read at. It holds only the active devices, which only the owner adds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use blufio_proto::httpsig;
use ed25519_dalek::VerifyingKey;

/// A registered device as the registry hands it out: storage's plain row (no database type),
/// which the transports convert.
pub use crate::storage::DeviceRecord;
use crate::storage::{Storage, StorageError};

/// Longest device name.
const MAX_NAME_CHARS: usize = 64;

/// Errors of device operations.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The name is not acceptable.
    #[error("invalid device name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The public key does not parse.
    #[error("the public key is not an Ed25519 PEM public key: {reason}")]
    InvalidKey {
        /// What is wrong.
        reason: String,
    },
    /// An active device already has the name.
    #[error("an active device is already named {name:?}; pick another name, or revoke that device first")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// An active device already has the key.
    #[error("this key is already registered as an active device; `blufioctl device list` shows which")]
    DuplicateKey,
    /// `remove` found no revoked entry.
    #[error(
        "no revoked device named {name:?}; revoke an active one first (`blufioctl device revoke NAME`), then remove it"
    )]
    NothingRevoked {
        /// The name.
        name: String,
    },
    /// No active device has the name.
    #[error("no active device named {name:?}; see `blufioctl device list`")]
    NotFound {
        /// The name given.
        name: String,
    },
    /// The database failed.
    #[error("storage failed")]
    Storage(#[source] StorageError),
}

/// A device with its decoded key.
#[derive(Debug, Clone)]
pub struct ActiveDevice {
    /// The stored device.
    pub record: DeviceRecord,
    /// Its key.
    pub key: VerifyingKey,
}

/// The device registry.
#[derive(Debug, Clone)]
pub struct Devices {
    storage: Storage,
    /// The active devices by keyid, when loaded (see the module's documentation).
    active: Arc<RwLock<ActiveCopy>>,
    /// When each key's use was last written, so that a busy device costs one database write a
    /// minute rather than one per request. Keys are verified keyids: bounded by the devices.
    touched: Arc<Mutex<HashMap<String, Instant>>>,
}

/// The in-memory copy of the active devices.
#[derive(Debug, Default)]
struct ActiveCopy {
    /// Bumped by every change made through the registry.
    generation: u64,
    /// The devices, with the storage epoch they were read at; `None` until loaded again.
    devices: Option<(u64, Arc<ByKeyid>)>,
}

/// Active devices by keyid.
type ByKeyid = HashMap<String, Arc<ActiveDevice>>;

/// How often a device's `last_used_at` is written at most.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

impl Devices {
    /// The registry over `storage`.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            active: Arc::default(),
            touched: Arc::default(),
        }
    }

    /// Registers with the memory monitor: the last-use times older than the write interval go
    /// at the warn level (they only spare a database write).
    pub fn register_shedders(&self, memory: &crate::memory::Monitor) {
        let touched = Arc::downgrade(&self.touched);
        memory.on_shed("device-last-use", move || {
            let Some(touched) = touched.upgrade() else { return 0 };
            let mut touched = touched.lock().expect("device use times poisoned");
            let before = touched.len();
            touched.retain(|_, at| at.elapsed() < TOUCH_INTERVAL);
            touched.shrink_to_fit();
            before - touched.len()
        });
    }

    /// Registers `name` with a PEM public key. The keyid is the key's fingerprint, so it is
    /// derived from the key and cannot collide with another device's.
    pub async fn add(&self, name: &str, public_key_pem: &str) -> Result<DeviceRecord, DeviceError> {
        check_name(name)?;
        let key = httpsig::verifying_key_from_pem(public_key_pem).map_err(|error| DeviceError::InvalidKey {
            reason: error.to_string(),
        })?;
        let fingerprint = httpsig::key_fingerprint(&key);
        let added = self
            .storage
            .add_device(&fingerprint, name, key.as_bytes(), &fingerprint)
            .await;
        self.changed();
        added.map_err(|error| duplicate(error, name))
    }

    /// Every device, active first.
    pub async fn list(&self) -> Result<Vec<DeviceRecord>, DeviceError> {
        self.storage.list_devices().await.map_err(DeviceError::Storage)
    }

    /// Revokes the active device `name`; effective for the next request.
    pub async fn revoke(&self, name: &str) -> Result<DeviceRecord, DeviceError> {
        let revoked = self.storage.revoke_device(name).await;
        self.changed();
        revoked
            .map_err(DeviceError::Storage)?
            .ok_or_else(|| DeviceError::NotFound { name: name.to_owned() })
    }

    /// Renames the active device `name`.
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<DeviceRecord, DeviceError> {
        check_name(new_name)?;
        let renamed = self.storage.rename_device(name, new_name).await;
        self.changed();
        renamed
            .map_err(|error| duplicate(error, new_name))?
            .ok_or_else(|| DeviceError::NotFound { name: name.to_owned() })
    }

    /// Removes the revoked entries named `name` from the list; an active device must be revoked
    /// first.
    pub async fn remove(&self, name: &str) -> Result<u64, DeviceError> {
        let removed = self.storage.remove_revoked_devices(name).await;
        self.changed();
        match removed.map_err(DeviceError::Storage)? {
            0 => Err(DeviceError::NothingRevoked { name: name.to_owned() }),
            removed => Ok(removed),
        }
    }

    /// Active devices.
    pub async fn count_active(&self) -> Result<u64, DeviceError> {
        self.storage.count_active_devices().await.map_err(DeviceError::Storage)
    }

    /// The active device that owns `keyid`, with its key: from the in-memory copy, loaded from
    /// the database when a change or a restore dropped it.
    pub async fn lookup(&self, keyid: &str) -> Result<Option<Arc<ActiveDevice>>, DeviceError> {
        // The epoch is read before the copy is checked or loaded: a restore that begins after
        // this point makes the copy stale for the next lookup.
        let epoch = self.storage.epoch();
        let generation = {
            let active = self.active.read().expect("device registry poisoned");
            if let Some((read_at, devices)) = &active.devices
                && *read_at == epoch
            {
                return Ok(devices.get(keyid).cloned());
            }
            active.generation
        };
        let records = self.storage.active_devices().await.map_err(DeviceError::Storage)?;
        // A key that no longer decodes (only a damaged database has one: keys are checked when
        // added) leaves its device out, so it cannot sign, and the others still can.
        let devices: ByKeyid = records
            .into_iter()
            .filter_map(|record| match decode(record) {
                Ok(device) => Some((device.record.keyid.clone(), Arc::new(device))),
                Err(error) => {
                    tracing::error!(error = %crate::error_chain(&error), "a stored device key is unusable; the device cannot sign");
                    None
                }
            })
            .collect();
        let found = devices.get(keyid).cloned();
        let mut active = self.active.write().expect("device registry poisoned");
        // A change committed while this copy was read bumped the generation: the copy may
        // predate it, so it is not kept.
        if active.generation == generation {
            active.devices = Some((epoch, Arc::new(devices)));
        }
        Ok(found)
    }

    /// Drops the in-memory copy after a change (whether or not the change succeeded: a failed
    /// statement may still have been committed), so the next lookup reads the database.
    fn changed(&self) {
        let mut active = self.active.write().expect("device registry poisoned");
        active.generation += 1;
        active.devices = None;
    }

    /// Records a verified request of `keyid` (in the database at most once a minute).
    pub async fn touch(&self, keyid: &str) {
        {
            let mut touched = self.touched.lock().expect("device touch map poisoned");
            if touched.get(keyid).is_some_and(|at| at.elapsed() < TOUCH_INTERVAL) {
                return;
            }
            touched.retain(|_, at| at.elapsed() < TOUCH_INTERVAL);
            touched.insert(keyid.to_owned(), Instant::now());
        }
        if let Err(error) = self.storage.touch_device(keyid).await {
            tracing::warn!(error = %crate::error_chain(&error), "cannot record a device's use");
        }
    }
}

/// A stored device with its key decoded.
fn decode(record: DeviceRecord) -> Result<ActiveDevice, DeviceError> {
    let bytes: [u8; 32] = record
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| DeviceError::InvalidKey {
            reason: format!("stored key of {:?} is not 32 bytes", record.name),
        })?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|error| DeviceError::InvalidKey {
        reason: error.to_string(),
    })?;
    Ok(ActiveDevice { record, key })
}

/// Which unique value a failed insert or rename duplicated.
fn duplicate(error: StorageError, name: &str) -> DeviceError {
    match error.duplicate_column() {
        Some("keyid") => DeviceError::DuplicateKey,
        Some(_) => DeviceError::Duplicate { name: name.to_owned() },
        None => DeviceError::Storage(error),
    }
}

fn check_name(name: &str) -> Result<(), DeviceError> {
    let invalid = |reason| {
        Err(DeviceError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return invalid("use 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|char| char.is_ascii_alphanumeric() || matches!(char, '-' | '_' | '.'))
    {
        return invalid("use letters, digits, '-', '_' and '.' only");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::StorageOptions;

    #[tokio::test]
    async fn registration_validates_names_and_keys_and_revocation_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageOptions {
            path: dir.path().join("blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
            full_sync: false,
        })
        .await
        .unwrap();
        let devices = Devices::new(storage);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let pem = httpsig::verifying_key_to_pem(&key.verifying_key()).unwrap();
        assert!(matches!(
            devices.add("my phone", &pem).await,
            Err(DeviceError::InvalidName { .. })
        ));
        assert!(matches!(
            devices.add("phone", "not a key").await,
            Err(DeviceError::InvalidKey { .. })
        ));
        let added = devices.add("phone", &pem).await.unwrap();
        assert!(added.keyid.starts_with("SHA256:"));
        assert!(matches!(
            devices.add("phone", &pem).await,
            Err(DeviceError::Duplicate { .. } | DeviceError::DuplicateKey)
        ));
        assert!(
            matches!(devices.add("tablet", &pem).await, Err(DeviceError::DuplicateKey)),
            "the same key under another name is named as the key"
        );
        let found = devices.lookup(&added.keyid).await.unwrap().unwrap();
        assert_eq!(found.key, key.verifying_key());
        devices.revoke("phone").await.unwrap();
        assert!(devices.lookup(&added.keyid).await.unwrap().is_none());
        assert!(matches!(
            devices.revoke("phone").await,
            Err(DeviceError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn the_in_memory_copy_follows_changes_and_a_replaced_database() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions {
            path: dir.path().join("blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
            full_sync: false,
        };
        let storage = Storage::open(&options).await.unwrap();
        let devices = Devices::new(storage.clone());
        let pem = |seed| {
            httpsig::verifying_key_to_pem(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key()).unwrap()
        };
        let phone = devices.add("phone", &pem(1)).await.unwrap();
        assert!(devices.lookup(&phone.keyid).await.unwrap().is_some());
        // A device added after the copy was loaded is seen at once.
        let tablet = devices.add("tablet", &pem(2)).await.unwrap();
        assert!(devices.lookup(&tablet.keyid).await.unwrap().is_some());
        devices.rename("tablet", "slate").await.unwrap();
        assert_eq!(
            devices.lookup(&tablet.keyid).await.unwrap().unwrap().record.name,
            "slate"
        );

        // A change behind the registry's back (another handle on the file, as a restore makes)
        // is seen once the database is reopened.
        let other = Storage::open(&options).await.unwrap();
        other.revoke_device("phone").await.unwrap();
        storage
            .pause()
            .await
            .reopen_with(|_| Ok::<(), std::io::Error>(()))
            .await
            .unwrap()
            .unwrap();
        assert!(devices.lookup(&phone.keyid).await.unwrap().is_none());
        assert!(devices.lookup(&tablet.keyid).await.unwrap().is_some());
    }
}
