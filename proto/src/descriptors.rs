//! Passing a descriptor on the control socket's connection (`SCM_RIGHTS`), both halves: the
//! daemon attaches one to a write with [`poll_send_with`]; a client reads its connection through
//! a [`DescriptorStream`], whose `recvmsg` keeps what was passed (a plain `read` would have the
//! kernel close it) in an [`Inbox`] until the call that asked for it takes it. At most
//! [`INBOX_LIMIT`] wait; the oldest are closed to make room. Used by `Backup` with `descriptor`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// Descriptors kept waiting at most; one call asks for one.
pub const INBOX_LIMIT: usize = 4;
/// Descriptors one read can carry before the kernel drops the rest (`MSG_CTRUNC`).
const PER_READ: usize = 4;

/// Descriptors received on the connection, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Inbox(Arc<Mutex<Vec<OwnedFd>>>);

impl Inbox {
    /// The oldest waiting descriptor (callers take theirs by file, with [`Inbox::take_file`]).
    #[cfg(test)]
    fn take(&self) -> Option<OwnedFd> {
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!waiting.is_empty()).then(|| waiting.remove(0))
    }

    /// The waiting descriptor of the file with `device` and `inode`; every other waiting one is
    /// closed (a call cancelled after its descriptor came leaves one behind).
    pub fn take_file(&self, device: u64, inode: u64) -> Option<std::fs::File> {
        use std::os::unix::fs::MetadataExt as _;
        let waiting = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        waiting.into_iter().map(std::fs::File::from).find(|file| {
            file.metadata()
                .is_ok_and(|metadata| metadata.dev() == device && metadata.ino() == inode)
        })
    }

    /// Keeps `descriptor`, closing the oldest waiting one when [`INBOX_LIMIT`] wait: the newest
    /// is the one a call still waits for.
    fn keep(&self, descriptor: OwnedFd) {
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() == INBOX_LIMIT {
            waiting.remove(0);
        }
        waiting.push(descriptor);
    }
}

/// Writes `buffers` to `stream` with `descriptor` attached (it arrives with the first of these
/// bytes); on `Ready(Ok)` the peer holds its own copy of it.
pub fn poll_send_with(
    stream: &UnixStream,
    context: &mut Context<'_>,
    buffers: &[IoSlice<'_>],
    descriptor: BorrowedFd<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(context))?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let descriptors = [descriptor];
        let pushed = control.push(SendAncillaryMessage::ScmRights(&descriptors));
        debug_assert!(pushed, "the buffer has room for one descriptor");
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::net::sendmsg(stream, buffers, &mut control, SendFlags::NOSIGNAL).map_err(io::Error::from)
        });
        match sent {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            sent => return Poll::Ready(sent),
        }
    }
}

/// A Unix stream whose reads keep passed descriptors.
pub struct DescriptorStream {
    stream: UnixStream,
    inbox: Inbox,
}

impl DescriptorStream {
    /// Reads `stream`, keeping passed descriptors in `inbox`.
    pub fn new(stream: UnixStream, inbox: Inbox) -> Self {
        Self { stream, inbox }
    }
}

impl AsyncRead for DescriptorStream {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_read_ready(context))?;
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(PER_READ))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let unfilled = buffer.initialize_unfilled();
            let received = this.stream.try_io(Interest::READABLE, || {
                rustix::net::recvmsg(
                    &this.stream,
                    &mut [IoSliceMut::new(unfilled)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            match received {
                Ok(message) => {
                    for ancillary in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(descriptors) = ancillary {
                            descriptors.for_each(|descriptor| this.inbox.keep(descriptor));
                        }
                    }
                    buffer.advance(message.bytes);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for DescriptorStream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsFd as _;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    async fn send_with(socket: &UnixStream, bytes: &[u8], descriptors: &[&std::fs::File]) {
        if let [one] = descriptors {
            let sent =
                std::future::poll_fn(|context| poll_send_with(socket, context, &[IoSlice::new(bytes)], one.as_fd()))
                    .await
                    .unwrap();
            assert_eq!(sent, bytes.len());
            return;
        }
        // Several at once, as no daemon sends them: the inbox must still stay bounded.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let borrowed: Vec<_> = descriptors.iter().map(|file| file.as_fd()).collect();
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        rustix::net::sendmsg(socket, &[IoSlice::new(bytes)], &mut control, SendFlags::empty()).unwrap();
    }

    #[tokio::test]
    async fn a_passed_descriptor_is_kept_with_the_bytes_and_the_inbox_stays_bounded() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let inbox = Inbox::default();
        let mut stream = DescriptorStream::new(ours, inbox.clone());
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"snapshot").unwrap();
        send_with(&theirs, b"started", &[&file]).await;
        let mut read = [0u8; 7];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"started");
        let mut passed = std::fs::File::from(inbox.take().expect("the descriptor was kept"));
        passed.rewind().unwrap();
        let mut contents = String::new();
        passed.read_to_string(&mut contents).unwrap();
        assert_eq!(contents, "snapshot");
        assert!(inbox.take().is_none());

        // More than the inbox holds: the newest are kept, the oldest closed.
        use std::os::unix::fs::MetadataExt as _;
        let inode = |file: &std::fs::File| file.metadata().unwrap().ino();
        let files: Vec<_> = (0..6).map(|_| tempfile::tempfile().unwrap()).collect();
        send_with(&theirs, b"x", &files.iter().take(4).collect::<Vec<_>>()).await;
        send_with(&theirs, b"y", &files.iter().skip(4).collect::<Vec<_>>()).await;
        let mut read = [0u8; 2];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"xy");
        let kept: Vec<_> = std::iter::from_fn(|| inbox.take())
            .map(|kept| inode(&std::fs::File::from(kept)))
            .collect();
        assert_eq!(kept, files[6 - INBOX_LIMIT..].iter().map(inode).collect::<Vec<_>>());

        // The descriptor a call asked for is found by its file; stale ones are closed.
        let (stale, wanted) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        send_with(&theirs, b"s", &[&stale]).await;
        send_with(&theirs, b"w", &[&wanted]).await;
        let mut read = [0u8; 2];
        stream.read_exact(&mut read).await.unwrap();
        let identity = wanted.metadata().unwrap();
        let found = inbox
            .take_file(identity.dev(), identity.ino())
            .expect("the wanted file");
        assert_eq!(found.metadata().unwrap().ino(), identity.ino());
        assert!(inbox.take().is_none(), "the stale descriptor was closed");
        // Plain bytes still pass.
        tokio::io::AsyncWriteExt::write_all(&mut theirs, b"plain")
            .await
            .unwrap();
        let mut read = [0u8; 5];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"plain");
    }
}
