//! The gateway's connection slots: at most `gateway.max_connections` at once, at most
//! [`PER_ADDRESS`] from one IP address, and unauthenticated connections evictable.
//!
//! A connection counts as authenticated once one of its requests passed signature verification.
//! Until then it is idle-closed after [`UNAUTHENTICATED_IDLE`], and when every slot is taken, the
//! oldest unauthenticated connection is evicted to make room for a new one. So idle or unsigned
//! clients, however many addresses they come from, can delay a signed client by one handshake at
//! most; they can never lock it out. Only when every slot holds an authenticated connection is a
//! new connection refused.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Connections one IP address may hold at once.
pub const PER_ADDRESS: usize = 32;
/// How long a connection that has not yet authenticated a request may stay idle.
pub const UNAUTHENTICATED_IDLE: Duration = Duration::from_secs(10);

/// One admitted connection, shared by its task and its requests (through request extensions).
#[derive(Debug)]
pub struct ConnectionState {
    id: u64,
    address: IpAddr,
    authenticated: AtomicBool,
    evicted: CancellationToken,
}

/// A handle on an admitted connection.
pub type Connection = Arc<ConnectionState>;

impl ConnectionState {
    /// Marks the connection as carrying a verified request: it is no longer evictable and gets
    /// the configured idle timeout.
    pub fn mark_authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    /// Whether a request on it was verified.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// Completes when the connection was evicted to make room: its task must drop it at once.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The address already holds its share.
    #[error("{address} already holds {PER_ADDRESS} connections")]
    PerAddress {
        /// The client's address.
        address: IpAddr,
    },
    /// Every slot holds an authenticated connection.
    #[error("every connection slot holds an authenticated client")]
    Full,
}

impl Refusal {
    /// The metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PerAddress { .. } => "connections-per-address",
            Self::Full => "connections-full",
        }
    }
}

/// The slots.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Admitted connections by id: ids grow, so the first is the oldest.
    open: BTreeMap<u64, Connection>,
    per_address: HashMap<IpAddr, usize>,
}

impl Connections {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            inner: Mutex::default(),
        }
    }

    /// Admits a connection from `address`, evicting the oldest unauthenticated one if every slot
    /// is taken.
    pub fn admit(&self, address: IpAddr) -> Result<Connection, Refusal> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.per_address.get(&address).copied().unwrap_or(0) >= PER_ADDRESS {
            return Err(Refusal::PerAddress { address });
        }
        if inner.open.len() >= self.max {
            let oldest = inner
                .open
                .values()
                .find(|connection| !connection.is_authenticated())
                .map(|connection| connection.id)
                .ok_or(Refusal::Full)?;
            if let Some(evicted) = inner.remove(oldest) {
                evicted.evicted.cancel();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let connection = Arc::new(ConnectionState {
            id,
            address,
            authenticated: AtomicBool::new(false),
            evicted: CancellationToken::new(),
        });
        inner.open.insert(id, connection.clone());
        *inner.per_address.entry(address).or_default() += 1;
        Ok(connection)
    }

    /// Gives the slot of a connection that ended back (a no-op for an evicted one).
    pub fn release(&self, connection: &ConnectionState) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(connection.id);
    }

    /// Connections holding a slot.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).open.len()
    }
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Connection> {
        let connection = self.open.remove(&id)?;
        if let Some(count) = self.per_address.get_mut(&connection.address) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&connection.address);
            }
        }
        Some(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn one_address_gets_its_share_only() {
        let slots = Connections::new(1_000);
        let held: Vec<_> = (0..PER_ADDRESS).map(|_| slots.admit(address(1)).unwrap()).collect();
        assert!(matches!(slots.admit(address(1)), Err(Refusal::PerAddress { .. })));
        slots.admit(address(2)).unwrap();
        slots.release(&held[0]);
        slots.admit(address(1)).unwrap();
    }

    #[test]
    fn at_the_cap_the_oldest_unauthenticated_connection_makes_room() {
        let slots = Connections::new(3);
        let signed = slots.admit(address(1)).unwrap();
        signed.mark_authenticated();
        let idle_old = slots.admit(address(2)).unwrap();
        let idle_new = slots.admit(address(3)).unwrap();
        let newcomer = slots.admit(address(4)).unwrap();
        assert!(idle_old.evicted.is_cancelled(), "the oldest unauthenticated one goes");
        assert!(!idle_new.evicted.is_cancelled());
        assert!(!signed.evicted.is_cancelled());
        assert_eq!(slots.len(), 3);
        // Its task ends later and releases a slot it no longer holds: nothing changes.
        slots.release(&idle_old);
        assert_eq!(slots.len(), 3);
        idle_new.mark_authenticated();
        newcomer.mark_authenticated();
        assert!(matches!(slots.admit(address(5)), Err(Refusal::Full)));
    }
}
