//! The vault against a real database in a temp directory: creation, wrong keys, rekeys and crashes
//! between their steps, damaged rows, bounds.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::storage::StorageOptions;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn database(&self) -> PathBuf {
        self.dir.path().join("blufio.db")
    }

    async fn storage(&self) -> Storage {
        Storage::open(&StorageOptions {
            path: self.database(),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
            full_sync: false,
        })
        .await
        .unwrap()
    }

    fn inputs(&self) -> SourceInputs {
        SourceInputs {
            state_dir: self.dir.path().to_owned(),
            euid: nix::unistd::geteuid().as_raw(),
            ..SourceInputs::default()
        }
    }

    fn key_file(&self, name: &str, material: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, material).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Opens (creates) the vault with the default inputs and stores the secret `anthropic`.
    async fn open_with_a_secret(&self) -> (Arc<Vault>, Storage) {
        let (vault, storage) = self.open(self.inputs()).await.unwrap();
        vault
            .set("anthropic", &secret("sk-ant-value-1234567890"))
            .await
            .unwrap();
        (vault, storage)
    }

    /// Opens the vault with `inputs`, closing the storage again on failure.
    async fn open(&self, inputs: SourceInputs) -> Result<(Arc<Vault>, Storage), VaultError> {
        let storage = self.storage().await;
        match Vault::open(storage.clone(), inputs).await {
            Ok(vault) => Ok((vault, storage)),
            Err(error) => {
                storage.close().await;
                Err(error)
            }
        }
    }
}

fn secret(value: &str) -> Secret {
    Secret(value.to_owned())
}

/// The database's bytes after a checkpoint: what a failed open must leave unchanged.
async fn database_bytes(fixture: &Fixture) -> Vec<u8> {
    let storage = fixture.storage().await;
    storage.close().await;
    std::fs::read(fixture.database()).unwrap()
}

#[tokio::test]
async fn a_new_vault_needs_no_setup_and_keeps_its_secrets_across_opens() {
    let fixture = Fixture::new();
    let (vault, storage) = fixture.open(fixture.inputs()).await.unwrap();
    let generated = fixture.dir.path().join(source::GENERATED_FILE_NAME);
    assert_eq!(
        std::fs::metadata(&generated).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(vault.status().source.kind, SourceKind::Generated);
    assert!(
        vault
            .set("anthropic", &secret("sk-ant-api03-abcdefghij-WXYZ"))
            .await
            .unwrap()
    );
    assert!(
        !vault
            .set("anthropic", &secret("sk-ant-api03-abcdefghij-9876"))
            .await
            .unwrap(),
        "replaced"
    );
    vault.set("short", &secret("tiny-token")).await.unwrap();
    assert_eq!(vault.get("anthropic").unwrap().expose(), "sk-ant-api03-abcdefghij-9876");
    assert_eq!(vault.inspect("short").unwrap().expose(), "tiny-token");
    let listed = vault.list();
    assert_eq!(
        listed.iter().map(|entry| entry.name.as_str()).collect::<Vec<_>>(),
        ["anthropic", "short"]
    );
    assert_eq!(listed[0].preview, "…9876");
    assert!(listed[0].last_used_at.is_some());
    assert_eq!(listed[1].preview, "", "a short value shows nothing");
    assert_eq!(listed[1].last_used_at, None, "a check is not a use");
    storage.close().await;

    // Nothing in the database file is the value.
    let bytes = std::fs::read(fixture.database()).unwrap();
    assert!(!bytes.windows(9).any(|window| window == b"sk-ant-ap"));

    let (vault, storage) = fixture.open(fixture.inputs()).await.unwrap();
    assert_eq!(vault.get("anthropic").unwrap().expose(), "sk-ant-api03-abcdefghij-9876");
    vault.delete("short").await.unwrap();
    assert!(matches!(vault.delete("short").await, Err(VaultError::NotFound { .. })));
    assert!(matches!(vault.get("short"), Err(VaultError::NotFound { .. })));
    storage.close().await;
}

#[tokio::test]
async fn a_wrong_or_missing_key_names_the_source_and_changes_nothing() {
    let fixture = Fixture::new();
    let (_, storage) = fixture.open_with_a_secret().await;
    storage.close().await;
    let before = database_bytes(&fixture).await;

    let mut wrong = fixture.inputs();
    wrong.key_file = Some(fixture.key_file("other.key", &[b'7'; 64]));
    let error = fixture.open(wrong).await.unwrap_err();
    let shown = error.to_string();
    assert!(matches!(error, VaultError::WrongKey { .. }), "{shown}");
    assert!(shown.contains("other.key") && shown.contains("generated"), "{shown}");
    assert!(shown.contains("nothing was changed"), "{shown}");

    let mut passphrase = fixture.inputs();
    passphrase.passphrase = Some(Zeroizing::new("a wrong passphrase entirely".to_owned()));
    assert!(matches!(
        fixture.open(passphrase).await,
        Err(VaultError::WrongKey { .. })
    ));

    std::fs::remove_file(fixture.dir.path().join(source::GENERATED_FILE_NAME)).unwrap();
    let error = fixture.open(fixture.inputs()).await.unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::NoKey {
                sealed_with: SourceKind::Generated
            }
        ),
        "{error}"
    );
    assert!(
        !fixture.dir.path().join(source::GENERATED_FILE_NAME).exists(),
        "a vault that exists never gets a new generated key"
    );
    assert_eq!(
        database_bytes(&fixture).await,
        before,
        "no failed open changed the database"
    );
}

#[tokio::test]
async fn a_passphrase_vault_opens_only_with_its_passphrase() {
    let fixture = Fixture::new();
    let mut inputs = fixture.inputs();
    inputs.passphrase = Some(Zeroizing::new("correct horse battery staple".to_owned()));
    let (vault, storage) = fixture.open(inputs.clone()).await.unwrap();
    let status = vault.status();
    assert_eq!(status.current.kdf, Kdf::Argon2id(crypto::ARGON2_MIN));
    assert!(
        !fixture.dir.path().join(source::GENERATED_FILE_NAME).exists(),
        "no key file beside the data"
    );
    vault.set("openai", &secret("sk-proj-0123456789abcdef")).await.unwrap();
    storage.close().await;

    let (vault, storage) = fixture.open(inputs.clone()).await.unwrap();
    assert_eq!(vault.get("openai").unwrap().expose(), "sk-proj-0123456789abcdef");
    storage.close().await;
    inputs.passphrase = Some(Zeroizing::new("correct horse battery stapler".to_owned()));
    let error = fixture.open(inputs).await.unwrap_err().to_string();
    assert!(
        error.contains("BLUFIO_VAULT_PASSPHRASE") && error.contains("passphrase key"),
        "{error}"
    );
}

#[tokio::test]
async fn a_generated_rekey_completes_and_a_crash_at_any_step_leaves_a_vault_that_opens() {
    let fixture = Fixture::new();
    let key_path = fixture.dir.path().join(source::GENERATED_FILE_NAME);
    let (vault, storage) = fixture.open_with_a_secret().await;
    let old_key = std::fs::read(&key_path).unwrap();
    assert_eq!(vault.rekey(NewKey::Generate).await.unwrap(), Rekeyed::Completed);
    assert_ne!(std::fs::read(&key_path).unwrap(), old_key);
    assert!(vault.status().pending.is_none());
    storage.close().await;
    let (vault, storage) = fixture.open(fixture.inputs()).await.unwrap();
    assert_eq!(vault.get("anthropic").unwrap().expose(), "sk-ant-value-1234567890");

    // A crash after the pending slot was written, before the file was replaced: the old file
    // still opens the vault.
    let new_key = source::generate_key();
    let pending = vault
        .seal_pending(SourceKind::Generated, new_key.clone())
        .await
        .unwrap();
    storage.put_vault_slot(&pending).await.unwrap();
    storage.close().await;
    let (vault, storage) = fixture.open(fixture.inputs()).await.unwrap();
    assert!(vault.status().pending.is_some());
    storage.close().await;

    // A crash after the file was replaced, before the switch: the new file opens the vault and
    // the start completes the switch.
    source::write_key(&key_path, &new_key, nix::unistd::geteuid().as_raw()).unwrap();
    let (vault, storage) = fixture.open(fixture.inputs()).await.unwrap();
    assert!(
        vault.status().pending.is_none(),
        "the pending slot became the current one"
    );
    assert_eq!(vault.get("anthropic").unwrap().expose(), "sk-ant-value-1234567890");
    storage.close().await;
    std::fs::write(&key_path, &old_key).unwrap();
    assert!(
        matches!(fixture.open(fixture.inputs()).await, Err(VaultError::WrongKey { .. })),
        "the old key no longer opens it"
    );
}

#[tokio::test]
async fn a_rekey_to_a_passphrase_waits_for_it_and_then_retires_the_generated_key() {
    let fixture = Fixture::new();
    let (vault, storage) = fixture.open(fixture.inputs()).await.unwrap();
    vault.set("metrics", &secret("metrics-token-0123456789")).await.unwrap();
    let rekeyed = vault
        .rekey(NewKey::Passphrase(Zeroizing::new("the new passphrase here".to_owned())))
        .await
        .unwrap();
    assert_eq!(rekeyed, Rekeyed::Pending(SourceKind::Passphrase));
    assert_eq!(vault.status().pending.unwrap().source, SourceKind::Passphrase);
    for refused in ["too short".to_owned(), "x".repeat(source::MAX_KEY_BYTES + 1)] {
        assert!(matches!(
            vault.rekey(NewKey::Passphrase(Zeroizing::new(refused))).await,
            Err(VaultError::KeySource { .. })
        ));
    }
    // A new key file would drop the rekey the owner is in the middle of.
    let error = vault.rekey(NewKey::Generate).await.unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::RekeyPending {
                waiting_for: SourceKind::Passphrase
            }
        ),
        "{error}"
    );
    // Trailing whitespace is not part of a passphrase here either (a file's newline is dropped).
    vault
        .rekey(NewKey::Passphrase(Zeroizing::new(
            "the new passphrase here \n".to_owned(),
        )))
        .await
        .unwrap();
    storage.close().await;
    // Another key opens nothing, and the error says a rekey waits.
    let mut wrong = fixture.inputs();
    wrong.passphrase = Some(Zeroizing::new("not the passphrase at all".to_owned()));
    let error = fixture.open(wrong).await.unwrap_err().to_string();
    assert!(error.contains("pending rekey"), "{error}");

    // Until the passphrase is supplied, the generated key still opens the vault.
    let (_, storage) = fixture.open(fixture.inputs()).await.unwrap();
    storage.close().await;
    let mut inputs = fixture.inputs();
    inputs.passphrase = Some(Zeroizing::new("the new passphrase here".to_owned()));
    let (vault, storage) = fixture.open(inputs).await.unwrap();
    assert_eq!(vault.status().current.source, SourceKind::Passphrase);
    assert_eq!(vault.get("metrics").unwrap().expose(), "metrics-token-0123456789");
    assert!(
        !fixture.dir.path().join(source::GENERATED_FILE_NAME).exists(),
        "the key beside the data is gone once it opens nothing"
    );
    let error = vault.rekey(NewKey::Generate).await.unwrap_err().to_string();
    assert!(error.contains("--new-passphrase"), "{error}");
    storage.close().await;
}

#[tokio::test]
async fn key_material_for_a_credential_is_pending_until_the_credential_holds_it() {
    let fixture = Fixture::new();
    let (vault, storage) = fixture.open_with_a_secret().await;
    let material = Zeroizing::new(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".to_vec());
    assert!(matches!(
        vault.rekey(NewKey::Material(Zeroizing::new(b"short".to_vec()))).await,
        Err(VaultError::KeySource { .. })
    ));
    assert_eq!(
        vault.rekey(NewKey::Material(material.clone())).await.unwrap(),
        Rekeyed::Pending(SourceKind::KeyFile)
    );
    storage.close().await;
    let credentials = tempfile::tempdir().unwrap();
    let path = credentials.path().join(source::CREDENTIAL_NAME);
    let mut with_newline = material.to_vec();
    with_newline.push(b'\n');
    std::fs::write(&path, &with_newline).unwrap();
    let mut inputs = fixture.inputs();
    inputs.credentials_directory = Some(credentials.path().to_owned());
    let (vault, storage) = fixture.open(inputs).await.unwrap();
    assert_eq!(vault.status().source.kind, SourceKind::Credential);
    assert_eq!(vault.get("anthropic").unwrap().expose(), "sk-ant-value-1234567890");
    storage.close().await;
}

#[tokio::test]
async fn damaged_rows_are_refused_by_name() {
    let fixture = Fixture::new();
    let (_, storage) = fixture.open_with_a_secret().await;
    // An entry's row moved to another name no longer opens.
    let record = storage.vault_entries().await.unwrap().remove(0);
    storage
        .put_vault_entry("openai", &record.nonce, &record.ciphertext)
        .await
        .unwrap();
    storage.close().await;
    let error = fixture.open(fixture.inputs()).await.unwrap_err();
    assert!(
        matches!(&error, VaultError::Damaged { what, .. } if what.contains("openai")),
        "{error}"
    );
}

#[tokio::test]
async fn names_values_and_the_entry_count_are_bounded() {
    let fixture = Fixture::new();
    let (vault, storage) = fixture.open(fixture.inputs()).await.unwrap();
    for bad in ["", "Anthropic", "-x", "a b", "a/b", &"a".repeat(65)] {
        assert!(
            matches!(check_name(bad), Err(VaultError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    for good in ["anthropic", "metrics", "openai.prod", "key_2", "9-lives"] {
        check_name(good).unwrap();
    }
    let error = vault.delete(&"z".repeat(300_000)).await.unwrap_err().to_string();
    assert!(
        error.len() < 300,
        "a long name is not echoed whole: {} bytes",
        error.len()
    );
    for invisible in ["sk-ant-\u{200B}0123", "sk-\u{202E}ant", "\u{FEFF}sk-ant"] {
        assert!(matches!(
            vault.set("paste", &secret(invisible)).await,
            Err(VaultError::InvalidValue { .. })
        ));
    }
    assert!(matches!(
        vault.set("empty", &secret("")).await,
        Err(VaultError::InvalidValue { .. })
    ));
    let error = vault.set("nl", &secret("sk-ant-0123\n")).await.unwrap_err().to_string();
    assert!(
        error.contains("control or invisible character") && !error.contains("sk-ant"),
        "{error}"
    );
    let huge = "x".repeat(MAX_VALUE_BYTES + 1);
    assert!(matches!(
        vault.set("big", &secret(&huge)).await,
        Err(VaultError::InvalidValue { .. })
    ));
    for index in 0..MAX_ENTRIES {
        vault.set(&format!("k{index}"), &secret("v")).await.unwrap();
    }
    assert!(matches!(
        vault.set("one-more", &secret("v")).await,
        Err(VaultError::Full)
    ));
    vault.set("k0", &secret("replaced")).await.unwrap();
    storage.close().await;
}

#[tokio::test]
async fn uses_are_recorded_and_the_recorder_stops_on_its_token() {
    let fixture = Fixture::new();
    let (vault, storage) = fixture.open_with_a_secret().await;
    let token = CancellationToken::new();
    let recorder = tokio::spawn(vault.clone().record_uses(token.clone()));
    vault.get("anthropic").unwrap();
    let recorded = async {
        loop {
            if storage.vault_entries().await.unwrap()[0].last_used_at.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), recorded).await.unwrap();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), recorder)
        .await
        .unwrap()
        .unwrap();
    storage.close().await;
}

#[test]
fn nothing_secret_reaches_debug() {
    let key = NewKey::Passphrase(Zeroizing::new("passphrase-value".to_owned()));
    assert!(!format!("{key:?}").contains("passphrase-value"));
}
