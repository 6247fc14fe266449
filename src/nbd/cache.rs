//! Decompressed chunks kept in memory, bounded by bytes and shared by every client of one
//! export, so that VMs booting one image decompress each chunk they read once between them.
//!
//! A chunk being loaded is marked so: a second reader of it waits for the first instead of
//! decompressing it again (single flight). The least recently used chunks go first when the
//! bound is passed; a reader keeps the bytes it was handed alive however the cache evicts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

/// How much the cache holds and how it has been used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub limit_bytes: u64,
    /// Decompressed bytes held now.
    pub bytes: u64,
    /// The most it held at once.
    pub peak_bytes: u64,
    pub chunks: u64,
    /// Reads served from memory.
    pub hits: u64,
    /// Chunks fetched and decompressed.
    pub loads: u64,
}

enum Slot {
    Loading,
    Ready { data: Arc<Vec<u8>>, used: u64 },
}

#[derive(Default)]
struct State {
    slots: HashMap<usize, Slot>,
    /// Ready chunks by when they were last used, oldest first.
    by_use: BTreeMap<u64, usize>,
    clock: u64,
    stats: CacheStats,
}

/// Chunks by their index in the export's chunk list.
pub struct ChunkCache {
    state: Mutex<State>,
    loaded: Condvar,
}

impl ChunkCache {
    pub fn new(limit_bytes: u64) -> ChunkCache {
        let stats = CacheStats { limit_bytes, ..Default::default() };
        ChunkCache { state: Mutex::new(State { stats, ..Default::default() }), loaded: Condvar::new() }
    }

    pub fn stats(&self) -> CacheStats {
        self.state.lock().expect("the cache lock is never poisoned").stats
    }

    /// Chunk `key`'s bytes: from memory, or from `load` (called without the lock held, by
    /// one reader at a time per chunk). A failed load is not remembered: the next reader
    /// tries again.
    pub fn get_or_load<E>(
        &self,
        key: usize,
        load: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        let mut state = self.state.lock().expect("the cache lock is never poisoned");
        loop {
            match state.slots.get(&key) {
                Some(Slot::Ready { .. }) => {
                    state.clock += 1;
                    let now = state.clock;
                    let Some(Slot::Ready { data, used }) = state.slots.get_mut(&key) else { unreachable!() };
                    let (data, previous) = (data.clone(), std::mem::replace(used, now));
                    state.by_use.remove(&previous);
                    state.by_use.insert(now, key);
                    state.stats.hits += 1;
                    return Ok(data);
                }
                Some(Slot::Loading) => {
                    state = self.loaded.wait(state).expect("the cache lock is never poisoned");
                }
                None => break,
            }
        }
        state.slots.insert(key, Slot::Loading);
        drop(state);
        let loaded = load();
        let mut state = self.state.lock().expect("the cache lock is never poisoned");
        let result = match loaded {
            Ok(bytes) => {
                let data = Arc::new(bytes);
                state.clock += 1;
                let now = state.clock;
                state.slots.insert(key, Slot::Ready { data: data.clone(), used: now });
                state.by_use.insert(now, key);
                state.stats.loads += 1;
                state.stats.chunks += 1;
                state.stats.bytes += data.len() as u64;
                state.stats.peak_bytes = state.stats.peak_bytes.max(state.stats.bytes);
                Self::evict(&mut state);
                Ok(data)
            }
            Err(e) => {
                state.slots.remove(&key);
                Err(e)
            }
        };
        drop(state);
        self.loaded.notify_all();
        result
    }

    fn evict(state: &mut State) {
        while state.stats.bytes > state.stats.limit_bytes {
            let Some((_, key)) = state.by_use.pop_first() else { return };
            if let Some(Slot::Ready { data, .. }) = state.slots.remove(&key) {
                state.stats.bytes -= data.len() as u64;
                state.stats.chunks -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn stays_within_its_bound_dropping_the_least_recently_used() {
        let cache = ChunkCache::new(250);
        let load = |n: u8| move || Ok::<_, ()>(vec![n; 100]);
        cache.get_or_load(0, load(0)).unwrap();
        cache.get_or_load(1, load(1)).unwrap();
        cache.get_or_load(0, load(9)).unwrap(); // 0 is now the most recent
        cache.get_or_load(2, load(2)).unwrap(); // 1 goes
        let stats = cache.stats();
        assert_eq!((stats.bytes, stats.chunks, stats.loads, stats.hits), (200, 2, 3, 1));
        assert!(stats.peak_bytes <= 300);
        assert_eq!(*cache.get_or_load(0, load(7)).unwrap(), vec![0; 100], "0 stayed");
        assert_eq!(*cache.get_or_load(1, load(7)).unwrap(), vec![7; 100], "1 was loaded again");
    }

    #[test]
    fn a_failed_load_is_tried_again() {
        let cache = ChunkCache::new(1 << 20);
        assert_eq!(cache.get_or_load(3, || Err::<Vec<u8>, _>("damaged")).unwrap_err(), "damaged");
        assert_eq!(*cache.get_or_load(3, || Ok::<_, ()>(vec![1])).unwrap(), vec![1]);
    }

    #[test]
    fn readers_of_one_chunk_at_once_load_it_once() {
        let cache = ChunkCache::new(1 << 20);
        let calls = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let data = cache
                        .get_or_load(5, || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            Ok::<_, ()>(vec![5; 10])
                        })
                        .unwrap();
                    assert_eq!(*data, vec![5; 10]);
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().hits, 7);
    }
}
