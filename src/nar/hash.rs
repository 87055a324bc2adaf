//! SHA-256 NAR hashes and the encodings Nix prints them in.
//!
//! Nix shows one digest in three ways: `sha256:<base16>` in its SQLite database,
//! `sha256:<nix-base32>` in `nix path-info --json` (2.8) and `nix-hash --base32`, and
//! `sha256-<base64>` (SRI) in `nix hash path`. [`NarHash`] parses all three.

use std::fmt;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::{Digest, Sha256};

/// Nix's base-32 alphabet: digits and lowercase letters without `e`, `o`, `u`, `t`.
const NIX32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Whether `c` is a digit of Nix's base 32 (a store path's digest is written in it).
pub fn is_nix32_digit(c: u8) -> bool {
    NIX32_ALPHABET.contains(&c)
}

/// Encodes bytes in Nix's base 32, which reads the bytes from the end (it is not RFC 4648).
pub fn nix32_encode(bytes: &[u8]) -> String {
    let len = nix32_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = bytes
            .get(i + 1)
            .map_or(0, |b| (u16::from(*b) << (8 - j)) as u8);
        out.push(NIX32_ALPHABET[usize::from((low | high) & 0x1f)] as char);
    }
    out
}

/// Decodes Nix's base 32; `None` on a character outside the alphabet or bits that do not fit.
pub fn nix32_decode(text: &[u8], byte_len: usize) -> Option<Vec<u8>> {
    if text.len() != nix32_len(byte_len) {
        return None;
    }
    let mut out = vec![0u8; byte_len];
    for (n, c) in text.iter().rev().enumerate() {
        let digit = NIX32_ALPHABET.iter().position(|a| a == c)? as u16;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= (digit << j) as u8;
        let carry = (digit << j) >> 8;
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry as u8,
            None if carry != 0 => return None,
            None => {}
        }
    }
    Some(out)
}

/// Length of the Nix base-32 encoding of `byte_len` bytes.
pub const fn nix32_len(byte_len: usize) -> usize {
    (byte_len * 8).div_ceil(5)
}

/// The SHA-256 digest of a NAR serialisation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NarHash(pub [u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("not a sha256 hash in a form Nix uses (sha256:<base16|base32>, sha256-<base64>): {0:?}")]
pub struct ParseHashError(String);

impl NarHash {
    pub fn digest(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses `sha256:<base16>`, `sha256:<nix-base32>` or `sha256-<base64>`.
    pub fn parse(text: &str) -> Result<Self, ParseHashError> {
        let err = || ParseHashError(text.to_owned());
        let bytes = if let Some(rest) = text.strip_prefix("sha256:") {
            match rest.len() {
                64 => HEXLOWER_PERMISSIVE
                    .decode(rest.as_bytes())
                    .map_err(|_| err())?,
                52 => nix32_decode(rest.as_bytes(), 32).ok_or_else(err)?,
                _ => return Err(err()),
            }
        } else if let Some(rest) = text.strip_prefix("sha256-") {
            BASE64.decode(rest.as_bytes()).map_err(|_| err())?
        } else {
            return Err(err());
        };
        Ok(Self(bytes.try_into().map_err(|_| err())?))
    }

    /// `sha256:<base16>`, the form Nix's database stores.
    pub fn to_base16(&self) -> String {
        format!("sha256:{}", data_encoding::HEXLOWER.encode(&self.0))
    }

    /// `<nix-base32>` without a prefix, as `nix-hash --type sha256 --base32` prints it.
    pub fn to_nix32(&self) -> String {
        nix32_encode(&self.0)
    }

    /// `sha256-<base64>`, as `nix hash path` prints it.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(&self.0))
    }
}

impl fmt::Display for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_sri())
    }
}

impl fmt::Debug for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarHash({})", self.to_sri())
    }
}

/// A writer or reader adapter's running SHA-256 and byte count.
#[derive(Default, Clone)]
pub struct HashCounter {
    hasher: Sha256,
    len: u64,
}

impl HashCounter {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (NarHash, u64) {
        (NarHash(self.hasher.finalize().into()), self.len)
    }
}

/// A [`std::io::Write`] that hashes and counts what passes through to `inner`.
pub struct HashingWriter<W> {
    pub inner: W,
    pub hash: HashCounter,
}

impl<W: std::io::Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hash: HashCounter::default(),
        }
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix32_round_trips_and_matches_known_values() {
        // Known pair from Nix's own tests: sha256("abc").
        let abc = NarHash::digest(b"abc");
        assert_eq!(
            abc.to_nix32(),
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
        );
        assert_eq!(nix32_decode(abc.to_nix32().as_bytes(), 32).unwrap(), abc.0);
        for len in [0usize, 1, 5, 20, 32] {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let text = nix32_encode(&bytes);
            assert_eq!(text.len(), nix32_len(len));
            assert_eq!(nix32_decode(text.as_bytes(), len).unwrap(), bytes);
        }
    }

    #[test]
    fn nix32_rejects_bad_text() {
        assert!(nix32_decode(b"e", 0).is_none());
        let mut text = nix32_encode(&[0xff; 20]).into_bytes();
        text[0] = b'e';
        assert!(nix32_decode(&text, 20).is_none());
        // The top digit of 32 bytes can carry only one bit: `z` (31) overflows.
        let mut text = nix32_encode(&[0; 32]).into_bytes();
        text[0] = b'z';
        assert!(nix32_decode(&text, 32).is_none());
    }

    #[test]
    fn parses_every_form_to_the_same_digest() {
        let h = NarHash::parse(
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )
        .unwrap();
        assert_eq!(h, NarHash::digest(b"abc"));
        assert_eq!(NarHash::parse(&h.to_base16()).unwrap(), h);
        assert_eq!(
            NarHash::parse(&format!("sha256:{}", h.to_nix32())).unwrap(),
            h
        );
        assert_eq!(NarHash::parse(&h.to_sri()).unwrap(), h);
        assert!(NarHash::parse("md5:abc").is_err());
        assert!(NarHash::parse("sha256:zz").is_err());
        assert!(NarHash::parse("sha256-AAAA").is_err());
    }
}
