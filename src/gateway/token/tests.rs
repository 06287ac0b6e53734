use std::collections::HashSet;

use super::*;

/// Tokens compared by value, without keeping a million `String`s alive.
fn key(t: &str) -> [u8; LEN] {
    t.as_bytes().try_into().expect("a token is LEN bytes")
}

fn distinct_and_well_formed(n: usize) {
    let mut seen: HashSet<[u8; LEN]> = HashSet::with_capacity(n);
    for _ in 0..n {
        let t = generate();
        assert!(well_formed(&t), "not well formed: {t}");
        assert!(seen.insert(key(&t)), "collision after {} tokens", seen.len());
    }
}

/// The bar. About 1 s optimized; unoptimized (about 25 s) it only runs when asked:
/// `cargo test --release --lib token` (or `-- --ignored` in a debug build).
#[test]
#[cfg_attr(debug_assertions, ignore = "25 s unoptimized: run with cargo test --release --lib token")]
fn a_million_tokens_are_distinct_and_well_formed() {
    distinct_and_well_formed(1_000_000);
}

/// What every debug `cargo test` runs (about 2.5 s).
#[test]
fn a_hundred_thousand_tokens_are_distinct_and_well_formed() {
    distinct_and_well_formed(100_000);
}

#[test]
fn shape() {
    let t = generate();
    assert_eq!(t.len(), LEN);
    assert_eq!(LEN, 52);
    assert!(t.starts_with("gh_"));
    assert!(t[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
    let re = regex::Regex::new(PATTERN).unwrap();
    assert!(re.is_match(&t));
    assert_eq!(re.find(&format!("token: {t}\n")).unwrap().as_str(), t);
    assert!(!re.is_match(&t[..LEN - 1]), "a truncated token is not matched");
    assert!(!re.is_match("ghp_0123456789012345678901234567890123456789"), "GitHub's own tokens are not ours");
}

#[test]
fn encoding_is_big_endian_base62_zero_padded() {
    let zero = from_bytes(&[0; 32]);
    assert_eq!(&zero[3..46], "0".repeat(43));
    let mut one = [0u8; 32];
    one[31] = 1;
    assert_eq!(&from_bytes(&one)[3..46], format!("{}1", "0".repeat(42)));
    one[31] = 62;
    assert_eq!(&from_bytes(&one)[3..46], format!("{}10", "0".repeat(41)));
    // 2^256 - 1 needs all 43 digits, and its leading digit is below the top of the alphabet.
    let max = from_bytes(&[0xff; 32]);
    assert_ne!(&max[3..4], "0");
    assert!(well_formed(&max) && well_formed(&zero));
    // A body above 2^256 - 1 is refused even with a correct checksum.
    let body = "z".repeat(43);
    let forged = format!("gh_{body}{}", std::str::from_utf8(&checksum(body.as_bytes())).unwrap());
    assert!(!well_formed(&forged));
}

#[test]
fn crc32_known_values() {
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
}

/// Every character of a token replaced by every other alphanumeric character (and a few that
/// are not): the checksum (or the prefix, or the alphabet check) refuses all of them.
#[test]
fn every_single_character_substitution_is_rejected() {
    let others: Vec<u8> = ALPHABET.iter().copied().chain(*b"_-+/=.~ \0").collect();
    let mut checked = 0;
    for _ in 0..50 {
        let t = generate();
        let b = t.as_bytes();
        for pos in 0..LEN {
            for &c in &others {
                if c == b[pos] {
                    continue;
                }
                let mut m = b.to_vec();
                m[pos] = c;
                let m = String::from_utf8(m).unwrap();
                assert!(!well_formed(&m), "accepted {m} (position {pos} of {t})");
                assert!(!admissible(&m) || !m.starts_with(PREFIX));
                checked += 1;
            }
        }
    }
    assert!(checked > 50 * LEN * 61);
}

#[test]
fn truncated_extended_or_foreign_strings_are_rejected() {
    let t = generate();
    assert!(well_formed(&t) && admissible(&t));
    assert!(!well_formed(&t[..LEN - 1]));
    assert!(!well_formed(&format!("{t}0")));
    assert!(!well_formed(&t[3..]));
    assert!(!well_formed(&format!("GH_{}", &t[3..])));
    assert!(!well_formed(""));
    // Two adjacent characters swapped (a common typing mistake) are refused too.
    let b = t.as_bytes();
    for i in 3..LEN - 1 {
        if b[i] != b[i + 1] {
            let mut m = b.to_vec();
            m.swap(i, i + 1);
            assert!(!well_formed(std::str::from_utf8(&m).unwrap()), "swap at {i}");
        }
    }
    // Opaque tokens (no gh_ prefix) are left to the hash lookup.
    assert!(admissible("demo-token-alice"));
    assert!(!well_formed("demo-token-alice"));
    assert!(!admissible("gh_demo-token"));
}

#[test]
fn sha256_hex_is_lowercase_hex_of_the_bytes() {
    // The example repository's demo token and the hash in grants/alice.yaml.
    assert_eq!(sha256_hex("demo-token-alice"), "1159bf80f41ccf3d5efafda50135b734fe094f032809efd1a5d85455c5359b40");
    let t = generate();
    let h = sha256_hex(&t);
    assert_eq!(h.len(), 64);
    assert!(h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
}

/// Character frequencies per position are flat (base62 of uniform bytes), apart from the first
/// digit, which cannot exceed the leading digit of 2^256 - 1; checksums spread too.
#[test]
fn distribution_is_flat() {
    const N: usize = 62 * 1000;
    let mut counts = vec![[0u32; 128]; LEN];
    for _ in 0..N {
        for (p, c) in generate().bytes().enumerate() {
            counts[p][c as usize] += 1;
        }
    }
    let expected = (N / 62) as f64; // 1000 per character and position
    let checksum_start = PREFIX.len() + BODY_LEN;
    for (p, row) in counts.iter().enumerate().skip(PREFIX.len() + 1) {
        let used = ALPHABET.iter().filter(|&&c| row[c as usize] > 0).count();
        if p == checksum_start {
            // The CRC is below 2^32 < 5 * 62^5: the leading checksum digit is 0..=4.
            assert!(b"01234".iter().map(|&c| row[c as usize]).sum::<u32>() as usize == N);
            continue;
        }
        assert_eq!(used, 62, "position {p} uses only {used} characters");
        if p < checksum_start {
            // Chi-square with 61 degrees of freedom: mean 61, sd 11; 150 is ~8 sd out.
            let chi2: f64 = ALPHABET.iter().map(|&c| (row[c as usize] as f64 - expected).powi(2) / expected).sum();
            assert!(chi2 < 150.0, "position {p}: chi-square {chi2:.1}");
        }
    }
    // The first digit is (2^256 - 1) / 62^42, about 60.5: digits below the top one each take
    // 62^42 / 2^256 of the tokens, the top one the rest, and none is above it.
    let top = from_bytes(&[0xff; 32]).as_bytes()[3];
    let first = &counts[3];
    assert!(ALPHABET.iter().filter(|&&c| c > top).all(|&c| first[c as usize] == 0));
    let full = N as f64 / (2f64.powi(256) / 62f64.powi(42));
    let below: Vec<u8> = ALPHABET.iter().copied().filter(|&c| c < top).collect();
    let rest = N as f64 - full * below.len() as f64;
    let chi2: f64 = below.iter().map(|&c| (first[c as usize] as f64 - full).powi(2) / full).sum::<f64>()
        + (first[top as usize] as f64 - rest).powi(2) / rest;
    assert!(chi2 < 150.0, "first digit: chi-square {chi2:.1}");
}
