//! The recent log lines kept in memory for `blufioctl logs`: a ring bounded by line count and
//! by bytes, so that an owner without the journal can see what happened. It is never written to
//! disk. Readers that fall behind a follow are told how many lines they missed; nothing waits on
//! a slow reader.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// At most this many lines are kept.
pub const MAX_LINES: usize = 2_000;
/// At most this many bytes of text are kept (about 256 bytes a line on average).
pub const MAX_BYTES: usize = 512 * 1024;
/// A longer line is cut to this many bytes (at a character boundary) and marked with `…`.
pub const MAX_LINE_BYTES: usize = 4 * 1024;

/// One log line as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Position in the daemon's log since start, from 0, without gaps.
    pub seq: u64,
    /// When it was logged, Unix milliseconds.
    pub unix_ms: i64,
    /// Its level.
    pub level: Level,
    /// `target: message fields`, without timestamp, level or colour.
    pub text: Box<str>,
}

/// What a reader gets after a position: the lines still kept, and how many lines after that
/// position were already dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Since {
    /// Lines logged after the position that the ring no longer holds.
    pub missed: u64,
    /// The kept lines from the position on, oldest first, at or above the wanted level.
    pub lines: Vec<Line>,
    /// The position to ask from next time.
    pub next: u64,
}

#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<Line>,
    bytes: usize,
    next_seq: u64,
}

/// The ring. Cheap to share behind an `Arc`; writers never block on readers.
#[derive(Debug)]
pub struct Ring {
    kept: Mutex<Kept>,
    /// The next sequence number, for followers to wait on.
    next: watch::Sender<u64>,
}

impl Default for Ring {
    fn default() -> Self {
        Self::new()
    }
}

impl Ring {
    /// An empty ring.
    pub fn new() -> Self {
        Self {
            kept: Mutex::default(),
            next: watch::Sender::new(0),
        }
    }

    /// Keeps one line, dropping the oldest ones beyond the bounds.
    pub fn push(&self, level: Level, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        let text: Box<str> = if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}…", &text[..cut]).into()
        } else {
            text.into()
        };
        let unix_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let next = {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            kept.bytes += text.len();
            let seq = kept.next_seq;
            kept.next_seq += 1;
            kept.lines.push_back(Line {
                seq,
                unix_ms: i64::try_from(unix_ms).unwrap_or(i64::MAX),
                level,
                text,
            });
            while kept.lines.len() > MAX_LINES || kept.bytes > MAX_BYTES {
                let Some(dropped) = kept.lines.pop_front() else { break };
                kept.bytes -= dropped.text.len();
            }
            kept.next_seq
        };
        self.next.send_replace(next);
    }

    /// The last `count` lines at `level` or more severe, oldest first, and the position after
    /// the newest line kept (to follow from).
    pub fn tail(&self, count: usize, level: Level) -> (Vec<Line>, u64) {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines: Vec<Line> = kept
            .lines
            .iter()
            .rev()
            .filter(|line| line.level <= level)
            .take(count)
            .cloned()
            .collect();
        lines.reverse();
        (lines, kept.next_seq)
    }

    /// The lines from position `from` on, at `level` or more severe, at most `limit` of them.
    pub fn since(&self, from: u64, level: Level, limit: usize) -> Since {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = kept.lines.front().map_or(kept.next_seq, |line| line.seq);
        let start = from.max(oldest);
        let skip = usize::try_from(start - oldest).unwrap_or(usize::MAX);
        let mut next = start;
        let mut lines = Vec::new();
        for line in kept.lines.iter().skip(skip) {
            if lines.len() == limit {
                break;
            }
            next = line.seq + 1;
            if line.level <= level {
                lines.push(line.clone());
            }
        }
        Since {
            missed: start - from.min(start),
            lines,
            next,
        }
    }

    /// A receiver that changes whenever a line is kept.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.next.subscribe()
    }
}

/// The writer the ring's formatting layer writes each event into: tracing-subscriber formats a
/// whole event and then writes it with one `write_all`, so each write is one line. A line it
/// must not keep ([`is_transport`]) is dropped.
#[derive(Debug, Clone)]
pub struct RingWriter {
    ring: std::sync::Arc<Ring>,
    level: Level,
    keep: bool,
}

impl std::io::Write for RingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.keep {
            self.ring.push(self.level, &String::from_utf8_lossy(bytes));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes a [`RingWriter`] for each event, carrying the event's level.
#[derive(Debug, Clone)]
pub struct MakeRingWriter(pub std::sync::Arc<Ring>);

impl<'a> MakeWriter<'a> for MakeRingWriter {
    type Writer = RingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RingWriter {
            ring: self.0.clone(),
            level: Level::INFO,
            keep: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RingWriter {
            ring: self.0.clone(),
            level: *meta.level(),
            keep: *meta.level() <= Level::INFO || !is_transport(meta.target()),
        }
    }
}

/// The crates that carry `ReadLogs` streams. Their debug and trace events stay out of the ring:
/// each line a stream sends would log more lines for it to send, a loop that wrote about 100 MB
/// in 10 s at `log.level = "trace"`. They still reach stderr, the journal or the log file.
fn is_transport(target: &str) -> bool {
    ["h2", "hyper", "hyper_util", "tonic", "tower", "rustls", "tokio_util"]
        .iter()
        .any(|name| target == *name || target.strip_prefix(name).is_some_and(|rest| rest.starts_with("::")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|line| &*line.text).collect()
    }

    #[test]
    fn the_transports_debug_lines_stay_out_and_everything_else_goes_in() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let ring = std::sync::Arc::new(Ring::new());
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_writer(MakeRingWriter(ring.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::debug!(target: "h2::codec", "a frame");
            tracing::trace!(target: "hyper_util::client", "a read");
            tracing::debug!(target: "h2_like::mine", "not a transport");
            tracing::info!(target: "tonic::transport", "an info line");
        });
        let (lines, _) = ring.tail(10, Level::TRACE);
        let texts = texts(&lines);
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].contains("not a transport") && texts[1].contains("an info line"),
            "{texts:?}"
        );
    }

    #[test]
    fn tail_keeps_order_and_filters_by_severity() {
        let ring = Ring::new();
        ring.push(Level::INFO, "a\n");
        ring.push(Level::DEBUG, "b");
        ring.push(Level::WARN, "c");
        ring.push(Level::ERROR, "d");
        let (all, next) = ring.tail(10, Level::TRACE);
        assert_eq!(texts(&all), ["a", "b", "c", "d"]);
        assert_eq!(next, 4);
        assert_eq!(texts(&ring.tail(2, Level::TRACE).0), ["c", "d"]);
        assert_eq!(texts(&ring.tail(10, Level::WARN).0), ["c", "d"]);
        assert_eq!(texts(&ring.tail(10, Level::INFO).0), ["a", "c", "d"]);
    }

    #[test]
    fn the_ring_is_bounded_by_lines_and_by_bytes() {
        let ring = Ring::new();
        for n in 0..MAX_LINES + 10 {
            ring.push(Level::INFO, &format!("{n}"));
        }
        let (lines, next) = ring.tail(usize::MAX, Level::TRACE);
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(lines[0].text.as_ref(), "10");
        assert_eq!(next, (MAX_LINES + 10) as u64);

        let ring = Ring::new();
        let long = "x".repeat(MAX_LINE_BYTES * 2);
        for _ in 0..MAX_LINES {
            ring.push(Level::INFO, &long);
        }
        let (lines, _) = ring.tail(usize::MAX, Level::TRACE);
        let bytes: usize = lines.iter().map(|line| line.text.len()).sum();
        assert!(bytes <= MAX_BYTES, "{bytes} bytes kept");
        assert!(
            lines.len() >= MAX_BYTES / (MAX_LINE_BYTES + 3) - 1,
            "{} lines kept",
            lines.len()
        );
        assert!(lines[0].text.ends_with('…') && lines[0].text.len() == MAX_LINE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn a_cut_line_stays_valid_utf8() {
        let ring = Ring::new();
        ring.push(Level::INFO, &"é".repeat(MAX_LINE_BYTES));
        let (lines, _) = ring.tail(1, Level::TRACE);
        assert!(lines[0].text.len() <= MAX_LINE_BYTES + '…'.len_utf8());
        assert!(lines[0].text.starts_with('é'));
    }

    #[test]
    fn since_reports_what_a_slow_reader_missed() {
        let ring = Ring::new();
        ring.push(Level::INFO, "0");
        let (_, from) = ring.tail(0, Level::TRACE);
        assert_eq!(from, 1);
        for n in 1..=MAX_LINES + 5 {
            ring.push(if n % 2 == 0 { Level::DEBUG } else { Level::INFO }, &format!("{n}"));
        }
        let since = ring.since(from, Level::TRACE, usize::MAX);
        // Lines 1..=5 were dropped before the reader came back.
        assert_eq!(since.missed, 5);
        assert_eq!(since.lines.first().map(|line| &*line.text), Some("6"));
        assert_eq!(since.next, (MAX_LINES + 6) as u64);

        let limited = ring.since(since.next - 4, Level::INFO, 1);
        assert_eq!(limited.missed, 0);
        // One line wanted, after one below the level: the next read starts after both.
        assert_eq!(texts(&limited.lines), [format!("{}", MAX_LINES + 3)]);
        assert_eq!(limited.next, since.next - 2);
        assert_eq!(
            ring.since(since.next, Level::TRACE, 10),
            Since {
                missed: 0,
                lines: Vec::new(),
                next: since.next
            }
        );
    }

    #[tokio::test]
    async fn followers_are_woken_by_a_new_line() {
        let ring = std::sync::Arc::new(Ring::new());
        let mut changes = ring.subscribe();
        let writer = ring.clone();
        tokio::spawn(async move { writer.push(Level::INFO, "late") });
        tokio::time::timeout(std::time::Duration::from_secs(10), changes.changed())
            .await
            .expect("woken")
            .expect("sender alive");
        assert_eq!(*changes.borrow(), 1);
    }
}
