//! A fast hash for tables keyed by what the configuration says (users,
//! programs, hosts, bind keys): a load of 10,000 services hashes ~300,000
//! keys, and std's SipHash spent ~450 instructions on each, 16% of a
//! reload (callgrind).
//!
//! Owns: [`FastMap`], [`FastSet`]. Must not: key a table by anything a
//! client chooses (peer addresses, PIDs it could steer): without SipHash's
//! random key, such a table could be flooded with colliding keys. Those
//! keep `std`'s hasher.
//!
//! The mix is rustc's FxHash as rustc-hash 2 has it (add, multiply by an
//! odd constant; the finish rotates, so that the well-mixed high bits
//! reach the low bits hashbrown indexes with). Not worth a crate for
//! twenty lines.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` for configuration-keyed tables.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// A `HashSet` for configuration-keyed tables.
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

const K: u64 = 0xf135_7aea_2e62_a9c5;

#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = self.0.wrapping_add(word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            // The length too: "a" and "a\0" differ.
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    fn h<T: std::hash::Hash>(v: T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    #[test]
    fn keys_that_differ_hash_apart() {
        assert_ne!(h("a"), h("a\0"));
        assert_ne!(h("ab"), h("ba"));
        assert_ne!(h(("a", "bc")), h(("ab", "c")));
        assert_eq!(h("nobody"), h(String::from("nobody")));
        // Ports in a row spread over the buckets hashbrown picks with the
        // low bits as random keys would: 10,000 random keys fill ~7,500
        // of 16,384 (a hash keeping the low bits of the port alone would
        // fill 10,000; one that lost them, a handful).
        let mut seen = FastSet::default();
        for p in 20000u16..30000 {
            let a: std::net::SocketAddr = ([127, 0, 0, 1], p).into();
            seen.insert(h(a) & 16383);
        }
        assert!(seen.len() > 6000, "{} buckets", seen.len());
    }

    #[test]
    fn a_map_of_many_keys_finds_each() {
        let mut m = FastMap::default();
        for i in 0..10_000u32 {
            m.insert(format!("svc{i}"), i);
        }
        for i in 0..10_000u32 {
            assert_eq!(m.get(format!("svc{i}").as_str()), Some(&i));
        }
    }
}
