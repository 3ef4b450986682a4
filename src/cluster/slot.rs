//! Hash slots: the CRC16 Redis Cluster hashes keys with, and hash tags.
//!
//! A key's slot is `CRC16(key) mod 16384`, where `key` is replaced by its
//! *hash tag* when it has one: the bytes between the first `{` and the first
//! `}` after it, if there is at least one byte between them. Keys that share
//! a tag (`{user1000}.following`, `{user1000}.followers`) share a slot, so
//! multi-key commands on them are allowed in a cluster.
//!
//! ```
//! use redis_layers::cluster::slot::{key_slot, SLOTS};
//!
//! assert_eq!(key_slot(b"foo"), 12182);
//! assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
//! assert!(key_slot(b"anything") < SLOTS);
//! ```

/// Number of hash slots in a Redis Cluster: slots are `0..SLOTS`.
///
/// ```
/// assert_eq!(redis_layers::cluster::slot::SLOTS, 16384);
/// ```
pub const SLOTS: u16 = 16384;

/// CRC16-XMODEM lookup tables (polynomial 0x1021, no reflection), built at
/// compile time. `CRC16[0][x]` is the register after feeding byte `x` to a
/// zero register; `CRC16[k][x]` the same followed by `k` zero bytes. The CRC
/// is linear, so four bytes cost four independent lookups XORed together
/// instead of four dependent steps ("slicing by 4"; 2 KiB of tables).
const CRC16: [[u16; 256]; 4] = crc16_tables();

const fn crc16_tables() -> [[u16; 256]; 4] {
    let mut t = [[0u16; 256]; 4];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 4 {
        let mut i = 0;
        while i < 256 {
            // One more zero byte fed.
            let prev = t[k - 1][i];
            t[k][i] = (prev << 8) ^ t[0][(prev >> 8) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0, no reflection, no final
/// XOR): the checksum Redis Cluster hashes keys with. Table-driven, four
/// bytes per step (tables built at compile time).
///
/// ```
/// use redis_layers::cluster::slot::crc16;
///
/// assert_eq!(crc16(b"123456789"), 0x31C3); // the standard check value
/// assert_eq!(crc16(b""), 0);
/// ```
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        crc = step4(crc, q.try_into().expect("4 bytes"));
    }
    for &b in quads.remainder() {
        crc = step1(crc, b);
    }
    crc
}

/// Four message bytes into the register at once (the register's two bytes
/// meet the first two message bytes).
#[inline(always)]
fn step4(crc: u16, q: [u8; 4]) -> u16 {
    CRC16[3][usize::from((crc >> 8) as u8 ^ q[0])]
        ^ CRC16[2][usize::from(crc as u8 ^ q[1])]
        ^ CRC16[1][usize::from(q[2])]
        ^ CRC16[0][usize::from(q[3])]
}

/// One message byte into the register.
#[inline(always)]
fn step1(crc: u16, b: u8) -> u16 {
    (crc << 8) ^ CRC16[0][usize::from((crc >> 8) as u8 ^ b)]
}

/// Keys shorter than this are scanned for `{` a word at a time: `memchr`'s
/// set-up costs more than it saves on them.
const SHORT_KEY: usize = 64;

fn find(byte: u8, hay: &[u8]) -> Option<usize> {
    if hay.len() < SHORT_KEY {
        hay.iter().position(|&b| b == byte)
    } else {
        memchr::memchr(byte, hay)
    }
}

/// True when the eight bytes of `word` hold a `{` (a byte of `x` is zero
/// where there is one; the classic zero-byte test is exact about whether
/// there is one).
#[inline(always)]
fn has_open_brace(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const BRACES: u64 = u64::from_ne_bytes([b'{'; 8]);
    let x = word ^ BRACES;
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// The part of `key` that is hashed: its hash tag (the bytes between the
/// first `{` and the first `}` after it) when that is non-empty, otherwise
/// the whole key.
///
/// ```
/// use redis_layers::cluster::slot::hash_tag;
///
/// assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
/// assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}"); // empty first tag: whole key
/// assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
/// assert_eq!(hash_tag(b"plain"), b"plain");
/// ```
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = find(b'{', key) {
        let rest = &key[open + 1..];
        if let Some(len) = find(b'}', rest) {
            if len > 0 {
                return &rest[..len];
            }
        }
    }
    key
}

/// The hash slot of `key`, `0..SLOTS`, honouring hash tags (see
/// [`hash_tag`]).
///
/// ```
/// use redis_layers::cluster::slot::key_slot;
///
/// assert_eq!(key_slot(b"foo"), 12182);
/// assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
/// ```
#[inline]
pub fn key_slot(key: &[u8]) -> u16 {
    if key.len() < SHORT_KEY {
        // Most keys are short and have no `{`: one pass, eight bytes at a
        // time, looks for one while hashing, and starts over with the tag
        // only when there is one.
        let mut crc = 0u16;
        let mut words = key.chunks_exact(8);
        for w in &mut words {
            let w: [u8; 8] = w.try_into().expect("8 bytes");
            if has_open_brace(u64::from_ne_bytes(w)) {
                return crc16(hash_tag(key)) & (SLOTS - 1);
            }
            crc = step4(crc, [w[0], w[1], w[2], w[3]]);
            crc = step4(crc, [w[4], w[5], w[6], w[7]]);
        }
        let mut rest = words.remainder();
        if let [a, b, c, d, tail @ ..] = rest {
            if [a, b, c, d].contains(&&b'{') {
                return crc16(hash_tag(key)) & (SLOTS - 1);
            }
            crc = step4(crc, [*a, *b, *c, *d]);
            rest = tail;
        }
        for &b in rest {
            if b == b'{' {
                return crc16(hash_tag(key)) & (SLOTS - 1);
            }
            crc = step1(crc, b);
        }
        return crc & (SLOTS - 1);
    }
    crc16(hash_tag(key)) & (SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bit-by-bit definition, to check the table against.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &b in data {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc16_known_vectors() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
        assert_eq!(crc16(b"A"), 0x58E5);
        for data in [&b"a"[..], b"foo", b"\x00\xff\x10\x21", b"hello world"] {
            assert_eq!(crc16(data), crc16_bitwise(data), "{data:?}");
        }
        // Every length parity and every byte value in both positions.
        let all: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        for len in 0..all.len() {
            assert_eq!(crc16(&all[..len]), crc16_bitwise(&all[..len]), "{len}");
        }
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(crc16(&[a, b]), crc16_bitwise(&[a, b]));
                assert_eq!(crc16(&[7, a, b]), crc16_bitwise(&[7, a, b]));
            }
        }
    }

    #[test]
    fn key_slots_and_hash_tags() {
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // Empty tags: the whole key is hashed.
        assert_eq!(key_slot(b"{}"), crc16(b"{}") % SLOTS);
        assert_eq!(key_slot(b"{}foo"), crc16(b"{}foo") % SLOTS);
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        // Only the first `{` counts, and the first `}` after it.
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"}{bar}"), key_slot(b"bar"));
        // No closing brace: whole key.
        assert_eq!(key_slot(b"{bar"), crc16(b"{bar") % SLOTS);
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"x{y}"), b"y");
        assert_eq!(hash_tag(b"{\xff\x00}z"), b"\xff\x00");
        // The one-pass path for short keys agrees with the definition for
        // every length and every place of `{` and `}`.
        for len in 0..SHORT_KEY + 2 {
            let plain: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert_eq!(key_slot(&plain), crc16(&plain) % SLOTS, "{len}");
            for open in 0..len {
                for close in open..len {
                    let mut k = plain.clone();
                    k[open] = b'{';
                    k[close] = b'}';
                    assert_eq!(key_slot(&k), crc16(hash_tag(&k)) % SLOTS, "{k:?}");
                }
            }
        }
        // Long keys take the memchr path.
        let mut long = vec![b'x'; 100];
        long.extend_from_slice(b"{tag}");
        long.extend(vec![b'y'; 100]);
        assert_eq!(hash_tag(&long), b"tag");
        assert_eq!(key_slot(&long), key_slot(b"tag"));
        assert_eq!(hash_tag(&long[..101]), &long[..101]);
    }

    /// The word-at-a-time test finds a `{` exactly: every byte value at
    /// every place of keys of 0 to 17 bytes, among bytes that differ from
    /// `{` by one bit or by a borrow.
    #[test]
    fn the_brace_check_is_exact() {
        for len in 0..18 {
            for fill in [0u8, b'z', b'|', 0xfb, 0xff, b'[', 0x01] {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut k = vec![fill; len];
                        k[at] = b;
                        let words = k.chunks_exact(8);
                        let found = words
                            .clone()
                            .any(|w| has_open_brace(u64::from_ne_bytes(w.try_into().unwrap())))
                            || words.remainder().contains(&b'{');
                        assert_eq!(found, k.contains(&b'{'), "{k:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn slot_is_in_range() {
        for i in 0..10_000u32 {
            let k = i.to_le_bytes();
            assert!(key_slot(&k) < SLOTS);
            assert_eq!(key_slot(&k), crc16_bitwise(&k) % SLOTS);
        }
    }
}
