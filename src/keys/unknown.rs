//! The store of keys the source called unknown, and when: bounded on its own (so unknown keys
//! never displace validated ones), with a bit per hash slot that says whether an entry may be
//! there, so a validated key's request skips this store without a map read.

use super::KeyHash;
use std::sync::atomic::{AtomicU64, Ordering};

/// Unknown keys and when the source said so (the key store's clock, in nanoseconds).
#[derive(Debug)]
pub struct UnknownKeys {
    entries: quick_cache::sync::Cache<KeyHash, u64>,
    /// One bit per slot of hashes, set before an entry of that slot is inserted and cleared
    /// only with the whole store (a key-file reload): a clear bit proves the key has no entry.
    /// Eight bits per entry of capacity keep most bits clear while the store is full, but a
    /// long flood of distinct unknown keys sets them all, and then every validated key pays
    /// one more map read (the cost before these marks) until the store is cleared.
    marks: Box<[AtomicU64]>,
    /// A hash's bit: its first 8 bytes read little-endian, shifted right by `shift` (SHA-256
    /// output is uniform).
    shift: u32,
}

/// Bits of `marks` at most (1 MiB): enough for a store of 1M entries.
const MAX_MARK_BITS: usize = 1 << 23;

impl UnknownKeys {
    pub fn new(capacity: usize) -> Self {
        let bits = capacity
            .saturating_mul(8)
            .clamp(64, MAX_MARK_BITS)
            .next_power_of_two();
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            marks: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(),
            shift: 64 - bits.trailing_zeros(),
        }
    }

    fn mark_of(&self, hash: &KeyHash) -> (usize, u64) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.0[..8]);
        let bit = (u64::from_le_bytes(first) >> self.shift) as usize;
        (bit / 64, 1 << (bit % 64))
    }

    /// When the source called `hash` unknown, if this store still remembers it.
    pub fn get(&self, hash: &KeyHash) -> Option<u64> {
        let (word, mask) = self.mark_of(hash);
        if self.marks[word].load(Ordering::Acquire) & mask == 0 {
            return None;
        }
        self.entries.get(hash)
    }

    pub fn insert(&self, hash: KeyHash, at: u64) {
        let (word, mask) = self.mark_of(&hash);
        // Marked before the entry exists: a reader that finds the bit clear finds no entry.
        if self.marks[word].load(Ordering::Relaxed) & mask == 0 {
            self.marks[word].fetch_or(mask, Ordering::AcqRel);
        }
        self.entries.insert(hash, at);
    }

    pub fn remove(&self, hash: &KeyHash) {
        self.entries.remove(hash);
    }

    /// Forgets every entry. The marks go after the entries: an entry inserted meanwhile may
    /// lose its mark, which only makes its key looked up again.
    pub fn clear(&self) {
        self.entries.clear();
        for word in &self.marks {
            word.store(0, Ordering::Release);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u32) -> KeyHash {
        KeyHash::of(format!("sgk_unknown_{i}"))
    }

    #[test]
    fn remembers_what_was_inserted_and_nothing_else() {
        let store = UnknownKeys::new(1_000);
        let at = 42;
        for i in 0..500 {
            store.insert(hash(i), at);
        }
        for i in 0..500 {
            assert_eq!(store.get(&hash(i)), Some(at), "{i}");
        }
        for i in 500..5_000 {
            assert_eq!(store.get(&hash(i)), None, "{i}");
        }
        store.remove(&hash(7));
        assert_eq!(store.get(&hash(7)), None);
        store.clear();
        assert!(store.is_empty());
        assert_eq!(store.get(&hash(8)), None);
        // Usable after a clear: the marks are set again.
        store.insert(hash(8), at);
        assert_eq!(store.get(&hash(8)), Some(at));
    }

    #[test]
    fn is_bounded_and_a_full_store_still_answers() {
        let store = UnknownKeys::new(100);
        let at = 42;
        for i in 0..100_000 {
            store.insert(hash(i), at);
        }
        assert!(store.len() <= 110, "{}", store.len());
        // The newest entry is found even with every mark set.
        store.insert(hash(200_000), at);
        assert_eq!(store.get(&hash(200_000)), Some(at));
    }

    #[test]
    fn most_marks_stay_clear_while_the_store_is_full() {
        let store = UnknownKeys::new(10_000);
        for i in 0..10_000 {
            store.insert(hash(i), 7);
        }
        let set: u32 = store
            .marks
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum();
        let bits = store.marks.len() * 64;
        assert!(set as usize * 5 < bits, "{set} of {bits} marks set");
    }
}
