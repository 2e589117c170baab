//! API keys: generated once, shown once, stored as a SHA-256 hash.

use sha2::{Digest, Sha256};

/// Every API key starts with this.
pub(crate) const KEY_PREFIX: &str = "sk_";
/// How many characters of a key are kept visible, to tell keys apart in lists.
const VISIBLE_CHARS: usize = 11;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key: the secret is shown to the user once, then only
/// `hash` and `prefix` are kept.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// `sk_` followed by 43 base62 characters (256 random bits).
    pub secret: String,
    /// The first characters of the secret, safe to list.
    pub prefix: String,
    /// The SHA-256 of the secret, hex: what is stored.
    pub hash: String,
}

/// Random bytes a key is made from, one per character.
pub const KEY_ENTROPY_BYTES: usize = 43;

/// Makes a key from `entropy`, which must come from a secure random source
/// (the host's `wasi:random`). Each byte becomes one base62 character; the
/// modulo's slight bias leaves about 255 bits of entropy in the 43 characters.
pub fn generate_api_key(entropy: &[u8; KEY_ENTROPY_BYTES]) -> NewApiKey {
    let mut secret = String::from(KEY_PREFIX);
    secret.extend(entropy.iter().map(|b| BASE62[usize::from(b % 62)] as char));
    NewApiKey {
        prefix: secret[..VISIBLE_CHARS].to_string(),
        hash: hash_api_key(&secret),
        secret,
    }
}

/// The stored form of a key: SHA-256, lower-case hex.
pub fn hash_api_key(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_base62_with_a_visible_prefix() {
        let mut entropy = [0u8; KEY_ENTROPY_BYTES];
        getrandom::fill(&mut entropy).unwrap();
        let key = generate_api_key(&entropy);
        assert!(key.secret.starts_with("sk_"));
        assert_eq!(key.secret.len(), 46);
        assert!(key.secret[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(key.secret.starts_with(&key.prefix));
        assert_eq!(key.hash, hash_api_key(&key.secret));
        entropy[0] ^= 1;
        assert_ne!(key.secret, generate_api_key(&entropy).secret);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
    }
}
