//! A temporary `NOTIFY_SOCKET`: the sd_notify datagrams a daemon sends, each with the moment it
//! arrived, so tests can wait for a state and benchmarks can time one.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::PATIENCE;

/// sd_notify datagrams received on a temporary `NOTIFY_SOCKET`.
#[derive(Clone)]
pub struct NotifyLog {
    messages: Arc<Received>,
    pub path: PathBuf,
}

/// Each datagram with the moment it arrived, and the condition its waiters wait on.
type Received = (Mutex<Vec<(Instant, String)>>, Condvar);

impl NotifyLog {
    /// Binds a datagram socket at `path` and collects what arrives on a background thread.
    pub fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
        let messages: Arc<Received> = Arc::default();
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while let Ok(len) = socket.recv(&mut buffer) {
                // Taken before anything else, so a benchmark's timing does not include ours.
                let arrived = Instant::now();
                let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                let (lock, condvar) = &*sink;
                lock.lock().unwrap().push((arrived, text));
                condvar.notify_all();
            }
        });
        Self {
            messages,
            path: path.to_owned(),
        }
    }

    /// Every datagram so far.
    pub fn all(&self) -> Vec<String> {
        let messages = self.messages.0.lock().unwrap();
        messages.iter().map(|(_, message)| message.clone()).collect()
    }

    /// Every line (assignment) so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|message| message.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// Waits until some datagram satisfies `predicate`; returns it.
    pub fn wait_for(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let (lock, condvar) = &*self.messages;
        let mut messages = lock.lock().unwrap();
        loop {
            if let Some((_, found)) = messages.iter().find(|(_, message)| predicate(message)) {
                return found.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no sd_notify message {what} within {PATIENCE:?}; got {:?}",
                messages.iter().map(|(_, message)| message).collect::<Vec<_>>()
            );
            messages = condvar.wait_timeout(messages, left).unwrap().0;
        }
    }

    /// How many datagrams satisfy `predicate`.
    pub fn count(&self, predicate: impl Fn(&str) -> bool) -> usize {
        self.all().iter().filter(|message| predicate(message)).count()
    }

    /// When the first datagram that satisfies `predicate` arrived, if one has.
    pub fn arrival(&self, predicate: impl Fn(&str) -> bool) -> Option<Instant> {
        let messages = self.messages.0.lock().unwrap();
        messages
            .iter()
            .find(|(_, message)| predicate(message))
            .map(|(arrived, _)| *arrived)
    }
}
