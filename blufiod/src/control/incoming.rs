//! The control socket's accepted connections, bounded: at most [`PER_UID`] from one uid other
//! than root and the daemon's own, at most [`MAX_OTHERS`] from such uids together, and at most
//! [`MAX_CONNECTIONS`] in all, so the owner always has [`MAX_CONNECTIONS`] − [`MAX_OTHERS`]
//! slots that no group member can take. A connection over a bound is closed at once, before it
//! costs a request. Together with the server's maximum connection age (idle connections are
//! closed gracefully after it) this keeps the daemon's descriptors for the gateway and the owner.
//!
//! Each connection also has an [`Outbox`]: a call may leave one descriptor in it, and the
//! connection's next write carries it to the peer (`SCM_RIGHTS`), ahead of or with the bytes of
//! the call's next message. Only the call that asked for a descriptor fills its own
//! connection's outbox, so a descriptor reaches no other peer.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd as _, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::{Connected, UdsConnectInfo};

/// Connections one uid other than root and the daemon's own may hold.
pub const PER_UID: usize = 16;
/// Connections all other uids together may hold.
pub const MAX_OTHERS: usize = 128;
/// Connections in all.
pub const MAX_CONNECTIONS: usize = 256;

/// Counts of open connections.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    others: usize,
    per_uid: HashMap<u32, usize>,
}

/// The slots, shared by the accept loop and every connection's guard.
#[derive(Debug)]
pub struct Slots {
    daemon_uid: u32,
    counts: Mutex<Counts>,
}

impl Slots {
    /// Slots for a daemon running as `daemon_uid`.
    pub fn new(daemon_uid: u32) -> Arc<Self> {
        Arc::new(Self {
            daemon_uid,
            counts: Mutex::default(),
        })
    }

    fn is_owner(&self, uid: u32) -> bool {
        uid == 0 || uid == self.daemon_uid
    }

    /// Takes a slot for a peer with `uid`, or says why not.
    fn take(self: &Arc<Self>, uid: u32) -> Result<Slot, &'static str> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= MAX_CONNECTIONS {
            return Err("the control socket is at its connection limit");
        }
        if !self.is_owner(uid) {
            if counts.others >= MAX_OTHERS {
                return Err("the slots for users other than the owner are taken");
            }
            if counts.per_uid.get(&uid).copied().unwrap_or(0) >= PER_UID {
                return Err("this uid holds its share of the control socket's connections");
            }
            counts.others += 1;
            *counts.per_uid.entry(uid).or_default() += 1;
        }
        counts.total += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

/// A taken slot, given back on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if !self.slots.is_owner(self.uid) {
            counts.others -= 1;
            if let Some(held) = counts.per_uid.get_mut(&self.uid) {
                *held -= 1;
                if *held == 0 {
                    counts.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// One descriptor waiting to go to a connection's peer with the connection's next write.
#[derive(Debug, Clone, Default)]
pub struct Outbox(Arc<Mutex<Option<OwnedFd>>>);

impl Outbox {
    /// Leaves `descriptor` for the next write; refused (and returned) while another waits.
    pub fn put(&self, descriptor: OwnedFd) -> Result<(), OwnedFd> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return Err(descriptor);
        }
        *slot = Some(descriptor);
        Ok(())
    }

    /// Takes back the descriptor if it is still waiting (it has not been written to the peer).
    pub fn take(&self) -> Option<OwnedFd> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What a call learns of its connection (tonic puts it in each request's extensions).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's credentials (`SO_PEERCRED`).
    pub uds: UdsConnectInfo,
    /// Where a call leaves a descriptor for its peer.
    pub outbox: Outbox,
}

/// An accepted connection holding its slot.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    outbox: Outbox,
    _slot: Slot,
}

impl Connection {
    /// Writes `buffers` with the waiting descriptor attached, if one waits; `None` when none does.
    fn poll_write_with_descriptor(
        &self,
        context: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        let mut waiting = self.outbox.0.lock().unwrap_or_else(PoisonError::into_inner);
        let descriptor = waiting.as_ref()?;
        let sent = blufio_proto::descriptors::poll_send_with(&self.stream, context, buffers, descriptor.as_fd());
        if let Poll::Ready(Ok(_)) = sent {
            // The peer holds its own copy now; the daemon's closes here.
            *waiting = None;
        }
        Some(sent)
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            uds: self.stream.connect_info(),
            outbox: self.outbox.clone(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(written) = self.poll_write_with_descriptor(context, &[IoSlice::new(buffer)]) {
            return written;
        }
        Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(written) = self.poll_write_with_descriptor(context, buffers) {
            return written;
        }
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The stream of admitted connections for `serve_with_incoming`. Accept errors (out of
/// descriptors) are logged and retried after a pause rather than ending the server.
pub fn incoming(listener: UnixListener, slots: Arc<Slots>) -> impl Stream<Item = io::Result<Connection>> {
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Without credentials the peer gets no access anyway; count it against the others.
            let uid = stream.peer_cred().map_or(u32::MAX, |credentials| credentials.uid());
            match slots.take(uid) {
                Ok(slot) => {
                    let connection = Connection {
                        stream,
                        outbox: Outbox::default(),
                        _slot: slot,
                    };
                    return Some((Ok(connection), (listener, slots)));
                }
                Err(reason) => {
                    tracing::debug!(uid, reason, "control connection refused");
                    drop(stream);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_capped_per_uid_and_together_and_the_owner_keeps_room() {
        let slots = Slots::new(1000);
        let mut held = Vec::new();
        for _ in 0..PER_UID {
            held.push(slots.take(2000).unwrap());
        }
        assert!(slots.take(2000).is_err(), "a uid over its share");
        for uid in 2001..(2001 + u32::try_from(MAX_OTHERS / PER_UID).unwrap() - 1) {
            for _ in 0..PER_UID {
                held.push(slots.take(uid).unwrap());
            }
        }
        assert!(slots.take(4000).is_err(), "the others' slots are taken");
        held.push(slots.take(0).unwrap());
        held.push(slots.take(1000).unwrap());
        held.drain(..PER_UID);
        slots.take(4000).unwrap();
    }
}
