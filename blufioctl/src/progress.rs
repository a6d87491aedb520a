//! A one-line progress bar on stderr for the long transfers of `backup` and `restore`: bytes done
//! of the total, percent and rate, redrawn in place at most ten times a second and cleared when
//! the transfer ends, so that the lines around it stay as they were.
//!
//! It draws only when asked to (the caller decides: stderr is a terminal, and stdout is not the
//! data); otherwise it only counts. It never decides what a transfer does, and it is cheap enough
//! to be advanced for every chunk.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::output::humanize_bytes;

/// The shortest time between two redraws.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Characters of the bar between its brackets.
const BAR_WIDTH: usize = 24;
/// Erases the cursor's line and returns to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// A transfer of `total` bytes, drawn on stderr when `enabled`.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    total: u64,
    enabled: bool,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    done: u64,
    /// When the bar was last drawn; none before the first draw.
    last_draw: Option<Instant>,
    /// The bar is on screen and must be erased before anything else is written.
    shown: bool,
    /// The transfer ended: no more drawing.
    finished: bool,
}

impl Progress {
    /// A transfer that begins now; `label` says what moves ("sending", "verifying").
    pub fn new(label: &'static str, total: u64, enabled: bool) -> Progress {
        Progress {
            label,
            total,
            enabled,
            started: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// Counts `bytes` more, and redraws when the last draw is old enough.
    pub fn advance(&self, bytes: u64) {
        let mut state = self.lock();
        state.done = state.done.saturating_add(bytes);
        if !self.enabled || state.finished {
            return;
        }
        // The first draw waits too: a transfer that ends sooner needs no bar.
        let now = Instant::now();
        if now.duration_since(state.last_draw.unwrap_or(self.started)) < REDRAW_EVERY {
            return;
        }
        state.last_draw = Some(now);
        state.shown = true;
        let line = progress_line(self.label, state.done, self.total, now.duration_since(self.started));
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "{CLEAR_LINE}{line}").and_then(|()| stderr.flush());
    }

    /// Writes `line` on stderr above the bar, which comes back with the next redraw.
    pub fn note(&self, line: &str) {
        let mut state = self.lock();
        let clear = if std::mem::take(&mut state.shown) {
            CLEAR_LINE
        } else {
            ""
        };
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{clear}{line}").and_then(|()| stderr.flush());
    }

    /// Erases the bar; further advances only count.
    pub fn finish(&self) {
        let mut state = self.lock();
        if std::mem::take(&mut state.shown) {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "{CLEAR_LINE}").and_then(|()| stderr.flush());
        }
        state.finished = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while drawing leaves a consistent count; keep using it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Progress {
    /// A transfer that failed leaves no half-drawn line before its error.
    fn drop(&mut self) {
        self.finish();
    }
}

/// The bar's line: "sending [#####·······]  12.0 MiB / 40.0 MiB  30%  8.5 MiB/s".
fn progress_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let shown = done.min(total);
    let fraction = if total == 0 {
        1.0
    } else {
        #[allow(clippy::cast_precision_loss, reason = "display only")]
        let fraction = shown as f64 / total as f64;
        fraction
    };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "fraction is within 0..=1"
    )]
    let filled = (fraction * BAR_WIDTH as f64).floor() as usize;
    let bar: String = std::iter::repeat_n('#', filled)
        .chain(std::iter::repeat_n('·', BAR_WIDTH - filled))
        .collect();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "fraction is within 0..=1"
    )]
    let percent = (fraction * 100.0).floor() as u64;
    let mut line = format!(
        "{label} [{bar}] {} / {}  {percent}%",
        humanize_bytes(done),
        humanize_bytes(total)
    );
    // Too early, a rate says more about the start-up than about the transfer.
    if elapsed >= Duration::from_millis(200) {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "display only"
        )]
        let per_second = (done as f64 / elapsed.as_secs_f64()) as u64;
        line.push_str(&format!("  {}/s", humanize_bytes(per_second)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_bytes_percent_and_rate() {
        let mib = 1024 * 1024;
        assert_eq!(
            progress_line("sending", 10 * mib, 40 * mib, Duration::from_secs(2)),
            "sending [######··················] 10.0 MiB / 40.0 MiB  25%  5.0 MiB/s"
        );
        assert_eq!(
            progress_line("verifying", 0, 1000, Duration::from_millis(10)),
            "verifying [························] 0 B / 1000 B  0%"
        );
        assert_eq!(
            progress_line("receiving", 5, 0, Duration::from_secs(1)),
            "receiving [########################] 5 B / 0 B  100%  5 B/s"
        );
    }

    #[test]
    fn a_disabled_bar_only_counts() {
        let progress = Progress::new("sending", 100, false);
        progress.advance(40);
        progress.advance(70);
        assert_eq!(progress.lock().done, 110);
        assert!(!progress.lock().shown);
    }
}
