//! Bearer tokens issued by `gatehouse grant issue`.
//!
//! A token is `gh_` + 43 base62 characters (the 256 random bits of 32 bytes from the OS, as one
//! big-endian number, zero-padded) + 6 base62 characters of checksum (CRC-32 of those 43 ASCII
//! characters, zero-padded): 52 characters in all, e.g. `gh_0Xk…9Qa` ([`LEN`]). The checksum lets
//! the proxy refuse a mistyped or truncated token before any hashing or lookup, and lets secret
//! scanners recognise a gatehouse token with few false positives ([`PATTERN`]).
//!
//! Only [`sha256_hex`] of a token is ever written (into `grants/<name>.yaml`); the token itself is
//! shown once to whoever issued it. Tokens without the `gh_` prefix (the example repository's
//! demo tokens, tokens minted elsewhere) stay accepted as opaque strings: see [`admissible`].

use sha2::{Digest, Sha256};

/// What every gatehouse token starts with.
pub const PREFIX: &str = "gh_";
/// Base62 characters of the random part: 62^43 > 2^256 > 62^42.
pub const BODY_LEN: usize = 43;
/// Base62 characters of the checksum: 62^6 > 2^32.
pub const CHECKSUM_LEN: usize = 6;
/// Length of a whole token.
pub const LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;

/// A regular expression (Rust `regex` syntax) matching gatehouse tokens, for secret scanners.
pub const PATTERN: &str = r"\bgh_[0-9A-Za-z]{49}\b";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new token from 32 bytes of OS randomness. Panics only if the OS has no random source.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    from_bytes(&bytes)
}

/// The token whose random part is `bytes` (deterministic; [`generate`] feeds it OS randomness).
pub fn from_bytes(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(LEN);
    out.push_str(PREFIX);
    let body = base62_256(bytes);
    out.push_str(std::str::from_utf8(&body).expect("ASCII"));
    out.push_str(std::str::from_utf8(&checksum(&body)).expect("ASCII"));
    out
}

/// Whether `token` is a complete gatehouse token: the prefix, the length, the alphabet and the
/// checksum. Cheap (no hashing beyond a CRC-32 of 43 bytes), so it runs before any lookup.
pub fn well_formed(token: &str) -> bool {
    let b = token.as_bytes();
    if b.len() != LEN || !token.starts_with(PREFIX) {
        return false;
    }
    let rest = &b[PREFIX.len()..];
    if !rest.iter().all(|c| c.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, sum) = rest.split_at(BODY_LEN);
    // The body must also be a value below 2^256 (always true for generated tokens); a body above
    // it cannot come from `generate`, whatever its checksum.
    checksum(body) == sum && below_2_256(body)
}

/// What the proxy calls on a bearer token before hashing and looking it up: a `gh_` token must be
/// [`well_formed`] (a one-character mistake is refused here); any other string is an opaque token
/// and only its hash decides.
pub fn admissible(token: &str) -> bool {
    !token.starts_with(PREFIX) || well_formed(token)
}

/// Lowercase hex SHA-256 of the token's bytes: what `grants/<name>.yaml` stores and what the
/// proxy looks tokens up by.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The 32 bytes as one big-endian number in base62, most significant digit first, zero-padded
/// to 43 digits. Divides by 62^5 (< 2^30) over 32-bit limbs: nine passes of eight divisions.
fn base62_256(bytes: &[u8; 32]) -> [u8; BODY_LEN] {
    const CHUNK: u64 = 62u64.pow(5);
    let mut limbs = [0u32; 8];
    for (i, l) in limbs.iter_mut().enumerate() {
        *l = u32::from_be_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    }
    let mut digits = [0u8; 45]; // least significant first; 45 = 9 passes × 5
    for pass in 0..9 {
        let mut rem = 0u64;
        for l in limbs.iter_mut() {
            let cur = (rem << 32) | *l as u64;
            *l = (cur / CHUNK) as u32;
            rem = cur % CHUNK;
        }
        for k in 0..5 {
            digits[pass * 5 + k] = (rem % 62) as u8;
            rem /= 62;
        }
    }
    debug_assert!(limbs.iter().all(|&l| l == 0) && digits[43] == 0 && digits[44] == 0);
    let mut out = [0u8; BODY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = ALPHABET[digits[BODY_LEN - 1 - i] as usize];
    }
    out
}

/// Whether 43 base62 digits denote a number below 2^256, i.e. at most the encoding of 2^256 - 1.
fn below_2_256(body: &[u8]) -> bool {
    use std::sync::OnceLock;
    static MAX: OnceLock<[u8; BODY_LEN]> = OnceLock::new();
    let max = MAX.get_or_init(|| base62_256(&[0xff; 32]));
    // Same length and the alphabet is in ascending ASCII order: byte order is numeric order.
    body <= &max[..]
}

/// Six base62 digits of the CRC-32 of `body`, most significant first.
fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut v = crc32(body) as u64;
    let mut out = [0u8; CHECKSUM_LEN];
    for o in out.iter_mut().rev() {
        *o = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    out
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320: the zlib/PNG one). It detects every
/// error burst of up to 32 bits, so every single-character change of the body.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests;
