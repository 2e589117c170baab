//! What an agent is: its definition, validation and system prompt.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use spindle_http::{ApiError, ErrorDetail, from_json};
use spindle_providers::Provider;
use spindle_providers::tools::BUILTIN_TOOLS;

/// Statuses an agent may be given.
pub const STATUSES: &[&str] = &["IDLE", "BUSY", "OFFLINE", "ERROR"];
const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 2_000;
const MAX_INSTRUCTIONS_CHARS: usize = 20_000;
const MAX_TRAITS: usize = 20;
const MAX_STYLE_CHARS: usize = 500;
const MAX_OUTPUT_TOKENS: u32 = 200_000;

/// An agent as the API reads and writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Display name.
    pub name: String,
    /// What the agent is for.
    #[serde(default)]
    pub description: String,
    /// Which model answers, and how.
    pub model_config: ModelConfig,
    /// How it speaks.
    #[serde(default)]
    pub personality: Personality,
    /// Standing instructions, added to the system prompt.
    #[serde(default)]
    pub instructions: String,
    /// Built-in tools it may call.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Conversation memory.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// IDLE, BUSY, OFFLINE or ERROR.
    #[serde(default = "idle")]
    pub status: String,
}

fn idle() -> String {
    "IDLE".into()
}

/// The provider, model and sampling parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `openai`, `anthropic`, `gemini`, `groq` or `openai_compatible`.
    pub provider: String,
    /// The provider's model name.
    pub model: String,
    /// 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Most output tokens per call, 1 to 200 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Above 0, at most 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
}

/// How the agent speaks, rendered into its system prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Personality {
    /// Traits such as "curious", "concise".
    #[serde(default)]
    pub traits: Vec<String>,
    /// Tone of voice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tone: Option<String>,
    /// How it behaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    /// How it writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_style: Option<String>,
}

/// Conversation memory settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Whether turns with a `conversation_id` are remembered.
    #[serde(default)]
    pub enabled: bool,
    /// Most past messages sent with a request, 1 to 200.
    #[serde(default = "default_max_history")]
    pub max_history: u32,
    /// Token budget of the request (history is trimmed to fit), 256 to 2 000 000.
    #[serde(default = "default_context_window")]
    pub context_window_tokens: u64,
}

fn default_max_history() -> u32 {
    20
}

fn default_context_window() -> u64 {
    8_000
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_history: default_max_history(),
            context_window_tokens: default_context_window(),
        }
    }
}

impl AgentSpec {
    /// Reads a spec from JSON: 400 for wrong shapes, then 422 listing every
    /// invalid field with its path.
    pub fn from_json(value: Json) -> Result<Self, ApiError> {
        let spec: Self = from_json(value)?;
        spec.validate()?;
        Ok(spec.normalised())
    }

    /// The provider, known to be valid after [`AgentSpec::from_json`].
    pub fn provider(&self) -> Provider {
        Provider::parse(&self.model_config.provider).unwrap_or(Provider::OpenAi)
    }

    fn normalised(mut self) -> Self {
        self.name = self.name.trim().to_string();
        self
    }

    fn validate(&self) -> Result<(), ApiError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, path: &str, problem: String| {
            if !ok {
                problems.push(ErrorDetail::new(path, problem));
            }
        };
        let name = self.name.trim().chars().count();
        check(
            (1..=MAX_NAME_CHARS).contains(&name),
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        );
        check(
            self.description.chars().count() <= MAX_DESCRIPTION_CHARS,
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        );
        let model = &self.model_config;
        check(
            Provider::parse(&model.provider).is_some(),
            "model_config.provider",
            format!(
                "unknown provider {:?}; expected openai, anthropic, gemini, groq or openai_compatible",
                model.provider
            ),
        );
        check(
            (1..=MAX_NAME_CHARS).contains(&model.model.trim().chars().count()),
            "model_config.model",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        );
        check(
            model.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)),
            "model_config.temperature",
            "must be between 0 and 2".into(),
        );
        check(
            model
                .max_tokens
                .is_none_or(|m| (1..=MAX_OUTPUT_TOKENS).contains(&m)),
            "model_config.max_tokens",
            format!("must be between 1 and {MAX_OUTPUT_TOKENS}"),
        );
        check(
            model.top_p.is_none_or(|p| p > 0.0 && p <= 1.0),
            "model_config.top_p",
            "must be above 0 and at most 1".into(),
        );
        let personality = &self.personality;
        check(
            personality.traits.len() <= MAX_TRAITS,
            "personality.traits",
            format!("at most {MAX_TRAITS} traits"),
        );
        for (i, t) in personality.traits.iter().enumerate() {
            check(
                (1..=100).contains(&t.trim().chars().count()),
                &format!("personality.traits[{i}]"),
                "must be 1 to 100 characters".into(),
            );
        }
        for (field, value) in [
            ("tone", &personality.tone),
            ("behavior", &personality.behavior),
            ("language_style", &personality.language_style),
        ] {
            check(
                value
                    .as_ref()
                    .is_none_or(|v| v.chars().count() <= MAX_STYLE_CHARS),
                &format!("personality.{field}"),
                format!("must be at most {MAX_STYLE_CHARS} characters"),
            );
        }
        check(
            self.instructions.chars().count() <= MAX_INSTRUCTIONS_CHARS,
            "instructions",
            format!("must be at most {MAX_INSTRUCTIONS_CHARS} characters"),
        );
        for (i, tool) in self.tools.iter().enumerate() {
            check(
                BUILTIN_TOOLS.contains(&tool.as_str()),
                &format!("tools[{i}]"),
                format!(
                    "unknown tool {tool:?}; available: {}",
                    BUILTIN_TOOLS.join(", ")
                ),
            );
            check(
                !self.tools[..i].contains(tool),
                &format!("tools[{i}]"),
                format!("tool {tool:?} is listed twice"),
            );
        }
        check(
            (1..=200).contains(&self.memory.max_history),
            "memory.max_history",
            "must be between 1 and 200".into(),
        );
        check(
            (256..=2_000_000).contains(&self.memory.context_window_tokens),
            "memory.context_window_tokens",
            "must be between 256 and 2000000".into(),
        );
        check(
            STATUSES.contains(&self.status.as_str()),
            "status",
            format!("must be one of {}", STATUSES.join(", ")),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation {
                message: "the agent definition is invalid".into(),
                details: problems,
            })
        }
    }

    /// The system prompt, built deterministically from the name, description,
    /// instructions and personality.
    pub fn system_prompt(&self) -> String {
        let mut parts = vec![match self.description.trim() {
            "" => format!("You are {}.", self.name),
            description => format!("You are {}: {description}", self.name),
        }];
        if !self.instructions.trim().is_empty() {
            parts.push(self.instructions.trim().to_string());
        }
        let p = &self.personality;
        let mut style = Vec::new();
        if !p.traits.is_empty() {
            style.push(format!("- Traits: {}", p.traits.join(", ")));
        }
        for (label, value) in [
            ("Tone", &p.tone),
            ("Behavior", &p.behavior),
            ("Language style", &p.language_style),
        ] {
            if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                style.push(format!("- {label}: {value}"));
            }
        }
        if !style.is_empty() {
            parts.push(format!("Personality:\n{}", style.join("\n")));
        }
        parts.join("\n\n")
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`: objects merge, `null`
/// removes a field (so it takes its default again), anything else replaces.
pub fn merge_patch(target: &mut Json, patch: &Json) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Json::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: Json) -> Result<AgentSpec, ApiError> {
        let mut base = json!({"name": "Scout", "model_config": {"provider": "openai", "model": "gpt-4o-mini"}});
        merge_patch(&mut base, &extra);
        AgentSpec::from_json(base)
    }

    fn paths(error: ApiError) -> Vec<String> {
        match error {
            ApiError::Validation { details, .. } => details.into_iter().map(|d| d.path).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let spec = spec(json!({})).unwrap();
        assert_eq!(spec.status, "IDLE");
        assert_eq!(spec.memory, MemoryConfig::default());
        assert!(spec.tools.is_empty());
    }

    #[test]
    fn every_invalid_field_is_reported_with_its_path() {
        let error = spec(json!({
            "name": "",
            "model_config": {"provider": "skynet", "model": "x", "temperature": 3.5, "max_tokens": 0, "top_p": 0},
            "tools": ["calculator", "rm_rf", "calculator"],
            "memory": {"max_history": 0},
            "status": "SLEEPING"
        }))
        .unwrap_err();
        assert_eq!(
            paths(error),
            [
                "name",
                "model_config.provider",
                "model_config.temperature",
                "model_config.max_tokens",
                "model_config.top_p",
                "tools[1]",
                "tools[2]",
                "memory.max_history",
                "status"
            ]
        );
    }

    #[test]
    fn one_past_each_documented_bound_is_refused_at_its_path() {
        // README: `name` 1–200 characters, `max_tokens` 1–200000,
        // `max_history` 1–200, `context_window_tokens` 256–2000000.
        let cases = [
            (json!({"name": "n".repeat(201)}), "name"),
            // Characters, not bytes: 201 two-byte characters.
            (json!({"name": "é".repeat(201)}), "name"),
            (
                json!({"model_config": {"max_tokens": 200_001}}),
                "model_config.max_tokens",
            ),
            (
                json!({"memory": {"max_history": 201}}),
                "memory.max_history",
            ),
            (
                json!({"memory": {"context_window_tokens": 255}}),
                "memory.context_window_tokens",
            ),
            (
                json!({"memory": {"context_window_tokens": 2_000_001}}),
                "memory.context_window_tokens",
            ),
        ];
        for (extra, path) in cases {
            let Err(error) = spec(extra.clone()) else {
                panic!("{extra} is accepted");
            };
            assert_eq!(paths(error), [path], "{extra}");
        }
    }

    #[test]
    fn each_documented_bound_itself_is_accepted() {
        let longest = "é".repeat(200);
        let at_the_top = spec(json!({
            "name": longest,
            "model_config": {"max_tokens": 200_000},
            "memory": {"enabled": true, "max_history": 200, "context_window_tokens": 2_000_000}
        }))
        .expect("the upper bounds are in");
        assert_eq!(at_the_top.name, longest);
        assert_eq!(at_the_top.model_config.max_tokens, Some(200_000));
        assert_eq!(
            at_the_top.memory,
            MemoryConfig {
                enabled: true,
                max_history: 200,
                context_window_tokens: 2_000_000
            }
        );
        let at_the_bottom = spec(json!({
            "name": "n",
            "model_config": {"max_tokens": 1},
            "memory": {"max_history": 1, "context_window_tokens": 256}
        }))
        .expect("the lower bounds are in");
        assert_eq!(at_the_bottom.model_config.max_tokens, Some(1));
        assert_eq!(at_the_bottom.memory.max_history, 1);
        assert_eq!(at_the_bottom.memory.context_window_tokens, 256);
    }

    #[test]
    fn memory_defaults_are_off_20_messages_and_8000_tokens() {
        // No memory at all, an empty one, and one naming only `enabled`.
        for (extra, enabled) in [
            (json!({}), false),
            (json!({"memory": {}}), false),
            (json!({"memory": {"enabled": true}}), true),
        ] {
            let memory = spec(extra.clone())
                .unwrap_or_else(|e| panic!("{extra}: {e:?}"))
                .memory;
            assert_eq!(memory.enabled, enabled, "{extra}");
            assert_eq!(memory.max_history, 20, "{extra}");
            assert_eq!(memory.context_window_tokens, 8000, "{extra}");
        }
        // And that is what the stored definition reads back as.
        let stored = serde_json::to_value(spec(json!({})).unwrap()).unwrap();
        assert_eq!(
            stored["memory"],
            json!({"enabled": false, "max_history": 20, "context_window_tokens": 8000})
        );
    }

    #[test]
    fn wrong_types_and_unknown_fields_are_a_bad_request_at_their_path() {
        let at = |body: Json| match AgentSpec::from_json(body).unwrap_err() {
            ApiError::BadRequest { details, .. } => details[0].path.clone(),
            other => panic!("expected a bad request, got {other:?}"),
        };
        let model = json!({"provider": "openai", "model": "gpt-4o-mini"});
        assert_eq!(at(json!({"model_config": model})), "name");
        assert_eq!(at(json!({"name": "a"})), "model_config");
        assert_eq!(at(json!({"name": 7, "model_config": model})), "name");
        assert_eq!(
            at(json!({"name": "a", "model_config": {"provider": "openai"}})),
            "model_config.model"
        );
        let mut hot = model.clone();
        hot["temperature"] = json!("hot");
        assert_eq!(
            at(json!({"name": "a", "model_config": hot})),
            "model_config.temperature"
        );
        let mut negative = model.clone();
        negative["max_tokens"] = json!(-1);
        assert_eq!(
            at(json!({"name": "a", "model_config": negative})),
            "model_config.max_tokens"
        );
        assert_eq!(
            at(json!({"name": "a", "model_config": model, "tools": "calculator"})),
            "tools"
        );
        assert_eq!(
            at(json!({"name": "a", "model_config": model, "memory": {"max_history": "all"}})),
            "memory.max_history"
        );
        assert_eq!(
            at(json!({"name": "a", "model_config": model, "colour": "red"})),
            "colour"
        );
    }

    #[test]
    fn system_prompt_is_pinned() {
        let spec = spec(json!({
            "description": "finds and qualifies sales leads",
            "instructions": "Always answer in JSON.",
            "personality": {"traits": ["curious", "concise"], "tone": "friendly", "behavior": "asks before assuming", "language_style": "plain English"}
        }))
        .unwrap();
        assert_eq!(
            spec.system_prompt(),
            "You are Scout: finds and qualifies sales leads\n\n\
             Always answer in JSON.\n\n\
             Personality:\n\
             - Traits: curious, concise\n\
             - Tone: friendly\n\
             - Behavior: asks before assuming\n\
             - Language style: plain English"
        );
    }

    #[test]
    fn minimal_system_prompt_names_the_agent() {
        assert_eq!(spec(json!({})).unwrap().system_prompt(), "You are Scout.");
    }

    #[test]
    fn merge_patch_merges_objects_and_null_resets() {
        let mut target = json!({"a": 1, "m": {"x": 1, "y": 2}});
        merge_patch(&mut target, &json!({"a": null, "m": {"y": 3}, "b": [1]}));
        assert_eq!(target, json!({"m": {"x": 1, "y": 3}, "b": [1]}));
    }
}
