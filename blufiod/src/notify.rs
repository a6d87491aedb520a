//! The systemd notification protocol (`sd_notify`): readiness, status lines, reload, stop and
//! watchdog pings, sent as datagrams to `$NOTIFY_SOCKET`.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. A failed send is logged at debug
//! level and never fails the daemon: systemd's own timeouts catch a daemon that cannot notify.
//! This module decides nothing about *when* to notify; the daemon and the watchdog do.

use sd_notify::NotifyState;

/// Sends lifecycle notifications to the service manager.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

impl Notifier {
    /// `STATUS=<text>`: a short human line shown by `systemctl status`.
    pub fn status(&self, text: &str) {
        send(&[NotifyState::Status(text)]);
    }

    /// `READY=1` with a status line: startup (or a reload) is complete.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, as systemd requires for reload notifications.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading configuration"),
            ]),
            Err(error) => tracing::debug!(%error, "cannot read CLOCK_MONOTONIC for RELOADING=1"),
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`: the daemon is alive and making progress.
    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}
