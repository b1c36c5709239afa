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

/// Has the allocator take back the pages of this thread's heap that freed objects
/// left empty. mimalloc does so only when the owning thread allocates there again,
/// so runtime workers gone quiet after a burst of calls kept them all (RSS 60 s after
/// 8,000 calls: +18 MB over idle without, +10 MB with; `docs/soak-and-memory.md`).
/// Not the forced collection: at 1,000 calls it stretched the clock's worst send
/// deviation from 5 to 12 ms. Doing the same on the recording and store threads
/// when idle changed nothing measurable, so only the workers do it.
pub fn collect_freed_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect works on the calling thread's own heap only.
    unsafe {
        libmimalloc_sys::mi_collect(false)
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
        collect_freed_memory();
        assert_eq!(
            q.iter().copied().collect::<Vec<_>>(),
            (9_990..10_000).collect::<Vec<_>>()
        );
    }
}
