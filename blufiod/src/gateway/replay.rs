//! Replay protection: every (keyid, nonce) pair is accepted once while its signature could still
//! pass the clock-skew check. The cache is bounded; when it is full, new requests are refused
//! rather than old nonces forgotten, so a flood can never reopen the door to a replay.
//!
//! Each key may hold at most its share of the cache: what its rate limit lets it send within a
//! nonce's lifetime. The gateway charges the rate limit before it remembers a nonce, so a device
//! never reaches its share in normal use, and no device can take another's room.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Seen nonces, expiring in insertion order.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    per_key: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashSet<(String, String)>,
    /// (expires at, key) in insertion order; expiry times only grow, since each is insertion time
    /// plus the same window.
    order: VecDeque<(i64, (String, String))>,
    /// Live nonces per key.
    per_key: HashMap<String, usize>,
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The nonce was used before.
    Replayed,
    /// The cache is full of live nonces.
    Full,
    /// This key holds its whole share of the cache; its oldest nonce expires in `retry_after`
    /// seconds.
    KeyFull {
        /// Seconds until the key has room again.
        retry_after: u64,
    },
}

impl ReplayCache {
    /// A cache for at most `capacity` live nonces, at most `per_key` of them for any one key.
    pub fn new(capacity: usize, per_key: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            per_key: per_key.max(1),
            inner: Mutex::default(),
        }
    }

    /// The share of a key whose rate limit is `per_minute` (with bursts of as many) when nonces
    /// live `window_secs`: the most requests the limiter can let through in that time.
    pub fn share_for(per_minute: u32, window_secs: i64) -> usize {
        let per_minute = u64::from(per_minute.max(1));
        // The window's last second is inclusive, hence the +1.
        let window = u64::try_from(window_secs).unwrap_or(0).saturating_add(1);
        let share = per_minute.saturating_add(per_minute.saturating_mul(window).div_ceil(60));
        usize::try_from(share).unwrap_or(usize::MAX)
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
        let held = inner.per_key.get(keyid).copied().unwrap_or(0);
        if held >= self.per_key {
            let oldest = inner
                .order
                .iter()
                .find(|(_, (key, _))| key == keyid)
                .map_or(now, |(expires, _)| *expires);
            let retry_after = u64::try_from(oldest.saturating_sub(now).saturating_add(1)).unwrap_or(1);
            return Err(ReplayError::KeyFull { retry_after });
        }
        if inner.seen.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        inner.seen.insert(key.clone());
        *inner.per_key.entry(keyid.to_owned()).or_default() += 1;
        inner.order.push_back((now.saturating_add(window_secs), key));
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
                if let Some(held) = self.per_key.get_mut(&key.0) {
                    *held = held.saturating_sub(1);
                    if *held == 0 {
                        self.per_key.remove(&key.0);
                    }
                }
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
        let cache = ReplayCache::new(10, 10);
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
        let cache = ReplayCache::new(2, 10);
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

    #[test]
    fn one_key_cannot_take_another_keys_room() {
        let cache = ReplayCache::new(10, 3);
        for nonce in ["a", "b", "c"] {
            cache.accept("greedy", nonce, 100, 600).unwrap();
        }
        assert_eq!(
            cache.accept("greedy", "d", 150, 600),
            Err(ReplayError::KeyFull { retry_after: 551 })
        );
        cache.accept("other", "a", 150, 600).unwrap();
        // The greedy key gets room back as its own nonces expire.
        cache.accept("greedy", "d", 701, 600).unwrap();
    }

    #[test]
    fn the_share_covers_what_the_rate_limit_lets_through() {
        // 10 a minute with a burst of 10, over 601 s: 10 + ceil(10 * 601 / 60) = 111.
        assert_eq!(ReplayCache::share_for(10, 600), 111);
        assert_eq!(ReplayCache::share_for(60, 0), 61);
    }
}
