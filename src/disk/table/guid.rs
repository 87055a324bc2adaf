//! GUIDs as GPT stores them: the first three fields little-endian, the last two as bytes.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (any case) into GPT byte order.
    pub fn parse(text: &str) -> Option<Guid> {
        let groups: Vec<&str> = text.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5
            || groups.iter().zip(lens).any(|(g, l)| g.len() != l)
            || !groups
                .iter()
                .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        let hex: String = groups.concat();
        let mut be = [0u8; 16];
        for (i, byte) in be.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        let mut out = be;
        out[0..4].reverse();
        out[4..6].reverse();
        out[6..8].reverse();
        Some(Guid(out))
    }

    /// A random version-4 GUID, as sgdisk's `R` makes one.
    pub fn random() -> std::io::Result<Guid> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        // Version 4 in the high nibble of the third field (stored little-endian: byte 7),
        // the RFC 4122 variant in byte 8.
        bytes[7] = (bytes[7] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Guid(bytes))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for byte in &b[10..] {
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

/// The type GUID for an sgdisk short code (`8300`, `ef00`) or a full GUID.
pub fn type_guid(code: &str) -> Option<Guid> {
    if code.len() == 4 {
        let lower = code.to_ascii_lowercase();
        return super::typecode::SGDISK_TYPE_CODES
            .iter()
            .find(|(c, _)| *c == lower)
            .and_then(|(_, g)| Guid::parse(g));
    }
    Guid::parse(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_byte_order() {
        let g = Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap();
        assert_eq!(g.0[0..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(g.0[8..10], [0xba, 0x4b]);
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert!(Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93").is_none());
        assert!(Guid::parse("g12a7328-f81f-11d2-ba4b-00a0c93ec93b").is_none());
    }

    #[test]
    fn short_codes() {
        assert_eq!(
            type_guid("EF00").unwrap().to_string(),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        assert_eq!(
            type_guid("8300").unwrap().to_string(),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert!(type_guid("zz00").is_none());
        let r = Guid::random().unwrap();
        assert_eq!(r.to_string().as_bytes()[14], b'4');
    }
}
