//! Registered gateway devices: their Ed25519 public keys, names and use. Revocation keeps the
//! row (with `revoked_at`) so the record of who could sign stays; lookups see active rows only.

use super::{Storage, StorageError, unix_now};

/// A stored device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The `keyid` used in signatures.
    pub keyid: String,
    /// Name.
    pub name: String,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// `SHA256:` fingerprint.
    pub fingerprint: String,
    /// Unix seconds.
    pub added_at: i64,
    /// Unix seconds of the last verified request.
    pub last_used_at: Option<i64>,
    /// Unix seconds of revocation.
    pub revoked_at: Option<i64>,
}

type DeviceRow = (String, String, Vec<u8>, String, i64, Option<i64>, Option<i64>);

impl From<DeviceRow> for DeviceRecord {
    fn from((keyid, name, public_key, fingerprint, added_at, last_used_at, revoked_at): DeviceRow) -> Self {
        Self {
            keyid,
            name,
            public_key,
            fingerprint,
            added_at,
            last_used_at,
            revoked_at,
        }
    }
}

/// Seconds between two `last_used_at` updates of one device, so that a busy device does not turn
/// every request into a database write.
const LAST_USED_GRANULARITY_SECS: i64 = 60;

fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |source| match &source {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            StorageError::Duplicate { operation, source }
        }
        _ => StorageError::Query { operation, source },
    }
}

impl Storage {
    /// Registers a device. A name or key already active is [`StorageError::Duplicate`].
    pub async fn add_device(
        &self,
        keyid: &str,
        name: &str,
        public_key: &[u8; 32],
        fingerprint: &str,
    ) -> Result<DeviceRecord, StorageError> {
        let pools = self.pools.read().await;
        let now = unix_now();
        sqlx::query("INSERT INTO devices (keyid, name, public_key, fingerprint, added_at) VALUES (?, ?, ?, ?, ?)")
            .bind(keyid)
            .bind(name)
            .bind(public_key.as_slice())
            .bind(fingerprint)
            .bind(now)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("register a device"))?;
        Ok(DeviceRecord {
            keyid: keyid.to_owned(),
            name: name.to_owned(),
            public_key: public_key.to_vec(),
            fingerprint: fingerprint.to_owned(),
            added_at: now,
            last_used_at: None,
            revoked_at: None,
        })
    }

    /// Every device, active first, then by name.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StorageError> {
        let pools = self.pools.read().await;
        let rows: Vec<DeviceRow> = sqlx::query_as(
            "SELECT keyid, name, public_key, fingerprint, added_at, last_used_at, revoked_at FROM devices \
             ORDER BY revoked_at IS NOT NULL, name, id",
        )
        .fetch_all(&pools.reader)
        .await
        .map_err(query_error("list devices"))?;
        Ok(rows.into_iter().map(DeviceRecord::from).collect())
    }

    /// Every active device, for the registry's in-memory copy (`devices.rs`). A read
    /// transaction sees every committed write; reading from the pool keeps the load off the
    /// single writer connection.
    pub async fn active_devices(&self) -> Result<Vec<DeviceRecord>, StorageError> {
        let pools = self.pools.read().await;
        let rows: Vec<DeviceRow> = sqlx::query_as(
            "SELECT keyid, name, public_key, fingerprint, added_at, last_used_at, revoked_at FROM devices \
             WHERE revoked_at IS NULL",
        )
        .fetch_all(&pools.reader)
        .await
        .map_err(query_error("load the active devices"))?;
        Ok(rows.into_iter().map(DeviceRecord::from).collect())
    }

    /// Active devices.
    pub async fn count_active_devices(&self) -> Result<u64, StorageError> {
        let pools = self.pools.read().await;
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM devices WHERE revoked_at IS NULL")
            .fetch_one(&pools.reader)
            .await
            .map_err(query_error("count devices"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Revokes the active device `name`; returns it, or `None` when there is none.
    pub async fn revoke_device(&self, name: &str) -> Result<Option<DeviceRecord>, StorageError> {
        let pools = self.pools.read().await;
        let row: Option<DeviceRow> = sqlx::query_as(
            "UPDATE devices SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL \
             RETURNING keyid, name, public_key, fingerprint, added_at, last_used_at, revoked_at",
        )
        .bind(unix_now())
        .bind(name)
        .fetch_optional(&mut *pools.writer().await?)
        .await
        .map_err(query_error("revoke a device"))?;
        Ok(row.map(DeviceRecord::from))
    }

    /// Renames the active device `name`; returns it, or `None` when there is none. A
    /// `new_name` already active is [`StorageError::Duplicate`].
    pub async fn rename_device(&self, name: &str, new_name: &str) -> Result<Option<DeviceRecord>, StorageError> {
        let pools = self.pools.read().await;
        let row: Option<DeviceRow> = sqlx::query_as(
            "UPDATE devices SET name = ? WHERE name = ? AND revoked_at IS NULL \
             RETURNING keyid, name, public_key, fingerprint, added_at, last_used_at, revoked_at",
        )
        .bind(new_name)
        .bind(name)
        .fetch_optional(&mut *pools.writer().await?)
        .await
        .map_err(query_error("rename a device"))?;
        Ok(row.map(DeviceRecord::from))
    }

    /// Deletes the revoked rows named `name` (an active device is never removed: revoke it
    /// first); returns how many went.
    pub async fn remove_revoked_devices(&self, name: &str) -> Result<u64, StorageError> {
        let pools = self.pools.read().await;
        let done = sqlx::query("DELETE FROM devices WHERE name = ? AND revoked_at IS NOT NULL")
            .bind(name)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("remove revoked devices"))?;
        Ok(done.rows_affected())
    }

    /// Records that `keyid` signed a verified request (at most once a minute per device).
    pub async fn touch_device(&self, keyid: &str) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        let now = unix_now();
        sqlx::query(
            "UPDATE devices SET last_used_at = ? WHERE keyid = ? AND revoked_at IS NULL \
             AND (last_used_at IS NULL OR last_used_at <= ?)",
        )
        .bind(now)
        .bind(keyid)
        .bind(now - LAST_USED_GRANULARITY_SECS)
        .execute(&mut *pools.writer().await?)
        .await
        .map_err(query_error("record a device's use"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::StorageOptions;
    use super::*;

    async fn active(storage: &Storage, keyid: &str) -> Option<DeviceRecord> {
        let devices = storage.active_devices().await.unwrap();
        devices.into_iter().find(|device| device.keyid == keyid)
    }

    #[tokio::test]
    async fn devices_are_added_listed_revoked_and_names_reused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageOptions {
            path: dir.path().join("blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
            full_sync: false,
        })
        .await
        .unwrap();
        storage
            .add_device("k1", "laptop", &[1; 32], "SHA256:one")
            .await
            .unwrap();
        let duplicate = storage
            .add_device("k2", "laptop", &[2; 32], "SHA256:two")
            .await
            .unwrap_err();
        assert!(matches!(duplicate, StorageError::Duplicate { .. }), "{duplicate:?}");
        assert!(active(&storage, "k1").await.is_some());
        assert_eq!(storage.count_active_devices().await.unwrap(), 1);

        let revoked = storage.revoke_device("laptop").await.unwrap().unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(active(&storage, "k1").await.is_none(), "revocation is immediate");
        assert!(storage.revoke_device("laptop").await.unwrap().is_none());
        // The name (and even the key) may be registered again after revocation.
        storage
            .add_device("k1", "laptop", &[1; 32], "SHA256:one")
            .await
            .unwrap();
        let listed = storage.list_devices().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(
            listed[0].revoked_at.is_none() && listed[1].revoked_at.is_some(),
            "active first"
        );

        storage.touch_device("k1").await.unwrap();
        let used = active(&storage, "k1").await.unwrap().last_used_at;
        assert!(used.is_some());
    }
}
