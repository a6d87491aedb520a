//! A minimal Server-Sent Events parser for the gateway's message stream: `event:` and `data:`
//! fields, events ended by a blank line, comments ignored (the WHATWG `text/event-stream` rules
//! that the stream uses). It never buffers more than [`MAX_LINE`] bytes of one line, nor of one
//! event's data.

/// The longest line, and the longest event (its `data:` lines together), accepted; a longer one
/// means the peer is not the gateway.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when the event had none.
    pub name: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// A line, or an event's data, longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

/// Incremental parser: feed it chunks as they arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`, so a `\n` at the start of this one ends no line.
    after_cr: bool,
    name: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Parses `chunk` and returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        let mut events = Vec::new();
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_ended(&String::from_utf8_lossy(&line))? {
                        events.push(event);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(LineTooLong);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    fn line_ended(&mut self, line: &str) -> Result<Option<SseEvent>, LineTooLong> {
        if line.is_empty() {
            let name = std::mem::take(&mut self.name);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return Ok(None);
            }
            let name = if name.is_empty() { "message".to_owned() } else { name };
            return Ok(Some(SseEvent { name, data }));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => value.clone_into(&mut self.name),
            "data" => {
                // Data lines add up until a blank line: an event that never ends must not grow
                // without bound.
                if self.data.len() + value.len() + 1 > MAX_LINE {
                    return Err(LineTooLong);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // `id`, `retry` and unknown fields do not matter to a one-shot stream.
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_split_across_chunks() {
        let stream =
            b"event: accepted\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: text_delta\ndata: {\"text\":\"hi\"}\n\n";
        for split in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&stream[..split]).expect("parses");
            events.extend(parser.push(&stream[split..]).expect("parses"));
            assert_eq!(
                events,
                [event("accepted", "{\"a\":1}"), event("text_delta", "{\"text\":\"hi\"}")],
                "split at {split}"
            );
        }
    }

    #[test]
    fn crlf_multiline_data_and_defaults() {
        let mut parser = SseParser::default();
        let events = parser
            .push(b"data:one\r\ndata: two\r\n\r\nevent: only-name\n\nevent:x\rdata\r\r")
            .expect("parses");
        assert_eq!(events, [event("message", "one\ntwo"), event("x", "")]);
        assert_eq!(parser.push(b"data: unfinished").expect("parses"), []);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut parser = SseParser::default();
        let long = vec![b'a'; MAX_LINE];
        assert_eq!(parser.push(&long).expect("exactly the limit"), []);
        assert_eq!(parser.push(b"a"), Err(LineTooLong));
    }

    #[test]
    fn an_event_whose_data_never_ends_is_refused() {
        let mut parser = SseParser::default();
        let line = format!("data: {}\n", "x".repeat(1024 * 1024));
        for _ in 0..15 {
            assert_eq!(parser.push(line.as_bytes()).expect("under the limit"), []);
        }
        assert_eq!(
            parser.push(line.as_bytes()),
            Err(LineTooLong),
            "16 MiB of data, no blank line"
        );
    }
}
