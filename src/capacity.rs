//! Tables keep the capacity of their busiest moment, so a burst of calls would hold
//! its memory for good (tens of MB after 8,000 calls in 10 s). The per-call tables
//! call [`release_spare`] when an entry goes.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Capacity a table keeps however empty it gets: a quiet server's tables are not
/// cut and regrown at every call.
pub const KEPT: usize = 1024;

/// A table less than a quarter full is cut to twice its entries: the gap between
/// the two keeps a table from swinging between cut and regrown at every call.
pub fn release_spare<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > KEPT && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// [`release_spare`] for a queue.
pub fn release_spare_queue<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > KEPT && queue.len() * 4 < queue.capacity() {
        queue.shrink_to(queue.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_table_gives_back_its_capacity_and_a_small_one_keeps_its_own() {
        let mut m: HashMap<u32, [u8; 64]> = HashMap::new();
        for i in 0..10_000 {
            m.insert(i, [0; 64]);
        }
        let burst = m.capacity();
        for i in 0..9_990 {
            m.remove(&i);
            release_spare(&mut m);
        }
        assert!(m.capacity() <= KEPT * 2, "{} of {burst}", m.capacity());
        assert_eq!(m.len(), 10);
        let mut small: HashMap<u32, u8> = HashMap::with_capacity(KEPT / 2);
        let kept = small.capacity();
        assert!(kept <= KEPT);
        small.insert(1, 1);
        release_spare(&mut small);
        assert_eq!(small.capacity(), kept);

        let mut q: VecDeque<u32> = (0..10_000).collect();
        while q.len() > 10 {
            q.pop_front();
            release_spare_queue(&mut q);
        }
        assert!(q.capacity() <= KEPT * 2, "{}", q.capacity());
        assert_eq!(
            q.iter().copied().collect::<Vec<_>>(),
            (9_990..10_000).collect::<Vec<_>>()
        );
    }
}
