//! Context assembly: how stored messages become the conversation sent to the model, trimmed to a
//! token budget, and how message content is stored.
//!
//! The system prompt and the tool list come first and do not change between turns, so the
//! provider's prompt-cache breakpoint on them stays valid; history is trimmed from the oldest
//! end only, so the retained prefix is stable too. This module never calls anything.

use serde::{Deserialize, Serialize};

use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;

use super::model::Role as StoredRole;
use super::provider::{ChatRequest, ContentBlock, Message, Role};
use crate::config::AgentConfig;
#[cfg(test)]
use crate::storage::MessageRecord;

/// The stored (JSON) form of content blocks. It is the database's format, so variants and
/// field names never change meaning.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StoredBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// Encoding and decoding of a message's blocks.
pub struct StoredBlocks;

impl StoredBlocks {
    /// Blocks as stored JSON.
    pub fn encode(blocks: &[ContentBlock]) -> String {
        let stored: Vec<StoredBlock> = blocks
            .iter()
            .map(|block| match block.clone() {
                ContentBlock::Text { text } => StoredBlock::Text { text },
                ContentBlock::ToolUse { id, name, input } => StoredBlock::ToolUse { id, name, input },
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } => StoredBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                },
            })
            .collect();
        serde_json::to_string(&stored).expect("content blocks serialize")
    }

    /// Stored JSON as blocks. Unreadable content (which only a hand-edited database can hold)
    /// becomes a text block saying so, rather than failing the whole session.
    pub fn decode(json: &str) -> Vec<ContentBlock> {
        match serde_json::from_str::<Vec<StoredBlock>>(json) {
            Ok(stored) => stored
                .into_iter()
                .map(|block| match block {
                    StoredBlock::Text { text } => ContentBlock::Text { text },
                    StoredBlock::ToolUse { id, name, input } => ContentBlock::ToolUse { id, name, input },
                    StoredBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } => ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    },
                })
                .collect(),
            Err(error) => vec![ContentBlock::Text {
                text: format!("[unreadable stored message: {error}]"),
            }],
        }
    }
}

/// The system prompt: the file's contents when `system_prompt_file` is set and readable, else
/// `system_prompt`.
pub fn system_prompt(config: &AgentConfig) -> String {
    if let Some(path) = &config.system_prompt_file {
        match read_prompt_file(path) {
            Ok(text) if !text.trim().is_empty() => return text,
            Ok(_) => {
                tracing::warn!(file = %path.display(), "agent.system_prompt_file is empty; using agent.system_prompt")
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot use agent.system_prompt_file; using agent.system_prompt");
            }
        }
    }
    config.system_prompt.clone()
}

/// Longest system prompt file, in bytes: far beyond any real prompt, and small enough that no
/// file (a sparse one, a device) can make the daemon allocate without bound.
pub const MAX_PROMPT_FILE_BYTES: u64 = 256 * 1024;

/// Reads a system prompt file: a regular file (never a FIFO, a device or a directory, which could
/// block or never end) of at most [`MAX_PROMPT_FILE_BYTES`], in UTF-8. The error says what is
/// wrong, for `config set` and the log.
pub fn read_prompt_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read as _;
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if metadata.len() > MAX_PROMPT_FILE_BYTES {
        return Err(format!(
            "{} is {} bytes; a system prompt file may have at most {MAX_PROMPT_FILE_BYTES}",
            path.display(),
            metadata.len()
        ));
    }
    // Opened without blocking, checked again on the open file (the path may have been swapped),
    // and read no further than the limit.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let opened = file
        .metadata()
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if !opened.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROMPT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if bytes.len() as u64 > MAX_PROMPT_FILE_BYTES {
        return Err(format!("{} grew past {MAX_PROMPT_FILE_BYTES} bytes", path.display()));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// A rough token count: about four characters per token for English, three to be safe for code
/// and other languages. It decides trimming and budget reservations, where erring high is right.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(3) + 4
}

fn estimate_block(block: &ContentBlock) -> u64 {
    match block {
        ContentBlock::Text { text } => estimate_tokens(text),
        ContentBlock::ToolUse { name, input, .. } => estimate_tokens(name) + estimate_tokens(&input.to_string()),
        ContentBlock::ToolResult { content, .. } => estimate_tokens(content),
    }
}

fn estimate_message(message: &Message) -> u64 {
    message.content.iter().map(estimate_block).sum::<u64>() + 4
}

/// Estimated input tokens of a whole request.
pub fn estimate_request_tokens(request: &ChatRequest<'_>) -> u64 {
    estimate_tokens(&request.system)
        + request
            .tools
            .iter()
            .map(|tool| {
                estimate_tokens(&tool.name)
                    + estimate_tokens(&tool.description)
                    + estimate_tokens(&tool.input_schema.to_string())
            })
            .sum::<u64>()
        + request.messages.iter().map(estimate_message).sum::<u64>()
}

/// A session's conversation in provider form.
#[derive(Debug, Clone, Default)]
pub struct History {
    messages: Vec<Message>,
}

impl History {
    /// The conversation from stored records (oldest first). Tool calls a crash left without
    /// results get a synthetic error result, so the conversation stays valid for the provider.
    /// (Turns read their records into a `histories::Transcript`; this is the reference it is
    /// tested against.)
    #[cfg(test)]
    pub fn from_records(records: &[MessageRecord]) -> Self {
        Self::from_messages(records.iter().map(|record| {
            let role = match record.role.as_str() {
                "assistant" => StoredRole::Assistant,
                "tool" => StoredRole::Tool,
                _ => StoredRole::User,
            };
            (role, StoredBlocks::decode(&record.content_json).into())
        }))
    }

    /// The conversation from messages as they are stored (oldest first): what
    /// [`History::from_records`] makes of them once read back, without reading them back.
    pub fn from_messages(messages: impl IntoIterator<Item = (StoredRole, Arc<[ContentBlock]>)>) -> Self {
        let mut history = Self::default();
        for (role, blocks) in messages {
            match role {
                StoredRole::Assistant => history.push_assistant(blocks),
                StoredRole::Tool => history.push_tool_results(blocks),
                StoredRole::User => history.push_user(blocks),
            }
        }
        history.close_dangling_calls();
        history
    }

    fn push_user(&mut self, blocks: impl Into<Arc<[ContentBlock]>>) {
        self.close_dangling_calls();
        self.messages.push(Message {
            role: Role::User,
            content: blocks.into(),
        });
    }

    /// Appends an answer of the model.
    pub fn push_assistant(&mut self, blocks: impl Into<Arc<[ContentBlock]>>) {
        self.close_dangling_calls();
        self.messages.push(Message {
            role: Role::Assistant,
            content: blocks.into(),
        });
    }

    /// Appends tool results (sent as a user message, as both APIs expect).
    pub fn push_tool_results(&mut self, blocks: impl Into<Arc<[ContentBlock]>>) {
        self.messages.push(Message {
            role: Role::User,
            content: blocks.into(),
        });
    }

    /// Adds error results for tool calls of the last assistant message that have none.
    fn close_dangling_calls(&mut self) {
        let Some(last) = self.messages.last() else {
            return;
        };
        if last.role != Role::Assistant {
            return;
        }
        let missing: Vec<ContentBlock> = last
            .content
            .iter()
            .filter_map(|block| match block {
                ContentBlock::ToolUse { id, .. } => Some(ContentBlock::ToolResult {
                    tool_use_id: id.clone(),
                    content: "not run: the turn was interrupted".to_owned(),
                    is_error: true,
                }),
                _ => None,
            })
            .collect();
        if !missing.is_empty() {
            self.push_tool_results(missing);
        }
    }

    /// The newest messages that fit `budget` estimated tokens (the last message always), starting
    /// at a message of the owner so that no tool result is separated from its call.
    pub fn context(&self, budget: u32) -> &[Message] {
        let budget = u64::from(budget);
        let mut used = 0;
        let mut start = self.messages.len();
        for (index, message) in self.messages.iter().enumerate().rev() {
            let cost = estimate_message(message);
            if start < self.messages.len() && used + cost > budget {
                break;
            }
            used += cost;
            start = index;
        }
        let is_owner_text = |message: &Message| {
            message.role == Role::User
                && !message
                    .content
                    .iter()
                    .any(|block| matches!(block, ContentBlock::ToolResult { .. }))
        };
        let last = self.messages.len().saturating_sub(1);
        while start < last && !is_owner_text(&self.messages[start]) {
            start += 1;
        }
        &self.messages[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(role: &str, blocks: &[ContentBlock]) -> MessageRecord {
        MessageRecord {
            id: String::new(),
            turn_id: String::new(),
            role: role.to_owned(),
            content_json: StoredBlocks::encode(blocks),
            created_at: 0,
        }
    }

    #[test]
    fn a_history_from_messages_is_what_reading_them_back_gives() {
        let text = |text: &str| vec![ContentBlock::Text { text: text.to_owned() }];
        let call = vec![ContentBlock::ToolUse {
            id: "toolu_1".to_owned(),
            name: "http_get".to_owned(),
            input: serde_json::json!({"url": "https://example.com"}),
        }];
        let messages = [
            (StoredRole::User, text("first")),
            (StoredRole::Assistant, call),
            (StoredRole::User, text("a call left without its result")),
            (StoredRole::Assistant, text("an answer")),
            (StoredRole::User, text("the new message")),
        ];
        let records: Vec<MessageRecord> = messages
            .iter()
            .map(|(role, blocks)| record(role.as_str(), blocks))
            .collect();
        let read_back = History::from_records(&records);
        let known = History::from_messages(messages.map(|(role, blocks)| (role, blocks.into())));
        assert_eq!(known.messages, read_back.messages);
        assert!(
            format!("{:?}", known.messages).contains("toolu_1"),
            "the dangling call got its synthetic result in both"
        );
    }

    fn text(text: &str) -> ContentBlock {
        ContentBlock::Text { text: text.to_owned() }
    }

    #[test]
    fn blocks_round_trip_through_storage() {
        let blocks = vec![
            text("hi"),
            ContentBlock::ToolUse {
                id: "t1".into(),
                name: "http_get".into(),
                input: serde_json::json!({"url": "https://example.com"}),
            },
            ContentBlock::ToolResult {
                tool_use_id: "t1".into(),
                content: "200 OK".into(),
                is_error: false,
            },
        ];
        assert_eq!(StoredBlocks::decode(&StoredBlocks::encode(&blocks)), blocks);
        assert!(
            matches!(&StoredBlocks::decode("not json")[0], ContentBlock::Text { text } if text.contains("unreadable"))
        );
    }

    #[test]
    fn a_tool_call_cut_by_a_crash_gets_an_error_result() {
        let call = ContentBlock::ToolUse {
            id: "t1".into(),
            name: "read_file".into(),
            input: serde_json::json!({}),
        };
        let history = History::from_records(&[
            record("user", &[text("read it")]),
            record("assistant", &[call]),
            record("user", &[text("again")]),
        ]);
        let roles: Vec<Role> = history.messages.iter().map(|message| message.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::User, Role::User]);
        assert!(matches!(
            &history.messages[2].content[0],
            ContentBlock::ToolResult { is_error: true, .. }
        ));
    }

    #[test]
    fn trimming_drops_the_oldest_and_never_starts_with_a_tool_result() {
        let long = "x".repeat(3_000); // about 1000 tokens each
        let call = ContentBlock::ToolUse {
            id: "t".into(),
            name: "n".into(),
            input: serde_json::json!({}),
        };
        let result = ContentBlock::ToolResult {
            tool_use_id: "t".into(),
            content: long.clone(),
            is_error: false,
        };
        let history = History::from_records(&[
            record("user", &[text(&long)]),
            record("assistant", &[call]),
            record("tool", &[result]),
            record("assistant", &[text(&long)]),
            record("user", &[text("latest question")]),
        ]);
        let all = history.context(100_000);
        assert_eq!(all.len(), 5);
        // Room for about two long messages: the tool result would lead, so it is dropped too.
        let trimmed = history.context(2_100);
        assert_eq!(trimmed.len(), 1, "{trimmed:?}");
        assert!(matches!(&trimmed[0].content[0], ContentBlock::Text { text } if text == "latest question"));
        // The newest message is kept even when it alone exceeds the budget.
        assert_eq!(history.context(1).len(), 1);
    }

    #[test]
    fn the_system_prompt_file_replaces_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("system.md");
        std::fs::write(&file, "# You are a pirate").unwrap();
        let mut config = AgentConfig::default();
        assert_eq!(system_prompt(&config), config.system_prompt);
        config.system_prompt_file = Some(file);
        assert_eq!(system_prompt(&config), "# You are a pirate");
    }
}
