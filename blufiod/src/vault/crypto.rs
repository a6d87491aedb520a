//! The vault's cryptography, and nothing else: deriving a key-encryption key from key material
//! or a passphrase, checking it, wrapping the data key, and sealing entries. Every key lives in
//! a type that zeroizes it on drop.
//!
//! - Key material (a systemd credential, a key file, the generated key) goes through HKDF-SHA256;
//!   a passphrase through Argon2id. Either gives a 32-byte root per slot (its own random salt).
//! - From the root, HKDF-Expand gives the wrapping key and a 16-byte key check value, so that a
//!   wrong key is recognised before anything is decrypted or changed.
//! - The data key (32 random bytes) is sealed under the wrapping key, and each entry under the
//!   data key, with XChaCha20-Poly1305 (random 24-byte nonces) and associated data that binds
//!   the ciphertext to what it is (the entry's name), so that no row can be moved to another.

use chacha20poly1305::aead::{Aead, Generate as _, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize as _, Zeroizing};

/// Bytes of a salt.
pub const SALT_LEN: usize = 16;
/// Bytes of a key check value.
pub const CHECK_LEN: usize = 16;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 24;

/// Argon2id parameters at or above the current OWASP guidance (Password Storage Cheat Sheet:
/// m = 19 MiB, t = 2, p = 1 is its first recommended configuration).
pub const ARGON2_MIN: Argon2Params = Argon2Params {
    m_cost_kib: 19 * 1024,
    t_cost: 2,
    p_cost: 1,
};
/// The most memory a stored Argon2id parameter set may ask for (RFC 9106's second
/// recommendation): a changed vault row can never make the daemon allocate more than this at
/// startup, well under the default memory limit.
pub const ARGON2_MAX_M_COST_KIB: u32 = 64 * 1024;
/// The most passes a stored parameter set may ask for.
pub const ARGON2_MAX_T_COST: u32 = 8;

const INFO_WRAP: &[u8] = b"blufio vault v1 wrapping key";
const INFO_CHECK: &[u8] = b"blufio vault v1 key check";
const AAD_DATA_KEY: &[u8] = b"blufio vault v1 data key";
const AAD_ENTRY: &[u8] = b"blufio vault v1 entry:";

/// Argon2id's cost parameters, stored with each passphrase slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

/// How a slot's root key is derived from what the key source gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// HKDF-SHA256 over key material of at least 32 bytes.
    Hkdf,
    /// Argon2id over a passphrase.
    Argon2id(Argon2Params),
}

impl Kdf {
    /// The name stored in the vault.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hkdf => "hkdf-sha256",
            Self::Argon2id(_) => "argon2id",
        }
    }
}

/// Why a cryptographic step failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Stored Argon2id parameters are outside what this build accepts.
    #[error(
        "the vault's Argon2id parameters (m = {} KiB, t = {}, p = {}) are outside the accepted range (m {}..={} KiB, t {}..={}, p 1..=4)",
        .0.m_cost_kib, .0.t_cost, .0.p_cost, ARGON2_MIN.m_cost_kib, ARGON2_MAX_M_COST_KIB, ARGON2_MIN.t_cost, ARGON2_MAX_T_COST
    )]
    Argon2Params(Argon2Params),
    /// Argon2id failed (out of memory, most likely).
    #[error("Argon2id failed: {0}")]
    Argon2(String),
    /// A sealed value did not authenticate: wrong key, or the stored bytes were changed.
    #[error("the sealed value does not authenticate (wrong key, or the stored bytes were changed)")]
    Authentication,
    /// A stored field has the wrong length.
    #[error("a stored {field} has {actual} bytes, not {expected}")]
    Length {
        /// Which field.
        field: &'static str,
        /// Its length.
        actual: usize,
        /// The length it must have.
        expected: usize,
    },
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// A slot's root key: what the key source's material or passphrase derives to with the slot's
/// salt. Gives the wrapping key and the key check value.
pub struct Root(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Root {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Root(..)")
    }
}

impl Root {
    /// Derives the root of a slot from `secret` (key material or a passphrase) with `kdf` and
    /// `salt`. Argon2id takes its memory for the duration (19 MiB with the defaults).
    pub fn derive(secret: &[u8], kdf: Kdf, salt: &[u8]) -> Result<Self, CryptoError> {
        let mut root = Zeroizing::new([0u8; 32]);
        match kdf {
            Kdf::Hkdf => {
                let (_, hkdf) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(salt), secret);
                hkdf.expand(b"blufio vault v1 root", root.as_mut_slice())
                    .expect("32 bytes is a valid HKDF-SHA256 length");
            }
            Kdf::Argon2id(params) => {
                if !(ARGON2_MIN.m_cost_kib..=ARGON2_MAX_M_COST_KIB).contains(&params.m_cost_kib)
                    || !(ARGON2_MIN.t_cost..=ARGON2_MAX_T_COST).contains(&params.t_cost)
                    || !(1..=4).contains(&params.p_cost)
                {
                    return Err(CryptoError::Argon2Params(params));
                }
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
                        .map_err(|error| CryptoError::Argon2(error.to_string()))?,
                );
                argon
                    .hash_password_into(secret, salt, root.as_mut_slice())
                    .map_err(|error| CryptoError::Argon2(error.to_string()))?;
            }
        }
        Ok(Self(root))
    }

    fn expand(&self, info: &[u8], out: &mut [u8]) {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::from_prk(self.0.as_slice()).expect("a 32-byte PRK is valid");
        hkdf.expand(info, out).expect("lengths up to 32 bytes are valid");
    }

    /// The key check value stored with the slot.
    pub fn check_value(&self) -> [u8; CHECK_LEN] {
        let mut check = [0u8; CHECK_LEN];
        self.expand(INFO_CHECK, &mut check);
        check
    }

    /// Whether this root is the one whose check value is `stored` (in constant time).
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == CHECK_LEN && bool::from(self.check_value().ct_eq(stored))
    }

    fn wrapping_cipher(&self) -> XChaCha20Poly1305 {
        let mut key = Key::default();
        self.expand(INFO_WRAP, key.as_mut_slice());
        let cipher = XChaCha20Poly1305::new(&key);
        key.as_mut_slice().zeroize();
        cipher
    }

    /// Seals `data_key` under this root: (nonce, ciphertext).
    pub fn wrap(&self, data_key: &DataKey) -> (Vec<u8>, Vec<u8>) {
        seal(&self.wrapping_cipher(), data_key.0.as_slice(), AAD_DATA_KEY)
    }

    /// Opens a data key sealed by [`Root::wrap`].
    pub fn unwrap(&self, nonce: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let plain = open(&self.wrapping_cipher(), nonce, wrapped, AAD_DATA_KEY)?;
        let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| CryptoError::Length {
            field: "data key",
            actual: plain.len(),
            expected: 32,
        })?;
        Ok(DataKey(Zeroizing::new(key)))
    }
}

/// The vault's data key: every entry is sealed under it. Made once per vault; a rekey wraps it
/// again under a new root and leaves the entries as they are.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random data key.
    pub fn generate() -> Self {
        Self(Zeroizing::new(random()))
    }

    /// The cipher that seals and opens entries.
    pub fn cipher(&self) -> EntryCipher {
        EntryCipher(XChaCha20Poly1305::new(&Key::from(*self.0)))
    }
}

/// Seals and opens entries, each bound to its name. Holds the data key's cipher state, which
/// the AEAD crate zeroizes on drop.
pub struct EntryCipher(XChaCha20Poly1305);

impl std::fmt::Debug for EntryCipher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("EntryCipher(..)")
    }
}

impl EntryCipher {
    /// Seals `value` as the entry `name`: (nonce, ciphertext).
    pub fn seal(&self, name: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        seal(&self.0, value, &entry_aad(name))
    }

    /// Opens the entry `name`; the plaintext is zeroized when dropped.
    pub fn open(&self, name: &str, nonce: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open(&self.0, nonce, ciphertext, &entry_aad(name))
    }
}

fn entry_aad(name: &str) -> Vec<u8> {
    [AAD_ENTRY, name.as_bytes()].concat()
}

fn seal(cipher: &XChaCha20Poly1305, plain: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let nonce = XNonce::generate();
    let sealed = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 seals any length the vault allows");
    (nonce.to_vec(), sealed)
}

fn open(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8],
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let nonce: &XNonce = nonce.try_into().map_err(|_| CryptoError::Length {
        field: "nonce",
        actual: nonce.len(),
        expected: NONCE_LEN,
    })?;
    cipher
        .decrypt(nonce, Payload { msg: sealed, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOW: Argon2Params = ARGON2_MIN;

    #[test]
    fn a_wrapped_key_opens_only_with_the_same_secret_and_salt() {
        let salt = random::<SALT_LEN>();
        let root = Root::derive(b"0123456789abcdef0123456789abcdef", Kdf::Hkdf, &salt).unwrap();
        let data_key = DataKey::generate();
        let (nonce, wrapped) = root.wrap(&data_key);
        let again = Root::derive(b"0123456789abcdef0123456789abcdef", Kdf::Hkdf, &salt).unwrap();
        assert!(again.matches(&root.check_value()));
        let opened = again.unwrap(&nonce, &wrapped).unwrap();
        assert_eq!(*opened.0, *data_key.0);

        let other = Root::derive(b"0123456789abcdef0123456789abcdeF", Kdf::Hkdf, &salt).unwrap();
        assert!(!other.matches(&root.check_value()), "the check value tells keys apart");
        assert!(matches!(
            other.unwrap(&nonce, &wrapped),
            Err(CryptoError::Authentication)
        ));
        let resalted = Root::derive(b"0123456789abcdef0123456789abcdef", Kdf::Hkdf, &random::<SALT_LEN>()).unwrap();
        assert!(
            !resalted.matches(&root.check_value()),
            "each slot's salt makes its own root"
        );
    }

    #[test]
    fn a_passphrase_goes_through_argon2id_and_bad_parameters_are_refused() {
        let salt = random::<SALT_LEN>();
        let root = Root::derive(b"correct horse battery", Kdf::Argon2id(LOW), &salt).unwrap();
        assert!(
            Root::derive(b"correct horse battery", Kdf::Argon2id(LOW), &salt)
                .unwrap()
                .matches(&root.check_value())
        );
        assert!(
            !Root::derive(b"correct horse battery", Kdf::Hkdf, &salt)
                .unwrap()
                .matches(&root.check_value())
        );
        for weak in [
            Argon2Params {
                m_cost_kib: 1024,
                ..LOW
            },
            Argon2Params { t_cost: 1, ..LOW },
            Argon2Params {
                m_cost_kib: 4 * 1024 * 1024,
                ..LOW
            },
            Argon2Params { p_cost: 0, ..LOW },
        ] {
            let error = Root::derive(b"x", Kdf::Argon2id(weak), &salt).unwrap_err();
            assert!(matches!(error, CryptoError::Argon2Params(_)), "{error}");
        }
    }

    #[test]
    fn an_entry_is_bound_to_its_name_and_to_every_byte() {
        let cipher = DataKey::generate().cipher();
        let (nonce, sealed) = cipher.seal("anthropic", b"sk-ant-123");
        assert_eq!(
            cipher.open("anthropic", &nonce, &sealed).unwrap().as_slice(),
            b"sk-ant-123"
        );
        assert!(
            cipher.open("openai", &nonce, &sealed).is_err(),
            "a row moved to another name does not open"
        );
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(cipher.open("anthropic", &nonce, &flipped).is_err());
        assert!(matches!(
            cipher.open("anthropic", &nonce[..8], &sealed),
            Err(CryptoError::Length { field: "nonce", .. })
        ));
        let (again, _) = cipher.seal("anthropic", b"sk-ant-123");
        assert_ne!(nonce, again, "every seal takes a fresh nonce");
        assert!(!format!("{cipher:?}").contains("sk-"), "no key in Debug");
    }
}
