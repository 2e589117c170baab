//! Token estimates and conversation-history trimming.

use crate::{ChatRequest, Message, MessageRole};

/// Estimated tokens per message for role and framing, on top of its text.
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 4;

/// A rough token count: characters / 4, rounded up; 0 for empty text, at least 1 otherwise.
///
/// Four characters per token is the usual rule of thumb for English with
/// OpenAI-style tokenizers; use it for budgeting, never for billing (bill from
/// the provider's reported usage).
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

/// Estimated tokens of one message: [`MESSAGE_OVERHEAD_TOKENS`] plus its text, and each tool call's name and arguments.
pub fn estimate_message_tokens(message: &Message) -> u64 {
    let calls: u64 = message
        .tool_calls
        .iter()
        .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.arguments.to_string()))
        .sum();
    MESSAGE_OVERHEAD_TOKENS + estimate_tokens(&message.content) + calls
}

/// Estimated input tokens of a whole request: system prompt, messages and tool specs.
pub fn estimate_request_tokens(request: &ChatRequest) -> u64 {
    let system = request.system.as_deref().map_or(0, estimate_tokens);
    let messages: u64 = request.messages.iter().map(estimate_message_tokens).sum();
    let tools: u64 = request
        .tools
        .iter()
        .map(|t| {
            estimate_tokens(&t.name)
                + estimate_tokens(&t.description)
                + estimate_tokens(&t.parameters.to_string())
        })
        .sum();
    system + messages + tools
}

/// Keeps the newest part of a conversation that fits both limits.
///
/// First the last `max_history` messages are kept, then the oldest are
/// dropped until the estimate ([`estimate_message_tokens`]) fits
/// `context_window_tokens - reserved_tokens`. An assistant turn that called
/// tools and the tool results answering it are kept or dropped together, and
/// tool results whose call is not kept are dropped (providers reject them). The
/// result may be empty when nothing fits.
pub fn trim_history(
    history: &[Message],
    max_history: usize,
    context_window_tokens: u64,
    reserved_tokens: u64,
) -> Vec<Message> {
    let budget = context_window_tokens.saturating_sub(reserved_tokens);
    let groups = group_turns(history);

    // Walk from the newest group backwards, keeping whole groups while both limits hold.
    let mut kept_from = groups.len();
    let mut count = 0usize;
    let mut tokens = 0u64;
    for (i, group) in groups.iter().enumerate().rev() {
        if !group.complete {
            break;
        }
        let messages = &history[group.start..group.end];
        let group_tokens: u64 = messages.iter().map(estimate_message_tokens).sum();
        if count + messages.len() > max_history || tokens + group_tokens > budget {
            break;
        }
        count += messages.len();
        tokens += group_tokens;
        kept_from = i;
    }
    let start = groups.get(kept_from).map_or(history.len(), |g| g.start);
    history[start..].to_vec()
}

/// A run of messages that must stay together.
struct Group {
    start: usize,
    end: usize,
    /// False for tool results with no assistant call before them (orphans).
    complete: bool,
}

/// Splits history into groups: an assistant turn with tool calls plus the tool
/// results right after it, or a single other message; orphan tool results are
/// marked incomplete.
fn group_turns(history: &[Message]) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < history.len() {
        let start = i;
        let m = &history[i];
        i += 1;
        let complete = match m.role {
            MessageRole::Assistant if !m.tool_calls.is_empty() => {
                while i < history.len() && history[i].role == MessageRole::Tool {
                    i += 1;
                }
                true
            }
            MessageRole::Tool => {
                while i < history.len() && history[i].role == MessageRole::Tool {
                    i += 1;
                }
                false
            }
            _ => true,
        };
        groups.push(Group {
            start,
            end: i,
            complete,
        });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolCall;
    use serde_json::json;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "calculator".into(),
            arguments: json!({"expression": "1+1"}),
        }
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::user("first question"),                               // 0
            Message::assistant("first answer"),                            // 1
            Message::user("compute twice"),                                // 2
            Message::assistant_tool_calls("", vec![call("a"), call("b")]), // 3
            Message::tool_result("a", "calculator", "2"),                  // 4
            Message::tool_result("b", "calculator", "2"),                  // 5
            Message::assistant("both are 2"),                              // 6
            Message::user("thanks"),                                       // 7
        ]
    }

    #[test]
    fn estimates_tokens() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1); // characters, not bytes
        assert_eq!(estimate_message_tokens(&Message::user("abcd")), 5);
    }

    #[test]
    fn keeps_everything_when_it_fits() {
        let history = conversation();
        assert_eq!(trim_history(&history, 100, 100_000, 1_000), history);
    }

    #[test]
    fn max_history_never_splits_a_tool_call_from_its_results() {
        let history = conversation();
        // The last 3 are 5, 6, 7; 5 is a result whose call (3) would be cut: drop it.
        assert_eq!(trim_history(&history, 3, 100_000, 0), history[6..].to_vec());
        // The last 5 are 3..=7: the call and both results fit together.
        assert_eq!(trim_history(&history, 5, 100_000, 0), history[3..].to_vec());
        // 4 would split the group: only 6 and 7 remain.
        assert_eq!(trim_history(&history, 4, 100_000, 0), history[6..].to_vec());
        assert!(trim_history(&history, 0, 100_000, 0).is_empty());
    }

    #[test]
    fn token_budget_drops_oldest_and_tool_groups_together() {
        let history = conversation();
        let tail: u64 = history[6..].iter().map(estimate_message_tokens).sum();
        let group: u64 = history[3..6].iter().map(estimate_message_tokens).sum();
        // Budget for the tail plus one token less than the tool group: group dropped whole.
        let kept = trim_history(&history, 100, 1000 + tail + group - 1, 1000);
        assert_eq!(kept, history[6..].to_vec());
        // Exactly enough: the group is kept.
        let kept = trim_history(&history, 100, tail + group, 0);
        assert_eq!(kept, history[3..].to_vec());
        // Reserve larger than the window: nothing fits.
        assert!(trim_history(&history, 100, 10, 50).is_empty());
    }

    #[test]
    fn leading_orphan_tool_results_are_dropped() {
        let history = vec![
            Message::tool_result("x", "calculator", "2"),
            Message::user("next"),
        ];
        assert_eq!(trim_history(&history, 10, 10_000, 0), history[1..].to_vec());
    }

    #[test]
    fn request_estimate_counts_everything() {
        let request = ChatRequest {
            model: "m".into(),
            system: Some("abcd".into()),
            messages: vec![Message::user("abcd")],
            ..ChatRequest::default()
        };
        assert_eq!(estimate_request_tokens(&request), 1 + 5);
    }
}
