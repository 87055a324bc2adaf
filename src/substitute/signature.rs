//! Nix's ed25519 signatures on path infos: keys and signatures are `<name>:<base64>`, and a
//! signature is over the path's [fingerprint](super::narinfo::fingerprint).

use std::collections::BTreeMap;

use data_encoding::BASE64;
use ed25519_dalek::{Signature, VerifyingKey};

/// The key Nix trusts when nothing is configured, for `https://cache.nixos.org`.
pub const CACHE_NIXOS_ORG_KEY: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "trusted public key {0:?} is not `<name>:<base64 of 32 bytes>` (as `nix-store --generate-binary-cache-key` writes it)"
)]
pub struct BadKey(pub String);

/// The public keys signatures are checked against, by name.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl TrustedKeys {
    /// Parses `trusted-public-keys` entries; one that does not parse is an error, not skipped,
    /// so a typo in a flag does not silently distrust a cache.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, BadKey> {
        let mut keys = BTreeMap::new();
        for entry in entries {
            let bad = || BadKey(entry.to_owned());
            let (name, b64) = entry.split_once(':').ok_or_else(bad)?;
            let bytes = BASE64.decode(b64.as_bytes()).map_err(|_| bad())?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
            if name.is_empty() {
                return Err(bad());
            }
            keys.insert(name.to_owned(), key);
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether one of `signatures` is a valid signature of `fingerprint` by a trusted key.
    /// Malformed signatures and signatures by unknown keys count for nothing.
    pub fn verifies(&self, fingerprint: &str, signatures: &[String]) -> bool {
        signatures.iter().any(|sig| {
            let Some((name, b64)) = sig.split_once(':') else {
                return false;
            };
            let Some(key) = self.keys.get(name) else {
                return false;
            };
            let Ok(bytes) = BASE64.decode(b64.as_bytes()) else {
                return false;
            };
            let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
                return false;
            };
            key.verify_strict(fingerprint.as_bytes(), &Signature::from_bytes(&bytes))
                .is_ok()
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// A key pair as `nix-store --generate-binary-cache-key NAME` writes it: the secret is the
    /// 32-byte seed followed by the public key.
    pub(crate) fn key_pair(name: &str, seed: u8) -> (SigningKey, String) {
        let secret = SigningKey::from_bytes(&[seed; 32]);
        let public = format!(
            "{name}:{}",
            BASE64.encode(secret.verifying_key().as_bytes())
        );
        (secret, public)
    }

    pub(crate) fn sign(name: &str, key: &SigningKey, fingerprint: &str) -> String {
        format!(
            "{name}:{}",
            BASE64.encode(&key.sign(fingerprint.as_bytes()).to_bytes())
        )
    }

    #[test]
    fn accepts_only_a_trusted_valid_signature() {
        let (secret, public) = key_pair("test-1", 7);
        let (other, other_public) = key_pair("other-1", 9);
        let keys = TrustedKeys::parse([public.as_str(), CACHE_NIXOS_ORG_KEY]).unwrap();
        let fp = "1;/nix/store/x;sha256:y;1;";
        assert!(keys.verifies(fp, &[sign("test-1", &secret, fp)]));
        // Right key name, wrong message; unknown key; a key posing under a trusted name.
        assert!(!keys.verifies(fp, &[sign("test-1", &secret, "1;other")]));
        assert!(!keys.verifies(fp, &[sign("other-1", &other, fp)]));
        assert!(!keys.verifies(fp, &[sign("test-1", &other, fp)]));
        assert!(!keys.verifies(fp, &["test-1:AAAA".to_owned(), "garbage".to_owned()]));
        // One good signature among bad ones is enough, as for Nix.
        assert!(keys.verifies(fp, &["x:y".to_owned(), sign("test-1", &secret, fp)]));
        let _ = other_public;
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "",
            "nocolon",
            "name:",
            ":AAAA",
            "name:not-base64!",
            "name:AAAA",
        ] {
            assert_eq!(
                TrustedKeys::parse([bad]).unwrap_err(),
                BadKey(bad.to_owned())
            );
        }
        assert!(TrustedKeys::parse([CACHE_NIXOS_ORG_KEY]).is_ok());
    }
}
