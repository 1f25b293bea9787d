//! API keys: format check, hashing, the key cache and the key sources behind it.
//!
//! ```text
//! Bearer sgk_… ─▶ client over its failure allowance? (429) ─▶ format check, checksum
//!   (no lookup if malformed) ─▶ SHA-256 ─▶ cache of valid keys | store of unknown keys
//!                                                              │ miss / stale
//!                                                              ▼ one lookup-budget token (else 503)
//!                                       source: key file (hot-reloaded) | control plane (HTTP)
//! ```
//! Only the hash is stored, cached, sent to the control plane or logged (first 8 hex chars).

pub mod cache;
pub mod clock;
pub mod control_plane;
pub mod file_source;
pub mod flood;
pub mod record;
pub mod settings;
pub mod unknown;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use cache::KeyStore;
pub use record::{KeyRecord, Timestamp};

/// SHA-256 of the whole key string, prefix included.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: impl AsRef<[u8]>) -> Self {
        Self(Sha256::digest(key.as_ref()).into())
    }

    /// Lowercase hex, as stored in key files and sent to the control plane.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0x0f)] as char);
        }
        out
    }

    /// The first 8 hex characters: enough to correlate in logs, useless to an attacker.
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_owned()
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let high = hex_value(pair[0])?;
            let low = hex_value(pair[1])?;
            out[i] = (high << 4) | low;
        }
        Some(Self(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Never prints the whole hash.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", self.short())
    }
}

/// Longest key accepted after the prefix (SPEC §4.1).
pub const MAX_KEY_LENGTH: usize = 256;

/// Prefix + `min_length..=256` characters of `[A-Za-z0-9_-]`. Checked before any lookup.
pub fn is_well_formed(key: &[u8], prefix: &str, min_length: usize) -> bool {
    let Some(rest) = key.strip_prefix(prefix.as_bytes()) else {
        return false;
    };
    // A table lookup per byte, folded without early exit: no branch per character on a
    // path any client can drive (every refused key passes here).
    (min_length..=MAX_KEY_LENGTH).contains(&rest.len())
        && rest
            .iter()
            .fold(true, |ok, &b| ok & KEY_CHARACTERS[usize::from(b)])
}

/// `[A-Za-z0-9_-]`, indexed by byte.
static KEY_CHARACTERS: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        byte += 1;
    }
    table
};

/// Characters of a generated key after the prefix.
pub const GENERATED_KEY_CHARS: usize = 40;

/// Characters at the end of a generated key that hold its checksum.
pub const CHECKSUM_CHARS: usize = 6;

/// The base62 alphabet of generated keys; a character's index is its digit value.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key: prefix + 34 base62 characters from the OS RNG (202 bits) + a 6-character
/// checksum of everything before it (see [`checksum_chars`]), 40 characters after the prefix.
pub fn generate_key(prefix: &str) -> Result<String, getrandom::Error> {
    const RANDOM_CHARS: usize = GENERATED_KEY_CHARS - CHECKSUM_CHARS;
    let mut key = String::with_capacity(prefix.len() + GENERATED_KEY_CHARS);
    key.push_str(prefix);
    let mut produced = 0;
    while produced < RANDOM_CHARS {
        let mut buffer = [0u8; 64];
        getrandom::fill(&mut buffer)?;
        for byte in buffer {
            // Rejection sampling: 248 = 4 * 62, so every character is equally likely.
            if byte < 248 && produced < RANDOM_CHARS {
                key.push(ALPHABET[usize::from(byte % 62)] as char);
                produced += 1;
            }
        }
    }
    let checksum = checksum_chars(key.as_bytes());
    key.extend(checksum.iter().map(|&c| c as char));
    Ok(key)
}

/// The checksum characters of a generated key: CRC-32/ISO-HDLC (the zlib/PNG CRC) of `body`
/// (prefix and random characters), written in base62 with the key alphabet, most
/// significant digit first, zero-padded to 6 characters (62^6 > 2^32).
pub fn checksum_chars(body: &[u8]) -> [u8; CHECKSUM_CHARS] {
    let mut value = crc32(body);
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// Whether `key` is prefix + 40 base62 characters whose last 6 are the checksum of the rest.
/// Cheap (one CRC over at most a few dozen bytes), so it runs before hashing or any lookup.
pub fn verify_checksum(key: &[u8], prefix: &str) -> bool {
    let Some(rest) = key.strip_prefix(prefix.as_bytes()) else {
        return false;
    };
    if rest.len() != GENERATED_KEY_CHARS || !rest.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (body, checksum) = key.split_at(key.len() - CHECKSUM_CHARS);
    checksum_chars(body) == checksum
}

/// CRC-32/ISO-HDLC: reflected polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &byte| {
        CRC32_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8)
    })
}

/// One entry per byte value, built at compile time.
static CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
};

/// An in-memory key set, keyed by hash.
pub type KeyMap = HashMap<KeyHash, KeyRecord>;

/// Where key records come from.
#[derive(Debug)]
pub enum KeySource {
    /// A key file, hot-reloaded.
    File(Arc<file_source::FileKeys>),
    /// `GET {url}/v1/keys/{hash}`.
    ControlPlane(Box<control_plane::ControlPlane>),
    /// A fixed set held in memory (`authgate demo`).
    Memory(KeyMap),
    /// A store that implements [`RecordSource`] (the key service's database).
    Store(Arc<dyn RecordSource>),
}

/// The answer of a [`RecordSource`] lookup.
pub type RecordLookup<'a> =
    Pin<Box<dyn Future<Output = Result<Option<KeyRecord>, SourceError>> + Send + 'a>>;

/// A key source implemented outside this module (so the key cache needs to know nothing of
/// databases): one lookup by hash, `Ok(None)` for an unknown key.
pub trait RecordSource: Send + Sync + fmt::Debug {
    fn lookup<'a>(&'a self, hash: &'a KeyHash) -> RecordLookup<'a>;
    /// `authgate_key_source_requests_total` and logs name it so.
    fn kind(&self) -> &'static str;
}

/// The key source could not answer (timeout, 5xx, garbage): distinct from "unknown key".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key source failed: {0}")]
pub struct SourceError(pub String);

impl KeySource {
    /// `Ok(None)` for an unknown key.
    pub async fn lookup(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, SourceError> {
        match self {
            Self::File(file) => Ok(file.get(hash)),
            Self::ControlPlane(control_plane) => control_plane.lookup(hash).await,
            Self::Memory(map) => Ok(map.get(hash).cloned()),
            Self::Store(store) => store.lookup(hash).await,
        }
    }

    /// Whether a lookup leaves the process (and so spends the source-lookup budget). A key
    /// file or a demo set is a map in memory: throttling it would protect nothing.
    pub fn lookups_are_remote(&self) -> bool {
        match self {
            Self::File(_) | Self::Memory(_) => false,
            Self::ControlPlane(_) | Self::Store(_) => true,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::ControlPlane(_) => "control_plane",
            Self::Memory(_) => "memory",
            Self::Store(store) => store.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_lowercase_hex_sha256_of_the_whole_key() {
        // printf sgk_test | sha256sum
        let hash = KeyHash::of("sgk_test");
        assert_eq!(
            hash.to_hex(),
            "372b9fc823f5fa699a931c5eb8acfb8de18c6e04ae13ec71677f6b9dde8991bd"
        );
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(KeyHash::from_hex(&hash.to_hex().to_uppercase()), Some(hash));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(
            format!("{hash:?}"),
            format!("KeyHash({}…)", &hash.to_hex()[..8])
        );
    }

    #[test]
    fn well_formed_keys_only() {
        let good = format!("sgk_{}", "a".repeat(32));
        assert!(is_well_formed(good.as_bytes(), "sgk_", 32));
        assert!(is_well_formed(
            format!("sgk_{}", "A-_9".repeat(64)).as_bytes(),
            "sgk_",
            32
        ));
        for bad in [
            format!("sgk_{}", "a".repeat(31)),
            format!("sgk_{}", "a".repeat(257)),
            format!("xyz_{}", "a".repeat(32)),
            format!("sgk_{}!", "a".repeat(32)),
            format!("sgk_{}é", "a".repeat(32)),
            "sgk_".to_owned(),
        ] {
            assert!(!is_well_formed(bad.as_bytes(), "sgk_", 32), "{bad}");
        }
    }

    /// The character table against its definition, for every byte value.
    #[test]
    fn every_byte_is_judged_by_the_key_alphabet() {
        for byte in 0..=255u8 {
            let mut key = b"sgk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec();
            key.push(byte);
            let expected = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
            assert_eq!(
                is_well_formed(&key, "sgk_", 32),
                expected,
                "byte {byte:#04x}"
            );
        }
    }

    #[test]
    fn crc32_matches_the_iso_hdlc_check_value() {
        // The catalogue's check value for CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// Known vectors, computed independently (`zlib.crc32` and base62 by hand).
    #[test]
    fn checksum_known_vectors() {
        // crc32("sgk_" + 34 × "0") = 0xF2111609.
        let key = format!("sgk_{}4QqPCz", "0".repeat(34));
        assert!(verify_checksum(key.as_bytes(), "sgk_"));
        assert!(!verify_checksum(
            format!("sgk_{}4QqPCZ", "0".repeat(34)).as_bytes(),
            "sgk_"
        ));
        assert_eq!(checksum_chars(b"123456789"), *b"3jZRME");
        assert_eq!(checksum_chars(b""), *b"000000");
        // The largest CRC still fits in six characters.
        assert_eq!(crc32(b"\xff\xff\xff\xff"), 0xFFFF_FFFF);
        assert_eq!(checksum_chars(b"\xff\xff\xff\xff"), *b"4gfFC3");
    }

    #[test]
    fn generated_keys_verify_and_every_single_character_change_fails() {
        for _ in 0..20 {
            let key = generate_key("sgk_").unwrap();
            assert!(verify_checksum(key.as_bytes(), "sgk_"), "{key}");
            let bytes = key.as_bytes();
            for position in 0..bytes.len() {
                for &replacement in ALPHABET.iter().chain(b"_-") {
                    if replacement == bytes[position] {
                        continue;
                    }
                    let mut changed = bytes.to_vec();
                    changed[position] = replacement;
                    assert!(
                        !verify_checksum(&changed, "sgk_"),
                        "{} at {position}",
                        replacement as char
                    );
                }
            }
        }
    }

    #[test]
    fn keys_of_the_wrong_length_or_prefix_fail_the_checksum() {
        let key = generate_key("sgk_").unwrap();
        // 39 characters: the last one dropped; 41: one appended, or one inserted at the start.
        assert!(!verify_checksum(&key.as_bytes()[..key.len() - 1], "sgk_"));
        assert!(!verify_checksum(format!("{key}0").as_bytes(), "sgk_"));
        assert!(!verify_checksum(
            format!("sgk_0{}", &key[4..]).as_bytes(),
            "sgk_"
        ));
        // A 39-character body with a valid checksum of its own is still refused.
        let short = format!("sgk_{}", "a".repeat(33));
        let short = format!(
            "{short}{}",
            std::str::from_utf8(&checksum_chars(short.as_bytes())).unwrap()
        );
        assert_eq!(short.len(), 4 + 39);
        assert!(!verify_checksum(short.as_bytes(), "sgk_"));
        // The prefix is part of the checksummed text.
        assert!(!verify_checksum(
            format!("xyz_{}", &key[4..]).as_bytes(),
            "xyz_"
        ));
        assert!(!verify_checksum(key.as_bytes(), "xyz_"));
        assert!(verify_checksum(
            generate_key("acme_").unwrap().as_bytes(),
            "acme_"
        ));
        assert!(!verify_checksum(b"", "sgk_"));
    }

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate_key("sgk_").unwrap();
        let b = generate_key("sgk_").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + GENERATED_KEY_CHARS);
        assert!(is_well_formed(a.as_bytes(), "sgk_", 32));
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
