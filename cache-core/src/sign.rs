//! Signed entries: trusted writers (say, main-branch CI) sign what they store with an
//! Ed25519 key; every reader (pull-request jobs included) holds only public keys, so
//! it can verify but never sign. With trusted keys set, a [`crate::Cache`] treats an
//! unsigned or wrongly signed entry as a miss: a cache writer without the key can no
//! longer make a declared output wrong.
//!
//! The signature covers the entry's encoded record (its key, every path, mode and
//! symlink target, every blob digest and size, the exit code, duration and logs), with
//! a domain tag, so it cannot be moved to another key or mean anything else.
//!
//! ```
//! use cache_core::sign::{PublicKey, SigningKey};
//! let key = SigningKey::generate().unwrap();
//! let public: PublicKey = key.public_key().to_string().parse().unwrap();
//! let secret: SigningKey = key.expose_secret().parse().unwrap();
//! assert_eq!(secret.public_key(), public);
//! assert!(!format!("{key:?}").contains(&key.expose_secret()[14..]), "Debug never shows the secret");
//! ```

use crate::{BackendError, BackendResult};
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const SECRET_PREFIX: &str = "taskcache-sk-";
const PUBLIC_PREFIX: &str = "taskcache-pk-";
/// Prepended to what is signed, so a signature means "this taskcache entry" only.
const DOMAIN: &[u8] = b"taskcache entry signature v1\0";

/// A signing key (secret). Its `Debug` and `Display` never show the secret.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

/// A public key that verifies entries. Written `taskcache-pk-<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

/// A signature carried by an entry: which key made it, and the signature itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySignature {
    /// The signer's public key (32 bytes).
    pub public_key: Vec<u8>,
    /// The Ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

impl fmt::Debug for EntrySignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntrySignature")
            .field("public_key", &hex::encode(&self.public_key))
            .finish_non_exhaustive()
    }
}

fn bad_key(what: &str, reason: &str) -> BackendError {
    // Never echoes the value: it may be a secret.
    BackendError::InvalidInput {
        pattern: what.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_32(s: &str, prefix: &str, what: &str) -> BackendResult<[u8; 32]> {
    let hex_part = s.trim().strip_prefix(prefix).ok_or_else(|| {
        bad_key(
            what,
            &format!("expected `{prefix}` followed by 64 hex digits"),
        )
    })?;
    let bytes = hex::decode(hex_part).map_err(|_| {
        bad_key(
            what,
            &format!("expected `{prefix}` followed by 64 hex digits"),
        )
    })?;
    bytes.try_into().map_err(|_| {
        bad_key(
            what,
            &format!("expected `{prefix}` followed by 64 hex digits"),
        )
    })
}

impl SigningKey {
    /// A new random key (from the operating system's random source).
    pub fn generate() -> BackendResult<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            BackendError::unavailable(format!("no random numbers for a new key: {e}"))
        })?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Its public key, for readers.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The secret as text (`taskcache-sk-<64 hex>`), to store in a CI secret.
    #[must_use]
    pub fn expose_secret(&self) -> String {
        format!("{SECRET_PREFIX}{}", hex::encode(self.0.to_bytes()))
    }

    pub(crate) fn sign(&self, message: &[u8]) -> EntrySignature {
        let mut signed = DOMAIN.to_vec();
        signed.extend_from_slice(message);
        EntrySignature {
            public_key: self.0.verifying_key().to_bytes().to_vec(),
            signature: self.0.sign(&signed).to_bytes().to_vec(),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl FromStr for SigningKey {
    type Err = BackendError;
    fn from_str(s: &str) -> BackendResult<Self> {
        let seed = parse_32(s, SECRET_PREFIX, "signing key")?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }
}

impl PublicKey {
    /// Whether `signature` names this key as its signer.
    pub(crate) fn signed(&self, signature: &EntrySignature) -> bool {
        signature.public_key.as_slice() == self.0.as_bytes()
    }

    /// Whether `signature` is this key's valid signature of `message`.
    pub(crate) fn verifies(&self, message: &[u8], signature: &EntrySignature) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(signature.signature.as_slice()) else {
            return false;
        };
        if signature.public_key.as_slice() != self.0.as_bytes() {
            return false;
        }
        let mut signed = DOMAIN.to_vec();
        signed.extend_from_slice(message);
        self.0
            .verify(&signed, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = BackendError;
    fn from_str(s: &str) -> BackendResult<Self> {
        let bytes = parse_32(s, PUBLIC_PREFIX, "trusted key")?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad_key("trusted key", "not a valid Ed25519 public key"))
    }
}

/// Parses a comma- or whitespace-separated list of public keys.
pub fn parse_trusted_keys(list: &str) -> BackendResult<Vec<PublicKey>> {
    list.split([',', ' ', '\n', '\t'])
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}
