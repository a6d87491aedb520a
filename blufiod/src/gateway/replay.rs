//! Replay protection: every (keyid, nonce) pair is accepted once while its signature could still
//! pass the clock-skew check. The cache is bounded; when it is full, new requests are refused
//! rather than old nonces forgotten, so a flood can never reopen the door to a replay.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Seen nonces, expiring in insertion order.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashSet<(String, String)>,
    /// (expires at, key) in insertion order; expiry times only grow, since each is insertion time
    /// plus the same window.
    order: VecDeque<(i64, (String, String))>,
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The nonce was used before.
    Replayed,
    /// The cache is full of live nonces.
    Full,
}

impl ReplayCache {
    /// A cache for at most `capacity` live nonces.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// Whether `nonce` of `keyid` was accepted and is still remembered.
    pub fn seen(&self, keyid: &str, nonce: &str, now: i64) -> bool {
        let mut inner = self.inner.lock().expect("replay cache poisoned");
        inner.expire(now);
        inner.seen.contains(&(keyid.to_owned(), nonce.to_owned()))
    }

    /// Accepts `nonce` of `keyid` once; it is remembered through `now + window_secs`.
    pub fn accept(&self, keyid: &str, nonce: &str, now: i64, window_secs: i64) -> Result<(), ReplayError> {
        let mut inner = self.inner.lock().expect("replay cache poisoned");
        inner.expire(now);
        let key = (keyid.to_owned(), nonce.to_owned());
        if inner.seen.contains(&key) {
            return Err(ReplayError::Replayed);
        }
        if inner.seen.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        inner.seen.insert(key.clone());
        inner.order.push_back((now + window_secs, key));
        Ok(())
    }

    /// Live nonces.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("replay cache poisoned").seen.len()
    }
}

impl Inner {
    /// Forgets nonces whose window ended before `now`. The window's last second is inclusive,
    /// like the skew check it mirrors.
    fn expire(&mut self, now: i64) {
        while self.order.front().is_some_and(|(expires, _)| *expires < now) {
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_per_key_and_forgotten_after_its_window() {
        let cache = ReplayCache::new(10);
        cache.accept("k1", "n1", 1_000, 600).unwrap();
        assert_eq!(cache.accept("k1", "n1", 1_001, 600), Err(ReplayError::Replayed));
        cache.accept("k2", "n1", 1_001, 600).unwrap();
        assert!(cache.seen("k1", "n1", 1_600), "the window's last second still counts");
        // After the window the signature itself would fail the skew check, so the nonce may go.
        assert!(!cache.seen("k1", "n1", 1_601));
        cache.accept("k1", "n1", 1_601, 600).unwrap();
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let cache = ReplayCache::new(2);
        cache.accept("k", "a", 0, 600).unwrap();
        cache.accept("k", "b", 0, 600).unwrap();
        assert_eq!(cache.accept("k", "c", 1, 600), Err(ReplayError::Full));
        assert_eq!(
            cache.accept("k", "a", 1, 600),
            Err(ReplayError::Replayed),
            "old nonces are still known"
        );
        cache.accept("k", "c", 601, 600).unwrap();
    }
}
