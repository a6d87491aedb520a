//! The vault's rows: key slots and sealed entries. Storage sees only bytes; what they mean (and
//! every key) stays with the vault.

use sqlx::Connection as _;

use super::{Storage, StorageError, unix_now};

/// Which slot: the one that opens the vault, or a rekey waiting for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotName {
    /// Opens the vault.
    Current,
    /// Written by a rekey whose key the owner has still to put in place.
    Pending,
}

impl SlotName {
    fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Pending => "pending",
        }
    }
}

/// A key slot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSlotRecord {
    /// Which slot.
    pub slot: SlotName,
    /// The kind of key source that sealed it.
    pub source: String,
    /// `hkdf-sha256` or `argon2id`.
    pub kdf: String,
    /// Argon2id memory (KiB), passes and lanes; `None` for HKDF.
    pub argon2: Option<(i64, i64, i64)>,
    /// The slot's salt.
    pub salt: Vec<u8>,
    /// The key check value.
    pub check_value: Vec<u8>,
    /// Nonce of the wrapped data key.
    pub nonce: Vec<u8>,
    /// The data key, sealed.
    pub wrapped_key: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A sealed entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultEntryRecord {
    /// Its name.
    pub name: String,
    /// Nonce.
    pub nonce: Vec<u8>,
    /// The value, sealed.
    pub ciphertext: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change of value.
    pub updated_at: i64,
    /// Unix seconds of the last use by the daemon.
    pub last_used_at: Option<i64>,
}

/// Every key slot, as [`SlotRow`]s.
pub(super) const SELECT_SLOTS: &str = "SELECT slot, source, kdf, m_cost_kib, t_cost, p_cost, salt, check_value, nonce, \
     wrapped_key, created_at FROM vault_slots ORDER BY slot";

/// A row of [`SELECT_SLOTS`].
pub(super) type SlotRow = (
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    i64,
);

impl From<SlotRow> for VaultSlotRecord {
    fn from(
        (slot, source, kdf, m_cost, t_cost, p_cost, salt, check_value, nonce, wrapped_key, created_at): SlotRow,
    ) -> Self {
        Self {
            slot: if slot == "current" {
                SlotName::Current
            } else {
                SlotName::Pending
            },
            source,
            kdf,
            argon2: m_cost.zip(t_cost).zip(p_cost).map(|((m, t), p)| (m, t, p)),
            salt,
            check_value,
            nonce,
            wrapped_key,
            created_at,
        }
    }
}

type EntryRow = (String, Vec<u8>, Vec<u8>, i64, i64, Option<i64>);

fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |source| StorageError::Query { operation, source }
}

impl Storage {
    /// Every key slot (none for a vault never created).
    pub async fn vault_slots(&self) -> Result<Vec<VaultSlotRecord>, StorageError> {
        let pools = self.pools.read().await;
        let rows: Vec<SlotRow> = sqlx::query_as(SELECT_SLOTS)
            .fetch_all(&mut *pools.writer().await?)
            .await
            .map_err(query_error("read the vault's key slots"))?;
        Ok(rows.into_iter().map(VaultSlotRecord::from).collect())
    }

    /// Writes `record` into its slot, replacing what was there. A `Current` slot is written only
    /// when the vault has none (creation); it is replaced only by [`Storage::promote_vault_slot`].
    pub async fn put_vault_slot(&self, record: &VaultSlotRecord) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        let mut writer = pools.writer().await?;
        let mut transaction = writer.begin().await.map_err(query_error("begin a vault slot write"))?;
        if record.slot == SlotName::Current {
            let (existing,): (i64,) = sqlx::query_as("SELECT count(*) FROM vault_slots WHERE slot = 'current'")
                .fetch_one(&mut *transaction)
                .await
                .map_err(query_error("look for the vault's current slot"))?;
            if existing > 0 {
                return Err(StorageError::Duplicate {
                    operation: "create the vault",
                    source: sqlx::Error::Protocol("the vault already has a current key slot".into()),
                });
            }
        }
        let (m_cost, t_cost, p_cost) = match record.argon2 {
            Some((m, t, p)) => (Some(m), Some(t), Some(p)),
            None => (None, None, None),
        };
        sqlx::query(
            "INSERT OR REPLACE INTO vault_slots \
             (slot, source, kdf, m_cost_kib, t_cost, p_cost, salt, check_value, nonce, wrapped_key, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.slot.as_str())
        .bind(&record.source)
        .bind(&record.kdf)
        .bind(m_cost)
        .bind(t_cost)
        .bind(p_cost)
        .bind(&record.salt)
        .bind(&record.check_value)
        .bind(&record.nonce)
        .bind(&record.wrapped_key)
        .bind(record.created_at)
        .execute(&mut *transaction)
        .await
        .map_err(query_error("write a vault key slot"))?;
        transaction
            .commit()
            .await
            .map_err(query_error("commit a vault key slot"))?;
        Ok(())
    }

    /// Makes the pending slot the current one, in one transaction: the vault is opened by the
    /// old key or the new one, never by neither.
    pub async fn promote_vault_slot(&self) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        let mut writer = pools.writer().await?;
        let mut transaction = writer.begin().await.map_err(query_error("begin a rekey"))?;
        let (pending,): (i64,) = sqlx::query_as("SELECT count(*) FROM vault_slots WHERE slot = 'pending'")
            .fetch_one(&mut *transaction)
            .await
            .map_err(query_error("look for the pending key slot"))?;
        if pending == 0 {
            return Err(StorageError::Query {
                operation: "promote the pending key slot",
                source: sqlx::Error::RowNotFound,
            });
        }
        sqlx::query("DELETE FROM vault_slots WHERE slot = 'current'")
            .execute(&mut *transaction)
            .await
            .map_err(query_error("retire the current key slot"))?;
        sqlx::query("UPDATE vault_slots SET slot = 'current' WHERE slot = 'pending'")
            .execute(&mut *transaction)
            .await
            .map_err(query_error("promote the pending key slot"))?;
        transaction.commit().await.map_err(query_error("commit a rekey"))?;
        Ok(())
    }

    /// Removes a slot (a pending one whose key could not be put in place).
    pub async fn delete_vault_slot(&self, slot: SlotName) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        sqlx::query("DELETE FROM vault_slots WHERE slot = ?")
            .bind(slot.as_str())
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("remove a vault key slot"))?;
        Ok(())
    }

    /// Every sealed entry. Read through the writer, as the key slots are: the vault opens during
    /// the start, and no reader connection need be opened before the daemon is ready.
    pub async fn vault_entries(&self) -> Result<Vec<VaultEntryRecord>, StorageError> {
        let pools = self.pools.read().await;
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT name, nonce, ciphertext, created_at, updated_at, last_used_at FROM vault_entries ORDER BY name",
        )
        .fetch_all(&mut *pools.writer().await?)
        .await
        .map_err(query_error("read the vault's entries"))?;
        Ok(rows
            .into_iter()
            .map(
                |(name, nonce, ciphertext, created_at, updated_at, last_used_at)| VaultEntryRecord {
                    name,
                    nonce,
                    ciphertext,
                    created_at,
                    updated_at,
                    last_used_at,
                },
            )
            .collect())
    }

    /// Stores a sealed entry, creating it or replacing its value (its creation time stays).
    /// Returns the stored row.
    pub async fn put_vault_entry(
        &self,
        name: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<VaultEntryRecord, StorageError> {
        let pools = self.pools.read().await;
        let now = unix_now();
        let (created_at, last_used_at): (i64, Option<i64>) = sqlx::query_as(
            "INSERT INTO vault_entries (name, nonce, ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at RETURNING created_at, last_used_at",
        )
        .bind(name)
        .bind(nonce)
        .bind(ciphertext)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *pools.writer().await?)
        .await
        .map_err(query_error("store a vault entry"))?;
        Ok(VaultEntryRecord {
            name: name.to_owned(),
            nonce: nonce.to_vec(),
            ciphertext: ciphertext.to_vec(),
            created_at,
            updated_at: now,
            last_used_at,
        })
    }

    /// Deletes an entry; whether it existed.
    pub async fn delete_vault_entry(&self, name: &str) -> Result<bool, StorageError> {
        let pools = self.pools.read().await;
        let done = sqlx::query("DELETE FROM vault_entries WHERE name = ?")
            .bind(name)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("delete a vault entry"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Records when an entry was last used.
    pub async fn touch_vault_entry(&self, name: &str, at: i64) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        sqlx::query("UPDATE vault_entries SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE name = ?")
            .bind(at)
            .bind(name)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("record a vault entry's use"))?;
        Ok(())
    }
}
