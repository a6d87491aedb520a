//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` format) for the
//! providers' streamed answers.
//!
//! Bytes go in as they arrive, in chunks split anywhere (inside a line, a CRLF pair or a UTF-8
//! character); complete events come out. It must never hold more than one bounded event in
//! memory: a line or an event larger than the limit is an error, so a hostile or broken server
//! cannot make the daemon grow without bound. It knows nothing about what the data means.

/// Largest event (its data, type and id together, or any single line) accepted by default.
/// Real events are a few hundred bytes; a whole tool input streamed as one delta stays far below.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message` when the event had none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen on the stream so far, if any.
    pub id: Option<String>,
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// An event or a line exceeded the limit.
    #[error("an event is larger than {limit} bytes")]
    EventTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

/// The parser's state between chunks.
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// Bytes of the current, unterminated line. Kept as bytes so that a UTF-8 character split
    /// across chunks is decoded only once whole.
    line: Vec<u8>,
    /// The previous chunk ended with CR: a leading LF of the next chunk belongs to that CRLF.
    after_cr: bool,
    /// Whether the stream start (where a byte-order mark may sit) has been passed.
    started: bool,
    event_type: String,
    data: String,
    /// Whether any `data:` line arrived for the current event (an empty `data:` line counts).
    has_data: bool,
    last_id: Option<String>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default event size limit.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that rejects events larger than `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            started: false,
            event_type: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
        }
    }

    /// Feeds the next bytes of the stream and returns the events they complete, in order.
    ///
    /// After an error the parser's state is unspecified; the stream must be abandoned.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(end) = bytes.iter().position(|&byte| byte == b'\n' || byte == b'\r') {
            self.push_line_bytes(&bytes[..end])?;
            let terminator = bytes[end];
            bytes = &bytes[end + 1..];
            if terminator == b'\r' {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    // The LF of a CRLF may be the first byte of the next chunk.
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.process_line(&line)? {
                events.push(event);
            }
            // Reuse the allocation for the next line.
            self.line = line;
            self.line.clear();
        }
        self.push_line_bytes(bytes)?;
        Ok(events)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.pending_bytes() + self.line.len() + bytes.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes held for the event being assembled.
    fn pending_bytes(&self) -> usize {
        self.data.len() + self.event_type.len()
    }

    fn process_line(&mut self, raw: &[u8]) -> Result<Option<SseEvent>, SseError> {
        let mut raw = raw;
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        if raw.is_empty() {
            return Ok(self.dispatch());
        }
        // The format is UTF-8; invalid sequences become U+FFFD as the specification says.
        let line = String::from_utf8_lossy(raw);
        if line.starts_with(':') {
            // A comment, used by servers as a keep-alive.
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => {
                self.event_type.clear();
                self.event_type.push_str(value);
            }
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // An id with NUL is ignored by the specification.
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            // `retry:` only matters to reconnecting browsers; unknown fields are ignored.
            _ => {}
        }
        if self.pending_bytes() > self.max_event_bytes {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event_type = std::mem::take(&mut self.event_type);
        if !std::mem::take(&mut self.has_data) {
            // An event without data is not dispatched (WHATWG HTML, "dispatch the event").
            return None;
        }
        Some(SseEvent {
            event: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALISTIC: &str = "event: message_start\r\n\
        data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\"}}\r\n\
        \r\n\
        : keep-alive comment\n\
        event: content_block_delta\n\
        id: 7\n\
        data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Grüße 😀 \"}}\n\
        \n\
        data: first line\r\
        data:second line\r\
        data: \r\
        \r\
        event: ping\n\
        data: {}\n\
        \n";

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.feed(chunk)?);
        }
        Ok(events)
    }

    fn event(event: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: event.to_owned(),
            data: data.to_owned(),
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn parses_a_realistic_stream_with_mixed_line_endings() {
        let events = parse_all(&[REALISTIC.as_bytes()]).unwrap();
        assert_eq!(
            events,
            vec![
                event(
                    "message_start",
                    r#"{"type":"message_start","message":{"model":"m"}}"#,
                    None
                ),
                event(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","delta":{"text":"Grüße 😀 "}}"#,
                    Some("7")
                ),
                event("message", "first line\nsecond line\n", Some("7")),
                event("ping", "{}", Some("7")),
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = REALISTIC.as_bytes();
        let whole = parse_all(&[bytes]).unwrap();
        for split in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(split);
            assert_eq!(parse_all(&[head, tail]).unwrap(), whole, "split at byte {split}");
        }
        // One byte at a time splits every CRLF and every multi-byte character.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&singles).unwrap(), whole);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        // A CR at the end of a chunk followed by LF must not produce an extra empty line
        // (which would dispatch "a" early and lose nothing, but would split "a\nb").
        let events = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).unwrap();
        assert_eq!(events, vec![event("message", "a\nb", None)]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let events = parse_all(&[b":hello\n: another\nretry: 100\nfoo: bar\ndata: x\n\n:bye\n\n"]).unwrap();
        assert_eq!(events, vec![event("message", "x", None)]);
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_reset_the_type() {
        let events = parse_all(&[b"event: lonely\n\ndata: y\n\n"]).unwrap();
        assert_eq!(events, vec![event("message", "y", None)]);
    }

    #[test]
    fn unterminated_event_is_not_dispatched() {
        let events = parse_all(&[b"data: complete\n\ndata: partial\n"]).unwrap();
        assert_eq!(events, vec![event("message", "complete", None)]);
    }

    #[test]
    fn leading_byte_order_mark_is_skipped() {
        let events = parse_all(&[b"\xEF\xBB", b"\xBFdata: z\n\n"]).unwrap();
        assert_eq!(events, vec![event("message", "z", None)]);
    }

    #[test]
    fn oversized_event_is_rejected() {
        // Many small data lines: each line is short, the event is not.
        let mut parser = SseParser::with_limit(1024);
        let line = format!("data: {}\n", "x".repeat(100));
        let mut result = Ok(Vec::new());
        for _ in 0..20 {
            result = parser.feed(line.as_bytes());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge { limit: 1024 }));
    }

    #[test]
    fn oversized_line_without_terminator_is_rejected() {
        // A line that never ends must not be buffered without bound either.
        let mut parser = SseParser::with_limit(1024);
        let chunk = vec![b'a'; 512];
        assert!(parser.feed(b"data: ").is_ok());
        assert!(parser.feed(&chunk).is_ok());
        assert_eq!(parser.feed(&chunk), Err(SseError::EventTooLarge { limit: 1024 }));
    }

    #[test]
    fn events_within_the_limit_are_accepted_one_after_another() {
        // The limit applies per event, not to the whole stream.
        let mut parser = SseParser::with_limit(64);
        for _ in 0..100 {
            let events = parser.feed(format!("data: {}\n\n", "y".repeat(40)).as_bytes()).unwrap();
            assert_eq!(events.len(), 1);
        }
    }
}
