//! Devices allowed to sign gateway requests: registration (public keys only, validated), listing,
//! immediate revocation, and key lookup for verification.
//!
//! This module never sees a private key and never decides whether a request is authentic; the
//! gateway does, with the key it gets from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    /// When each key's use was last written, so that a busy device costs one database write a
    /// minute rather than one per request. Keys are verified keyids: bounded by the devices.
    touched: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How often a device's `last_used_at` is written at most.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

impl Devices {
    /// The registry over `storage`.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
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
        self.storage
            .add_device(&fingerprint, name, key.as_bytes(), &fingerprint)
            .await
            .map_err(|error| duplicate(error, name))
    }

    /// Every device, active first.
    pub async fn list(&self) -> Result<Vec<DeviceRecord>, DeviceError> {
        self.storage.list_devices().await.map_err(DeviceError::Storage)
    }

    /// Revokes the active device `name`; effective for the next request.
    pub async fn revoke(&self, name: &str) -> Result<DeviceRecord, DeviceError> {
        self.storage
            .revoke_device(name)
            .await
            .map_err(DeviceError::Storage)?
            .ok_or_else(|| DeviceError::NotFound { name: name.to_owned() })
    }

    /// Renames the active device `name`.
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<DeviceRecord, DeviceError> {
        check_name(new_name)?;
        self.storage
            .rename_device(name, new_name)
            .await
            .map_err(|error| duplicate(error, new_name))?
            .ok_or_else(|| DeviceError::NotFound { name: name.to_owned() })
    }

    /// Removes the revoked entries named `name` from the list; an active device must be revoked
    /// first.
    pub async fn remove(&self, name: &str) -> Result<u64, DeviceError> {
        match self
            .storage
            .remove_revoked_devices(name)
            .await
            .map_err(DeviceError::Storage)?
        {
            0 => Err(DeviceError::NothingRevoked { name: name.to_owned() }),
            removed => Ok(removed),
        }
    }

    /// Active devices.
    pub async fn count_active(&self) -> Result<u64, DeviceError> {
        self.storage.count_active_devices().await.map_err(DeviceError::Storage)
    }

    /// The active device that owns `keyid`, with its key.
    pub async fn lookup(&self, keyid: &str) -> Result<Option<ActiveDevice>, DeviceError> {
        let Some(record) = self.storage.active_device(keyid).await.map_err(DeviceError::Storage)? else {
            return Ok(None);
        };
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
        Ok(Some(ActiveDevice { record, key }))
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
}
