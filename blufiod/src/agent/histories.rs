//! Recent sessions' stored messages, kept decoded between turns, so that the next turn of a
//! session does not read its whole history from the database and decode it again.
//!
//! A [`Transcript`] is the stored form of a session's latest messages (at most
//! `HISTORY_MESSAGES`, oldest first, in the order the turns ran): exactly what reading them back
//! gives, so [`Transcript::history`] equals `History::from_records` of that read.
//!
//! **Invariant:** a transcript in [`Histories`] holds every message of its session, and the
//! session has no turn in flight. The agent keeps that by taking a session's transcript out when
//! any turn of it starts, and putting one back only when a turn that was alone in its session
//! (no other turn in flight when it was accepted, none accepted after it until its message was
//! stored, none in flight or accepted when it ends) completed with every message it stored pushed
//! here too; the next alone turn may then take the transcript and add its own message, without a
//! read. Anything else (a failed or cancelled turn, queued turns, a restore (the storage epoch), a
//! deleted session) leaves the next turn to read the database, which is always right. Bounded by
//! sessions and by bytes; least recently kept goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::context::History;
use super::model::Role as StoredRole;
use super::provider::ContentBlock;
use crate::storage::MessageRecord;

/// Sessions whose transcript is kept.
const MAX_SESSIONS: usize = 64;
/// Bytes of kept transcripts (their text and tool inputs, approximately); a transcript larger
/// than this is not kept at all.
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// One session's latest stored messages, decoded.
#[derive(Debug, Clone)]
pub struct Transcript {
    messages: VecDeque<(StoredRole, Arc<[ContentBlock]>, usize)>,
    /// At most this many messages, the newest.
    limit: usize,
    bytes: usize,
    /// The storage epoch it was read at (or started from): another epoch means a restore may
    /// have replaced the database under it.
    epoch: u64,
}

impl Transcript {
    /// An empty transcript of at most `limit` messages, read at `epoch`.
    pub fn new(limit: usize, epoch: u64) -> Self {
        Self {
            messages: VecDeque::new(),
            limit,
            bytes: 0,
            epoch,
        }
    }

    /// The transcript of records read back (oldest first) at `epoch`.
    pub fn from_records(records: &[MessageRecord], limit: usize, epoch: u64) -> Self {
        let mut transcript = Self::new(limit, epoch);
        for record in records {
            let role = StoredRole::parse(&record.role).unwrap_or(StoredRole::User);
            transcript.push(role, super::context::StoredBlocks::decode(&record.content_json));
        }
        transcript
    }

    /// Appends a message as it was stored, dropping the oldest beyond the limit.
    pub fn push(&mut self, role: StoredRole, blocks: Vec<ContentBlock>) {
        let bytes = approximate_bytes(&blocks);
        self.messages.push_back((role, blocks.into(), bytes));
        self.bytes += bytes;
        while self.messages.len() > self.limit {
            if let Some((_, _, bytes)) = self.messages.pop_front() {
                self.bytes -= bytes;
            }
        }
    }

    /// Appends a message as reading it back would give it: a tool input goes through its stored
    /// JSON, since a float can come back one unit in the last place off (serde_json's default
    /// parsing is not correctly rounded); text is the same either way.
    pub fn push_stored(&mut self, role: StoredRole, blocks: &[ContentBlock]) {
        let read_back = if blocks.iter().any(|block| matches!(block, ContentBlock::ToolUse { .. })) {
            super::context::StoredBlocks::decode(&super::context::StoredBlocks::encode(blocks))
        } else {
            blocks.to_vec()
        };
        self.push(role, read_back);
    }

    /// The conversation in provider form (sharing the messages' blocks).
    pub fn history(&self) -> History {
        History::from_messages(self.messages.iter().map(|(role, blocks, _)| (*role, blocks.clone())))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.messages.len()
    }
}

/// What a message weighs in memory, about: its blocks, their text, and a tool input's JSON tree
/// node by node (a number in an array is a few bytes of text but a 32-byte value).
fn approximate_bytes(blocks: &[ContentBlock]) -> usize {
    // The fixed part stands for the block and its allocation.
    const PER_BLOCK: usize = 64;
    blocks
        .iter()
        .map(|block| {
            PER_BLOCK
                + match block {
                    ContentBlock::Text { text } => text.len(),
                    ContentBlock::ToolUse { id, name, input } => id.len() + name.len() + value_bytes(input),
                    ContentBlock::ToolResult {
                        tool_use_id, content, ..
                    } => tool_use_id.len() + content.len(),
                }
        })
        .sum()
}

/// The memory of a JSON value tree, about: each node's own size, strings and map keys, and a
/// map entry's overhead.
fn value_bytes(value: &serde_json::Value) -> usize {
    const NODE: usize = std::mem::size_of::<serde_json::Value>();
    const ENTRY: usize = 48;
    NODE + match value {
        serde_json::Value::String(text) => text.len(),
        serde_json::Value::Array(items) => items.iter().map(value_bytes).sum(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(key, item)| ENTRY + key.len() + value_bytes(item))
            .sum(),
        _ => 0,
    }
}

/// The kept transcripts of recent sessions.
#[derive(Debug)]
pub struct Histories {
    inner: Mutex<Kept>,
    max_sessions: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Kept {
    /// Transcript and when it was kept (a counter), by session id.
    sessions: HashMap<String, (Transcript, u64)>,
    clock: u64,
    bytes: usize,
}

impl Default for Histories {
    fn default() -> Self {
        Self::with_bounds(MAX_SESSIONS, MAX_BYTES)
    }
}

impl Histories {
    fn with_bounds(max_sessions: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_sessions,
            max_bytes,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a session's transcript out (a turn of it is starting).
    pub fn take(&self, session_id: &str) -> Option<Transcript> {
        let mut kept = self.kept();
        let (transcript, _) = kept.sessions.remove(session_id)?;
        kept.bytes -= transcript.bytes;
        Some(transcript)
    }

    /// Keeps a session's transcript, evicting the least recently kept ones beyond the bounds.
    /// One larger than the whole byte bound is not kept.
    pub fn keep(&self, session_id: &str, transcript: Transcript) {
        if transcript.bytes > self.max_bytes || self.max_sessions == 0 {
            self.forget(session_id);
            return;
        }
        let mut kept = self.kept();
        kept.clock += 1;
        let clock = kept.clock;
        kept.bytes += transcript.bytes;
        if let Some((old, _)) = kept.sessions.insert(session_id.to_owned(), (transcript, clock)) {
            kept.bytes -= old.bytes;
        }
        while kept.sessions.len() > self.max_sessions || kept.bytes > self.max_bytes {
            let Some(oldest) = kept
                .sessions
                .iter()
                .min_by_key(|(_, (_, kept_at))| *kept_at)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some((gone, _)) = kept.sessions.remove(&oldest) {
                kept.bytes -= gone.bytes;
            }
        }
    }

    /// Drops a session's transcript (the session was deleted).
    pub fn forget(&self, session_id: &str) {
        self.take(session_id);
    }

    /// Drops every transcript (sessions were pruned, the database replaced, or memory is short);
    /// returns how many there were.
    pub fn clear(&self) -> usize {
        let mut kept = self.kept();
        kept.bytes = 0;
        std::mem::take(&mut kept.sessions).len()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.kept().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Vec<ContentBlock> {
        vec![ContentBlock::Text { text: text.to_owned() }]
    }

    fn record(role: &str, blocks: &[ContentBlock]) -> MessageRecord {
        MessageRecord {
            id: String::new(),
            turn_id: String::new(),
            role: role.to_owned(),
            content_json: super::super::context::StoredBlocks::encode(blocks),
            created_at: 0,
        }
    }

    #[test]
    fn a_transcript_gives_the_history_of_the_records_it_mirrors() {
        let call = vec![ContentBlock::ToolUse {
            id: "toolu_1".to_owned(),
            name: "http_get".to_owned(),
            input: serde_json::json!({"url": "https://example.com"}),
        }];
        let result = vec![ContentBlock::ToolResult {
            tool_use_id: "toolu_1".to_owned(),
            content: "200 OK".to_owned(),
            is_error: false,
        }];
        let stored = [
            ("user", text("one")),
            ("assistant", call.clone()),
            ("tool", result.clone()),
            ("assistant", text("two")),
            // A call a crash left without its result, then the owner again.
            ("assistant", call),
            ("user", text("three")),
        ];
        let records: Vec<MessageRecord> = stored.iter().map(|(role, blocks)| record(role, blocks)).collect();
        // Pushed one by one, as a turn stores them, and kept to the last 4 as the read would be.
        let mut pushed = Transcript::new(4, 0);
        for (role, blocks) in &stored {
            pushed.push(StoredRole::parse(role).expect("role"), blocks.clone());
        }
        let read = History::from_records(&records[2..]);
        assert_eq!(pushed.len(), 4);
        assert_eq!(format!("{:?}", pushed.history()), format!("{read:?}"));
        assert_eq!(
            format!("{:?}", Transcript::from_records(&records, 4, 0).history()),
            format!("{read:?}")
        );
        assert_eq!(
            format!("{:?}", Transcript::from_records(&records, 100, 0).history()),
            format!("{:?}", History::from_records(&records))
        );
    }

    #[test]
    fn a_tool_input_is_kept_as_reading_it_back_gives_it() {
        // A float serde_json's default parser reads back one unit in the last place off.
        let input = serde_json::json!({"x": 1.071_566_039_146_582_6e-75_f64});
        let blocks = vec![ContentBlock::ToolUse {
            id: "toolu_1".to_owned(),
            name: "calc".to_owned(),
            input: input.clone(),
        }];
        let read_back =
            super::super::context::StoredBlocks::decode(&super::super::context::StoredBlocks::encode(&blocks));
        let ContentBlock::ToolUse { input: reread, .. } = &read_back[0] else {
            panic!("a tool call");
        };
        assert_ne!(reread, &input, "the case this guards against");
        let mut kept = Transcript::new(10, 0);
        kept.push_stored(StoredRole::Assistant, &blocks);
        let records = [record("assistant", &blocks)];
        assert_eq!(
            format!("{:?}", kept.history()),
            format!("{:?}", Transcript::from_records(&records, 10, 0).history())
        );
    }

    #[test]
    fn a_tool_input_weighs_its_tree_not_its_text() {
        let numbers = serde_json::json!({"values": (0..1_000).collect::<Vec<u32>>()});
        let call = vec![ContentBlock::ToolUse {
            id: "toolu_1".to_owned(),
            name: "sum".to_owned(),
            input: numbers.clone(),
        }];
        let text = numbers.to_string().len();
        let weight = approximate_bytes(&call);
        assert!(
            weight >= 1_000 * 32,
            "{weight} bytes for 1,000 numbers ({text} bytes as text)"
        );
        assert!(weight > 5 * text, "{weight} against {text}");
    }

    #[test]
    fn kept_transcripts_are_bounded_by_sessions_and_bytes() {
        let histories = Histories::with_bounds(2, 1_000);
        let sized = |bytes: usize| {
            let mut transcript = Transcript::new(10, 0);
            transcript.push(StoredRole::User, text(&"x".repeat(bytes)));
            transcript
        };
        histories.keep("a", sized(100));
        histories.keep("b", sized(100));
        histories.keep("c", sized(100));
        assert!(histories.take("a").is_none(), "the least recently kept went");
        assert_eq!(histories.bytes(), 2 * (100 + 64));
        histories.keep("d", sized(700));
        assert_eq!(histories.bytes(), 164 + 764, "over the byte bound, the oldest went");
        assert!(histories.take("b").is_none());
        assert!(histories.take("c").is_some(), "the newer one stays");
        assert_eq!(histories.bytes(), 764);
        histories.keep("huge", sized(2_000));
        assert!(
            histories.take("huge").is_none(),
            "larger than the whole bound: not kept"
        );
        assert!(histories.take("d").is_some());
        assert!(histories.take("d").is_none(), "taking removes");
        assert_eq!(histories.bytes(), 0);

        histories.keep("e", sized(10));
        histories.keep("e", sized(20));
        assert_eq!(histories.bytes(), 84, "keeping again replaces");
        histories.forget("e");
        histories.keep("f", sized(10));
        assert_eq!(histories.clear(), 1);
        assert!(histories.take("f").is_none());
        assert_eq!(histories.bytes(), 0);
    }
}
