//! The gateway's connection slots: at most `gateway.max_connections` at once, at most
//! `gateway.max_connections_per_address` from one address (an IPv4 address, an IPv6 /64), and
//! unauthenticated connections evictable.
//!
//! A connection counts as authenticated once one of its requests passed signature verification.
//! Until then it is idle-closed after [`UNAUTHENTICATED_IDLE`], and when a cap is reached an
//! unauthenticated connection is evicted to make room:
//!
//! - at `gateway.max_connections`, from the network (an IPv4 /24, an IPv6 /48) that holds the
//!   most unauthenticated connections: first one that has not sent a byte (a client in its
//!   handshake has: it sent its hello), the oldest first;
//! - at an address's share, from that address's connections: first one that has not sent a
//!   byte, the oldest first.
//!
//! Whether a connection has spoken is looked at when it is accepted (a client's hello is usually
//! there by then) and again when its first bytes come. A flood therefore evicts itself: speaking,
//! from fewer networks than there are slots, or silent, once the client has been seen speaking.
//! The limits: a flood from the client's own address, or one fast enough that a client's
//! connection comes up for eviction before it is seen speaking, makes each new connection a race;
//! one that speaks TLS from as many networks as there are slots can evict a client in its
//! handshake. Only when every candidate is authenticated is a new connection refused.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a connection that has not yet authenticated a request may stay idle.
pub const UNAUTHENTICATED_IDLE: Duration = Duration::from_secs(10);

/// One admitted connection, shared by its task and its requests (through request extensions).
#[derive(Debug)]
pub struct ConnectionState {
    id: u64,
    address: Prefix,
    network: Prefix,
    /// Whether the peer is this machine (a loopback address, IPv4-mapped ones included).
    loopback: bool,
    /// Whether the peer has sent anything (a TLS hello, a request head).
    spoke: AtomicBool,
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

    /// Marks the connection as having sent its first bytes: it is evicted only after the silent
    /// ones.
    pub fn mark_spoke(&self) {
        self.spoke.store(true, Ordering::Relaxed);
    }

    fn is_silent(&self) -> bool {
        !self.spoke.load(Ordering::Relaxed)
    }

    /// Whether the peer connected from this machine's loopback interface.
    pub fn is_loopback(&self) -> bool {
        self.loopback
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
    #[error("{address} already holds {limit} connections (gateway.max_connections_per_address)")]
    PerAddress {
        /// The client's address.
        address: IpAddr,
        /// Its share.
        limit: usize,
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
    per_address: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Admitted connections by id: ids grow, so the first is the oldest.
    open: BTreeMap<u64, Connection>,
    per_address: HashMap<Prefix, usize>,
}

/// The leading bits of an address: what counts as one client ([`Prefix::address`]) and as one
/// network ([`Prefix::network`]). An IPv6 holder gets a /64 at least, so single IPv6 addresses
/// mean nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Prefix(u128, u8);

impl Prefix {
    fn of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> Self {
        let (bits, length, keep) = match ip.to_canonical() {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32, v4_bits),
            IpAddr::V6(v6) => (u128::from(v6), 128, v6_bits),
        };
        let shift = u32::from(length - keep);
        Self(bits >> shift, length)
    }

    fn address(ip: IpAddr) -> Self {
        Self::of(ip, 32, 64)
    }

    fn network(ip: IpAddr) -> Self {
        Self::of(ip, 24, 48)
    }
}

impl Connections {
    /// At most `max` connections at once, `per_address` of them from one address.
    pub fn new(max: usize, per_address: usize) -> Self {
        Self {
            max: max.max(1),
            per_address: per_address.max(1),
            inner: Mutex::default(),
        }
    }

    /// Admits a connection from `address` (`spoke`: its first bytes are already there), evicting
    /// an unauthenticated one if a cap is reached.
    pub fn admit(&self, address: IpAddr, spoke: bool) -> Result<Connection, Refusal> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (client, network) = (Prefix::address(address), Prefix::network(address));
        if inner.per_address.get(&client).copied().unwrap_or(0) >= self.per_address {
            // The address's oldest silent connection, else its oldest unauthenticated one.
            let victim = inner
                .open
                .values()
                .filter(|connection| connection.address == client && !connection.is_authenticated())
                .max_by_key(|connection| (connection.is_silent(), Reverse(connection.id)))
                .map(|connection| connection.id)
                .ok_or(Refusal::PerAddress {
                    address,
                    limit: self.per_address,
                })?;
            inner.evict(victim);
        } else if inner.open.len() >= self.max {
            // From the network holding the most evictable (unauthenticated) connections, its
            // oldest silent connection, else its oldest unauthenticated one: the network first, so
            // that a client not yet seen speaking is not evicted for a flood that speaks; and only
            // evictable ones count, so that a network's signed clients do not make its next
            // connection the one to go.
            let mut evictable: HashMap<Prefix, usize> = HashMap::new();
            for connection in inner.open.values().filter(|connection| !connection.is_authenticated()) {
                *evictable.entry(connection.network).or_default() += 1;
            }
            let victim = inner
                .open
                .values()
                .filter(|connection| !connection.is_authenticated())
                .max_by_key(|connection| {
                    (
                        evictable.get(&connection.network).copied().unwrap_or(0),
                        connection.is_silent(),
                        Reverse(connection.id),
                    )
                })
                .map(|connection| connection.id)
                .ok_or(Refusal::Full)?;
            inner.evict(victim);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let connection = Arc::new(ConnectionState {
            id,
            address: client,
            network,
            loopback: address.to_canonical().is_loopback(),
            spoke: AtomicBool::new(spoke),
            authenticated: AtomicBool::new(false),
            evicted: CancellationToken::new(),
        });
        inner.open.insert(id, connection.clone());
        *inner.per_address.entry(client).or_default() += 1;
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
    /// Takes a connection's slot and tells its task to drop it.
    fn evict(&mut self, id: u64) {
        if let Some(evicted) = self.remove(id) {
            evicted.evicted.cancel();
        }
    }

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

    /// The default `gateway.max_connections_per_address`.
    const PER_ADDRESS: usize = 32;

    fn address(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn loopback_peers_are_known_as_such() {
        let slots = Connections::new(8, PER_ADDRESS);
        for (peer, loopback) in [
            ("127.0.0.1", true),
            ("127.3.2.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.0.2.1", false),
            ("::ffff:192.0.2.1", false),
            ("2001:db8::1", false),
        ] {
            let connection = slots.admit(peer.parse().unwrap(), false).unwrap();
            assert_eq!(connection.is_loopback(), loopback, "{peer}");
        }
    }

    #[test]
    fn one_address_gets_its_share_only() {
        let slots = Connections::new(1_000, PER_ADDRESS);
        let held: Vec<_> = (0..PER_ADDRESS)
            .map(|_| slots.admit(address(1), false).unwrap())
            .collect();
        assert!(!held[0].is_loopback(), "{:?} is another machine", address(1));
        // Past its share, an address's newcomer takes the place of its oldest silent connection.
        slots.admit(address(1), false).unwrap();
        assert!(held[0].evicted.is_cancelled());
        assert_eq!(slots.len(), PER_ADDRESS);
        // With all its connections authenticated, it is refused.
        for connection in &held[1..] {
            connection.mark_authenticated();
        }
        slots.admit(address(1), false).unwrap().mark_authenticated();
        assert!(matches!(
            slots.admit(address(1), false),
            Err(Refusal::PerAddress { .. })
        ));
        slots.admit(address(2), false).unwrap();
        slots.release(&held[1]);
        slots.admit(address(1), false).unwrap();
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let slots = Connections::new(1_000, PER_ADDRESS);
        for host in 0..PER_ADDRESS {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, u16::try_from(host).unwrap()]);
            slots.admit(ip, false).unwrap().mark_authenticated();
        }
        let next = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 1]);
        assert!(matches!(slots.admit(next, false), Err(Refusal::PerAddress { .. })));
        slots
            .admit(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), false)
            .unwrap();
    }

    #[test]
    fn at_its_share_an_address_evicts_its_own_silent_connections_first() {
        // Reported (attack on b52db2a): 40 idle connections from 127.0.0.1, reopened as the
        // gateway closed them, locked signed clients of that address out for as long as they ran.
        let slots = Connections::new(1_000, 4);
        let flood: Vec<_> = (0..4).map(|_| slots.admit(address(1), false).unwrap()).collect();
        let client = slots.admit(address(1), false).unwrap();
        assert!(flood[0].evicted.is_cancelled(), "the oldest silent one made room");
        client.mark_spoke();
        for _ in 0..20 {
            slots.admit(address(1), false).unwrap();
        }
        assert!(
            !client.evicted.is_cancelled(),
            "a client in its handshake outlives the flood"
        );
        // Once nothing else is silent, the oldest unauthenticated one goes; never an
        // authenticated one.
        let spoken: Vec<_> = (0..3)
            .map(|_| {
                let connection = slots.admit(address(1), false).unwrap();
                connection.mark_spoke();
                connection
            })
            .collect();
        slots.admit(address(1), false).unwrap();
        assert!(client.evicted.is_cancelled());
        for connection in &spoken {
            connection.mark_authenticated();
        }
        let newest = slots.admit(address(1), false).unwrap();
        newest.mark_authenticated();
        assert!(matches!(
            slots.admit(address(1), false),
            Err(Refusal::PerAddress { limit: 4, .. })
        ));
        assert!(spoken.iter().all(|connection| !connection.evicted.is_cancelled()));
    }

    #[test]
    fn a_silent_flood_from_many_networks_does_not_evict_a_client_in_its_handshake() {
        // Reported (attack on b52db2a): 200 idle connections, one per /24, left 3 of 29 signed
        // requests through: the tie between networks fell on the oldest, often the client.
        let slots = Connections::new(8, PER_ADDRESS);
        let client = slots.admit(IpAddr::from([203, 0, 113, 7]), false).unwrap();
        client.mark_spoke();
        for n in 0..200u8 {
            slots.admit(IpAddr::from([10, n, 0, 1]), false).unwrap();
        }
        assert!(!client.evicted.is_cancelled());
        assert_eq!(slots.len(), 8);
    }

    #[test]
    fn a_speaking_flood_from_one_network_evicts_itself_not_a_client_yet_silent() {
        // Reported (attack on 890500f): with silence ranked before the network's size, a client
        // not yet marked as speaking was the first to go for a flood that sent its hellos.
        let slots = Connections::new(64, 64);
        let client = slots.admit(IpAddr::from([203, 0, 113, 7]), false).unwrap();
        for n in 0..200u8 {
            slots.admit(IpAddr::from([198, 51, 100, n]), true).unwrap();
        }
        assert!(!client.evicted.is_cancelled());
        assert_eq!(slots.len(), 64);
    }

    #[test]
    fn a_networks_signed_clients_do_not_make_its_next_connection_the_one_to_go() {
        // Reported (attack on 57e394b): with every connection of a network counted, three
        // authenticated keep-alive connections made the client's network the largest, and a
        // silent flood from five smaller networks evicted each new connection of the client.
        let slots = Connections::new(16, PER_ADDRESS);
        let client_address = IpAddr::from([203, 0, 113, 7]);
        for _ in 0..3 {
            slots.admit(client_address, true).unwrap().mark_authenticated();
        }
        let client = slots.admit(client_address, true).unwrap();
        for n in 0..200u8 {
            slots.admit(IpAddr::from([10, n % 5, 0, n]), false).unwrap();
        }
        assert!(!client.evicted.is_cancelled());
        assert_eq!(slots.len(), 16);
    }

    #[test]
    fn the_share_of_an_address_is_configured() {
        // A reverse proxy on this machine: every client comes from 127.0.0.1.
        let slots = Connections::new(1_000, 100);
        let proxy = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..100 {
            slots.admit(proxy, false).unwrap().mark_authenticated();
        }
        let refused = slots.admit(proxy, false).unwrap_err();
        assert!(matches!(refused, Refusal::PerAddress { limit: 100, .. }));
        assert_eq!(
            refused.to_string(),
            "127.0.0.1 already holds 100 connections (gateway.max_connections_per_address)"
        );
    }

    #[test]
    fn a_flood_from_a_few_networks_evicts_itself_not_a_client_in_its_handshake() {
        let slots = Connections::new(8, PER_ADDRESS);
        // A signed client's fresh connection, not yet authenticated, from its own network.
        let client = slots.admit(IpAddr::from([203, 0, 113, 7]), false).unwrap();
        // Connections from two other networks fill the slots, then keep coming.
        let mut flood = Vec::new();
        for n in 0..200u8 {
            let network = 1 + n % 2;
            flood.push(slots.admit(IpAddr::from([198, 51, network, n % 30]), false).unwrap());
        }
        assert!(!client.evicted.is_cancelled(), "the client was evicted by the flood");
        assert_eq!(slots.len(), 8);
    }

    #[test]
    fn at_the_cap_the_oldest_unauthenticated_connection_makes_room() {
        let slots = Connections::new(3, PER_ADDRESS);
        let signed = slots.admit(address(1), false).unwrap();
        signed.mark_authenticated();
        let idle_old = slots.admit(address(2), false).unwrap();
        let idle_new = slots.admit(address(3), false).unwrap();
        let newcomer = slots.admit(address(4), false).unwrap();
        assert!(idle_old.evicted.is_cancelled(), "the oldest unauthenticated one goes");
        assert!(!idle_new.evicted.is_cancelled());
        assert!(!signed.evicted.is_cancelled());
        assert_eq!(slots.len(), 3);
        // Its task ends later and releases a slot it no longer holds: nothing changes.
        slots.release(&idle_old);
        assert_eq!(slots.len(), 3);
        idle_new.mark_authenticated();
        newcomer.mark_authenticated();
        assert!(matches!(slots.admit(address(5), false), Err(Refusal::Full)));
    }
}
