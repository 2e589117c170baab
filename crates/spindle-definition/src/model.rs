//! The definition model (nodes, edges, variables), its JSON parsing with paths, the
//! sequential `tasks` form, and the typed configuration of each node type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default `max_iterations` of a loop node.
pub const DEFAULT_MAX_ITERATIONS: u64 = 100;
/// Highest `max_iterations` a loop node may ask for.
pub const MAX_LOOP_ITERATIONS: u64 = 10_000;
/// The source handle taken when a node with `on_error: "route"` fails.
pub const ERROR_HANDLE: &str = "error";
/// The handle a `wait` node takes when its timeout passes before its signal.
pub const TIMEOUT_HANDLE: &str = "timeout";
/// Longest a `wait` node waits for its signal (7 days), and how long one
/// without a timeout waits: a run parked longer is more likely forgotten
/// than still wanted.
pub const MAX_WAIT_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// One thing wrong with a definition, with the JSON path where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Where, e.g. `nodes[2].config.agent_id` (empty for the whole definition).
    pub path: String,
    /// What is wrong, in a sentence.
    pub problem: String,
}

impl Problem {
    /// Builds a problem from a path and a message.
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// A workflow definition in graph form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// Optional display name (kept from the sequential form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The nodes, in definition order.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The edges between nodes.
    #[serde(default)]
    pub edges: Vec<Edge>,
    /// Values templates can read as `variables.<name>`.
    #[serde(default)]
    pub variables: Map<String, Value>,
}

/// A sub-graph: a loop body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// The body's nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The body's edges.
    #[serde(default)]
    pub edges: Vec<Edge>,
}

/// One node of the graph; `config` is kept as JSON, see [`Node::typed_config`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique id, used in edges and as `steps.<id>` in templates.
    pub id: String,
    /// The node type (`trigger`, `agent`, `condition`, …).
    #[serde(rename = "type")]
    pub node_type: String,
    /// Optional display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Type-specific configuration.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// Position in an editor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Retry policy for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// What a failure (after retries) does.
    #[serde(default, skip_serializing_if = "OnError::is_fail")]
    pub on_error: OnError,
    /// Time limit for one attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A node's position in an editor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Horizontal coordinate.
    pub x: f64,
    /// Vertical coordinate.
    pub y: f64,
}

/// How often a failing node is attempted and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts, 1..=10.
    pub max_attempts: u32,
    /// Base backoff between attempts, in milliseconds.
    #[serde(default)]
    pub backoff_ms: u64,
}

/// What happens when a node fails for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The run fails.
    #[default]
    Fail,
    /// The node counts as done (with no output) and the run goes on.
    Continue,
    /// The node is done with outcome `error`; only `error` edges are taken.
    Route,
}

impl OnError {
    fn is_fail(&self) -> bool {
        *self == OnError::Fail
    }
}

/// An edge from `source` to `target`, optionally only for one outcome (`source_handle`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// Optional id; see [`Edge::effective_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Id of the node the edge leaves.
    pub source: String,
    /// Id of the node the edge enters.
    pub target: String,
    /// The outcome of `source` this edge is for (`true`, a switch case, `error`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_handle: Option<String>,
}

impl Edge {
    /// The edge's id, or `"<source>-><target>[:handle]"` when it has none.
    pub fn effective_id(&self) -> String {
        match (&self.id, &self.source_handle) {
            (Some(id), _) => id.clone(),
            (None, Some(handle)) => format!("{}->{}:{handle}", self.source, self.target),
            (None, None) => format!("{}->{}", self.source, self.target),
        }
    }
}

/// A node's configuration, typed by node type.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeConfig {
    /// The run's entry point.
    Trigger(TriggerConfig),
    /// Runs an agent on a rendered prompt.
    Agent(AgentConfig),
    /// Evaluates an expression and takes the `true` or `false` handle.
    Condition(ConditionConfig),
    /// Evaluates an expression and takes the matching case handle or `default`.
    Switch(SwitchConfig),
    /// Runs a body sub-graph for each item or until an expression holds.
    Loop(LoopConfig),
    /// Renders a JSON template as the node's output.
    Transform(TransformConfig),
    /// Calls an HTTP endpoint.
    Http(HttpConfig),
    /// Waits for a duration or until a time.
    Delay(DelayConfig),
    /// Waits for a named signal, with a timeout.
    Wait(WaitConfig),
    /// Produces the run's output.
    Output(OutputConfig),
}

/// The node types this crate knows.
pub const NODE_TYPES: [&str; 10] = [
    "trigger",
    "agent",
    "condition",
    "switch",
    "loop",
    "transform",
    "http",
    "delay",
    "wait",
    "output",
];

/// The `config` fields each node type accepts, or `None` for an unknown type.
pub fn config_fields(node_type: &str) -> Option<&'static [&'static str]> {
    Some(match node_type {
        "trigger" => &["inputs"],
        "agent" => &["agent_id", "prompt", "output_schema", "max_tokens"],
        "condition" => &["expression"],
        "switch" => &["expression", "cases"],
        "loop" => &["mode", "items", "until", "max_iterations", "body"],
        "transform" => &["template"],
        "http" => &["method", "url", "headers", "body", "timeout_ms"],
        "delay" => &["duration_ms", "duration", "until"],
        "wait" => &["signal", "timeout_ms", "timeout"],
        "output" => &["value"],
        _ => return None,
    })
}

/// Config of a `trigger` node: the run inputs it declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriggerConfig {
    /// Declared inputs by name.
    pub inputs: BTreeMap<String, InputSpec>,
}

/// One declared run input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// The JSON type the input must have.
    pub input_type: InputType,
    /// Whether the run must provide it.
    pub required: bool,
}

/// JSON type of a declared input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    /// A JSON string.
    String,
    /// A JSON number.
    Number,
    /// A JSON boolean.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

/// Config of an `agent` node.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The agent to run.
    pub agent_id: String,
    /// Prompt template.
    pub prompt: String,
    /// Optional JSON schema for structured output.
    pub output_schema: Option<Value>,
    /// Optional cap on generated tokens.
    pub max_tokens: Option<u64>,
}

/// Config of a `condition` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionConfig {
    /// Expression whose truthiness picks the handle.
    pub expression: String,
}

/// Config of a `switch` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Expression whose value (as a string) picks the case.
    pub expression: String,
    /// The cases, each a handle; `default` is taken when none matches.
    pub cases: Vec<String>,
}

/// How a loop repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopMode {
    /// Once per item of the `items` list.
    ForEach,
    /// Until the `until` expression is truthy.
    RepeatUntil,
}

/// Config of a `loop` node.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// For-each or repeat-until.
    pub mode: LoopMode,
    /// Expression giving the list (for-each).
    pub items: Option<String>,
    /// Expression ending the loop (repeat-until), evaluated after each iteration.
    pub until: Option<String>,
    /// Iteration limit (default 100, at most 10 000).
    pub max_iterations: u64,
    /// The body sub-graph run on each iteration.
    pub body: Graph,
}

/// Config of a `transform` node.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformConfig {
    /// JSON template rendered as the output.
    pub template: Value,
}

/// HTTP method of an `http` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

/// Config of an `http` node.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Method.
    pub method: HttpMethod,
    /// URL template.
    pub url: String,
    /// Header templates.
    pub headers: BTreeMap<String, String>,
    /// Optional JSON body template.
    pub body: Option<Value>,
    /// Optional request timeout, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Config of a `delay` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelayConfig {
    /// Wait this many milliseconds.
    Duration(u64),
    /// Wait until this rendered RFC 3339 time.
    Until(String),
}

/// Config of a `wait` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitConfig {
    /// Name of the signal that resumes the run.
    pub signal: String,
    /// How long to wait before timing out, in milliseconds, as written
    /// (`timeout_ms` or `timeout`), or [`MAX_WAIT_MS`] when it gives none.
    pub timeout_ms: u64,
}

impl WaitConfig {
    /// When a wait parked at `now` (Unix milliseconds) times out: after its
    /// timeout, but never later than [`MAX_WAIT_MS`], also for a definition
    /// stored before that limit was checked.
    pub fn deadline(&self, now: i64) -> i64 {
        let wait = self.timeout_ms.min(MAX_WAIT_MS);
        now.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX))
    }
}

/// Config of an `output` node.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    /// JSON template rendered as the run's output.
    pub value: Value,
}

impl NodeConfig {
    /// The handles this node's outcomes produce, besides `error`.
    pub fn handles(&self) -> Vec<String> {
        match self {
            NodeConfig::Condition(_) => vec!["true".into(), "false".into()],
            NodeConfig::Wait(_) => vec![TIMEOUT_HANDLE.into()],
            NodeConfig::Switch(s) => {
                let mut handles = s.cases.clone();
                handles.push("default".into());
                handles
            }
            _ => Vec::new(),
        }
    }

    /// The template strings (`is_expression == false`) and bare expressions in this
    /// config, each with its path below the node's `config` (e.g. `headers.Authorization`).
    /// Loop bodies are not included.
    pub fn strings(&self) -> Vec<ConfigString<'_>> {
        let mut out = Vec::new();
        match self {
            NodeConfig::Trigger(_) => {}
            NodeConfig::Agent(a) => out.push(ConfigString::template("prompt", &a.prompt)),
            NodeConfig::Condition(c) => {
                out.push(ConfigString::expression("expression", &c.expression))
            }
            NodeConfig::Switch(s) => {
                out.push(ConfigString::expression("expression", &s.expression))
            }
            NodeConfig::Loop(l) => {
                if let Some(items) = &l.items {
                    out.push(ConfigString::expression("items", items));
                }
                if let Some(until) = &l.until {
                    out.push(ConfigString::expression("until", until));
                }
            }
            NodeConfig::Transform(t) => json_strings("template".into(), &t.template, &mut out),
            NodeConfig::Http(h) => {
                out.push(ConfigString::template("url", &h.url));
                for (name, value) in &h.headers {
                    out.push(ConfigString {
                        path: format!("headers.{name}"),
                        text: value,
                        is_expression: false,
                    });
                }
                if let Some(body) = &h.body {
                    json_strings("body".into(), body, &mut out);
                }
            }
            NodeConfig::Delay(DelayConfig::Until(until)) => {
                out.push(ConfigString::template("until", until))
            }
            NodeConfig::Delay(DelayConfig::Duration(_)) | NodeConfig::Wait(_) => {}
            NodeConfig::Output(o) => json_strings("value".into(), &o.value, &mut out),
        }
        out
    }
}

/// A template or expression found in a node's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigString<'a> {
    /// Path below the node's `config`.
    pub path: String,
    /// The text.
    pub text: &'a str,
    /// True for a bare expression, false for a `{{ … }}` template.
    pub is_expression: bool,
}

impl<'a> ConfigString<'a> {
    fn template(path: &str, text: &'a str) -> Self {
        Self {
            path: path.into(),
            text,
            is_expression: false,
        }
    }
    fn expression(path: &str, text: &'a str) -> Self {
        Self {
            path: path.into(),
            text,
            is_expression: true,
        }
    }
}

fn json_strings<'a>(path: String, value: &'a Value, out: &mut Vec<ConfigString<'a>>) {
    match value {
        Value::String(s) => out.push(ConfigString {
            path,
            text: s,
            is_expression: false,
        }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                json_strings(format!("{path}[{i}]"), item, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                json_strings(format!("{path}.{k}"), v, out);
            }
        }
        _ => {}
    }
}

impl Node {
    /// Parses this node's `config` for its type; `path` is the node's own path
    /// (`nodes[2]`), used to name problems (`nodes[2].config.agent_id`).
    pub fn typed_config(&self, path: &str) -> Result<NodeConfig, Vec<Problem>> {
        parse_node_config(&self.node_type, &self.config, path)
    }
}

/// Reads fields of a JSON object, recording problems with their paths.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    path: String,
    problems: Vec<Problem>,
}

impl<'a> Fields<'a> {
    fn new(object: &'a Map<String, Value>, path: String) -> Self {
        Self {
            object,
            path,
            problems: Vec::new(),
        }
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.at(key);
        self.problems.push(Problem::new(path, message));
    }

    fn required(&mut self, key: &str) -> Option<&'a Value> {
        let value = self.object.get(key).filter(|v| !v.is_null());
        if value.is_none() {
            self.problem(key, "is required");
        }
        value
    }

    fn optional_str(&mut self, key: &str) -> Option<String> {
        match self.object.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problem(key, "must be a string");
                None
            }
        }
    }

    fn required_str(&mut self, key: &str) -> Option<String> {
        match self.required(key)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.problem(key, "must not be empty");
                None
            }
            _ => {
                self.problem(key, "must be a string");
                None
            }
        }
    }

    fn optional_u64(&mut self, key: &str) -> Option<u64> {
        match self.object.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n),
                None => {
                    self.problem(key, "must be a non-negative integer");
                    None
                }
            },
        }
    }

    fn required_u64(&mut self, key: &str) -> Option<u64> {
        self.required(key)?;
        self.optional_u64(key)
    }

    /// An ISO 8601 duration (`PT30S`, `P1DT12H`), in whole milliseconds.
    fn optional_iso_duration(&mut self, key: &str) -> Option<u64> {
        let text = self.optional_str(key)?;
        match iso_duration_ms(&text) {
            Ok(ms) => Some(ms),
            Err(problem) => {
                self.problem(key, problem);
                None
            }
        }
    }

    /// One length of time given as milliseconds (`ms_key`) or as an ISO 8601
    /// duration (`iso_key`): at most one of them, `None` for neither.
    fn either_duration(&mut self, ms_key: &str, iso_key: &str) -> Option<u64> {
        let given = |key: &str| self.object.get(key).is_some_and(|v| !v.is_null());
        if given(ms_key) && given(iso_key) {
            let message = format!(
                "give `{ms_key}` (milliseconds) or `{iso_key}` (an ISO 8601 duration such as PT30S), not both"
            );
            self.problem("", message);
            return None;
        }
        if given(iso_key) {
            self.optional_iso_duration(iso_key)
        } else {
            self.optional_u64(ms_key)
        }
    }

    fn optional_object(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        match self.object.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                self.problem(key, "must be an object");
                None
            }
        }
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, Vec<Problem>> {
        match value {
            Some(v) if self.problems.is_empty() => Ok(v),
            _ if self.problems.is_empty() => Err(vec![Problem::new(self.path, "is invalid")]),
            _ => Err(self.problems),
        }
    }
}

/// Reads an ISO 8601 duration such as `PT30S`, `PT1H30M` or `P1D` as whole
/// milliseconds (a fraction of a millisecond is dropped). Days and weeks
/// count 24 hours each; years and months have no fixed length, so a duration
/// with them is refused, as is a negative one.
pub fn iso_duration_ms(text: &str) -> Result<u64, String> {
    const EXAMPLES: &str = "an ISO 8601 duration such as PT30S, PT5M or P1D";
    static PARSER: jiff::fmt::temporal::SpanParser = jiff::fmt::temporal::SpanParser::new();
    let span = PARSER
        .parse_span(text.trim())
        .map_err(|_| format!("must be {EXAMPLES}"))?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(format!(
            "years and months have no fixed length; use weeks, days or smaller units ({EXAMPLES})"
        ));
    }
    if span.is_negative() {
        return Err("must not be negative".into());
    }
    let duration = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("is too long; must be {EXAMPLES}"))?;
    u64::try_from(duration.as_millis()).map_err(|_| format!("is too long; must be {EXAMPLES}"))
}

/// Parses a node's config for `node_type`; `node_path` is like `nodes[2]`.
pub fn parse_node_config(
    node_type: &str,
    config: &Map<String, Value>,
    node_path: &str,
) -> Result<NodeConfig, Vec<Problem>> {
    let mut f = Fields::new(config, format!("{node_path}.config"));
    let parsed = match node_type {
        "trigger" => parse_trigger(&mut f).map(NodeConfig::Trigger),
        "agent" => {
            let agent_id = f.required_str("agent_id");
            let prompt = f.required_str("prompt");
            let output_schema = match config.get("output_schema") {
                None | Some(Value::Null) => None,
                Some(v @ Value::Object(_)) => Some(v.clone()),
                Some(_) => {
                    f.problem("output_schema", "must be a JSON schema object");
                    None
                }
            };
            let max_tokens = f.optional_u64("max_tokens");
            match (agent_id, prompt) {
                (Some(agent_id), Some(prompt)) => Some(NodeConfig::Agent(AgentConfig {
                    agent_id,
                    prompt,
                    output_schema,
                    max_tokens,
                })),
                _ => None,
            }
        }
        "condition" => f
            .required_str("expression")
            .map(|expression| NodeConfig::Condition(ConditionConfig { expression })),
        "switch" => parse_switch(&mut f).map(NodeConfig::Switch),
        "loop" => parse_loop(&mut f).map(NodeConfig::Loop),
        "transform" => f.required("template").map(|t| {
            NodeConfig::Transform(TransformConfig {
                template: t.clone(),
            })
        }),
        "http" => parse_http(&mut f).map(NodeConfig::Http),
        "delay" => {
            let duration = f.either_duration("duration_ms", "duration");
            let until = f.optional_str("until");
            match (duration, until) {
                (Some(ms), None) => Some(NodeConfig::Delay(DelayConfig::Duration(ms))),
                (None, Some(until)) => Some(NodeConfig::Delay(DelayConfig::Until(until))),
                (Some(_), Some(_)) => {
                    f.problem(
                        "",
                        "give a duration (`duration_ms` or `duration`) or `until`, not both",
                    );
                    None
                }
                (None, None) if f.problems.is_empty() => {
                    f.problem(
                        "duration_ms",
                        "is required (or `duration`, an ISO 8601 duration such as PT30S, or `until`, a time)",
                    );
                    None
                }
                (None, None) => None,
            }
        }
        "wait" => {
            let signal = f.required_str("signal");
            let timeout_ms = f.either_duration("timeout_ms", "timeout");
            let timeout_given = ["timeout_ms", "timeout"]
                .iter()
                .any(|key| config.get(*key).is_some_and(|v| !v.is_null()));
            match (signal, timeout_ms) {
                (Some(signal), Some(timeout_ms)) => {
                    Some(NodeConfig::Wait(WaitConfig { signal, timeout_ms }))
                }
                (Some(signal), None) if !timeout_given => Some(NodeConfig::Wait(WaitConfig {
                    signal,
                    timeout_ms: MAX_WAIT_MS,
                })),
                _ => None,
            }
        }
        "output" => f
            .required("value")
            .map(|v| NodeConfig::Output(OutputConfig { value: v.clone() })),
        other => {
            return Err(vec![Problem::new(
                format!("{node_path}.type"),
                format!(
                    "unknown node type `{other}` (expected one of {})",
                    NODE_TYPES.join(", ")
                ),
            )]);
        }
    };
    // `f.problem("", …)` produced a trailing dot; tidy it.
    for p in &mut f.problems {
        if let Some(stripped) = p.path.strip_suffix('.') {
            p.path = stripped.to_string();
        }
    }
    f.finish(parsed)
}

fn parse_trigger(f: &mut Fields<'_>) -> Option<TriggerConfig> {
    let mut config = TriggerConfig::default();
    let Some(inputs) = f.optional_object("inputs") else {
        return Some(config);
    };
    for (name, spec) in inputs {
        let path = format!("{}.inputs.{name}", f.path);
        let Value::Object(spec) = spec else {
            f.problems.push(Problem::new(path, "must be an object"));
            continue;
        };
        let input_type = match spec.get("type").and_then(Value::as_str) {
            Some("string") => InputType::String,
            Some("number") => InputType::Number,
            Some("boolean") => InputType::Boolean,
            Some("object") => InputType::Object,
            Some("array") => InputType::Array,
            _ => {
                f.problems.push(Problem::new(
                    format!("{path}.type"),
                    "must be one of string, number, boolean, object, array",
                ));
                continue;
            }
        };
        let required = match spec.get("required") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                f.problems.push(Problem::new(
                    format!("{path}.required"),
                    "must be a boolean",
                ));
                false
            }
        };
        config.inputs.insert(
            name.clone(),
            InputSpec {
                input_type,
                required,
            },
        );
    }
    Some(config)
}

fn parse_switch(f: &mut Fields<'_>) -> Option<SwitchConfig> {
    let expression = f.required_str("expression");
    let mut cases = Vec::new();
    match f.required("cases") {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{}.cases[{i}]", f.path);
                match item.as_str() {
                    Some("") => f.problems.push(Problem::new(path, "must not be empty")),
                    Some("default") | Some(ERROR_HANDLE) => f.problems.push(Problem::new(
                        path,
                        "`default` and `error` are reserved handle names",
                    )),
                    Some(case) if cases.iter().any(|c| c == case) => f
                        .problems
                        .push(Problem::new(path, format!("duplicate case `{case}`"))),
                    Some(case) => cases.push(case.to_string()),
                    None => f.problems.push(Problem::new(path, "must be a string")),
                }
            }
        }
        Some(_) => f.problem("cases", "must be a list of strings"),
        None => {}
    }
    Some(SwitchConfig {
        expression: expression?,
        cases,
    })
}

fn parse_loop(f: &mut Fields<'_>) -> Option<LoopConfig> {
    let given = |key: &str| f.object.get(key).is_some_and(|v| !v.is_null());
    let (has_items, has_until) = (given("items"), given("until"));
    let mode = match f.object.get("mode").filter(|m| !m.is_null()) {
        Some(mode) => match mode.as_str() {
            Some("for_each") => Some(LoopMode::ForEach),
            Some("repeat_until") => Some(LoopMode::RepeatUntil),
            _ => {
                f.problem("mode", "must be `for_each` or `repeat_until`");
                None
            }
        },
        // Without a mode, what the loop gives says what it is.
        None => match (has_items, has_until) {
            (true, false) => Some(LoopMode::ForEach),
            (false, true) => Some(LoopMode::RepeatUntil),
            (true, true) => {
                f.problem(
                    "",
                    "give `items` (a for-each loop) or `until` (a repeat-until loop), or say which with `mode` (`for_each` or `repeat_until`)",
                );
                None
            }
            (false, false) => {
                f.problem(
                    "items",
                    "is required: `items` (a list to run the body for) or `until` (an expression that ends a repeat-until loop)",
                );
                None
            }
        },
    };
    let (items, until) = match mode {
        Some(LoopMode::ForEach) => (f.required_str("items"), f.optional_str("until")),
        Some(LoopMode::RepeatUntil) => (f.optional_str("items"), f.required_str("until")),
        None => (f.optional_str("items"), f.optional_str("until")),
    };
    let max_iterations = f
        .optional_u64("max_iterations")
        .unwrap_or(DEFAULT_MAX_ITERATIONS);
    if max_iterations == 0 || max_iterations > MAX_LOOP_ITERATIONS {
        f.problem(
            "max_iterations",
            format!("must be between 1 and {MAX_LOOP_ITERATIONS}"),
        );
    }
    let body_path = f.at("body");
    let body = match f.required("body") {
        Some(Value::Object(body)) => {
            let (nodes, edges, problems) =
                parse_graph(body.get("nodes"), body.get("edges"), &body_path);
            f.problems.extend(problems);
            Some(Graph { nodes, edges })
        }
        Some(_) => {
            f.problem("body", "must be an object with nodes and edges");
            None
        }
        None => None,
    };
    Some(LoopConfig {
        mode: mode?,
        items,
        until,
        max_iterations,
        body: body?,
    })
}

fn parse_http(f: &mut Fields<'_>) -> Option<HttpConfig> {
    let method = match f.required("method").map(|m| m.as_str()) {
        Some(Some(m)) => match m.to_ascii_uppercase().as_str() {
            "GET" => Some(HttpMethod::Get),
            "POST" => Some(HttpMethod::Post),
            "PUT" => Some(HttpMethod::Put),
            "PATCH" => Some(HttpMethod::Patch),
            "DELETE" => Some(HttpMethod::Delete),
            _ => {
                f.problem("method", "must be GET, POST, PUT, PATCH or DELETE");
                None
            }
        },
        Some(None) => {
            f.problem("method", "must be a string");
            None
        }
        None => None,
    };
    let url = f.required_str("url");
    let mut headers = BTreeMap::new();
    if let Some(map) = f.optional_object("headers") {
        for (name, value) in map {
            match value.as_str() {
                Some(v) => {
                    headers.insert(name.clone(), v.to_string());
                }
                None => {
                    let path = format!("{}.headers.{name}", f.path);
                    f.problems.push(Problem::new(path, "must be a string"));
                }
            }
        }
    }
    let body = f.object.get("body").cloned();
    let timeout_ms = f.optional_u64("timeout_ms");
    Some(HttpConfig {
        method: method?,
        url: url?,
        headers,
        body,
        timeout_ms,
    })
}

/// Parses `nodes` and `edges` arrays (of a definition or a loop body) with paths below
/// `prefix` (empty for the top level). Returns what could be parsed and the problems.
pub(crate) fn parse_graph(
    nodes: Option<&Value>,
    edges: Option<&Value>,
    prefix: &str,
) -> (Vec<Node>, Vec<Edge>, Vec<Problem>) {
    let at = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    let mut problems = Vec::new();
    let mut parsed_nodes = Vec::new();
    match nodes {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(node) = parse_node(item, &at(&format!("nodes[{i}]")), &mut problems) {
                    parsed_nodes.push(node);
                }
            }
        }
        None => problems.push(Problem::new(at("nodes"), "is required")),
        Some(_) => problems.push(Problem::new(at("nodes"), "must be a list of nodes")),
    }
    let mut parsed_edges = Vec::new();
    match edges {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(edge) = parse_edge(item, &at(&format!("edges[{i}]")), &mut problems) {
                    parsed_edges.push(edge);
                }
            }
        }
        Some(_) => problems.push(Problem::new(at("edges"), "must be a list of edges")),
    }
    (parsed_nodes, parsed_edges, problems)
}

fn parse_node(value: &Value, path: &str, problems: &mut Vec<Problem>) -> Option<Node> {
    let Value::Object(object) = value else {
        problems.push(Problem::new(path, "must be an object"));
        return None;
    };
    let mut f = Fields::new(object, path.to_string());
    let id = f.required_str("id");
    let node_type = f.required_str("type");
    let name = f.optional_str("name");
    let config = f.optional_object("config").cloned().unwrap_or_default();
    let position = match object.get("position") {
        None | Some(Value::Null) => None,
        Some(p) => match (
            p.get("x").and_then(Value::as_f64),
            p.get("y").and_then(Value::as_f64),
        ) {
            (Some(x), Some(y)) => Some(Position { x, y }),
            _ => {
                f.problem("position", "must be an object with numeric x and y");
                None
            }
        },
    };
    let retry = match f.optional_object("retry") {
        None => None,
        Some(retry) => {
            let mut r = Fields::new(retry, f.at("retry"));
            let max_attempts = r.required_u64("max_attempts");
            if let Some(n) = max_attempts
                && !(1..=10).contains(&n)
            {
                r.problem("max_attempts", "must be between 1 and 10");
            }
            let backoff_ms = r.optional_u64("backoff_ms").unwrap_or(0);
            f.problems.append(&mut r.problems);
            max_attempts.map(|n| RetryPolicy {
                max_attempts: n.min(u64::from(u32::MAX)) as u32,
                backoff_ms,
            })
        }
    };
    let on_error = match object.get("on_error") {
        None | Some(Value::Null) => OnError::Fail,
        Some(v) => match v.as_str() {
            Some("fail") => OnError::Fail,
            Some("continue") => OnError::Continue,
            Some("route") => OnError::Route,
            _ => {
                f.problem("on_error", "must be `fail`, `continue` or `route`");
                OnError::Fail
            }
        },
    };
    let timeout_ms = f.optional_u64("timeout_ms");
    problems.append(&mut f.problems);
    Some(Node {
        id: id?,
        node_type: node_type?,
        name,
        config,
        position,
        retry,
        on_error,
        timeout_ms,
    })
}

fn parse_edge(value: &Value, path: &str, problems: &mut Vec<Problem>) -> Option<Edge> {
    let Value::Object(object) = value else {
        problems.push(Problem::new(path, "must be an object"));
        return None;
    };
    let mut f = Fields::new(object, path.to_string());
    let id = f.optional_str("id");
    let source = f.required_str("source");
    let target = f.required_str("target");
    let source_handle = f.optional_str("source_handle");
    problems.append(&mut f.problems);
    Some(Edge {
        id,
        source: source?,
        target: target?,
        source_handle,
    })
}

/// Parses a definition in graph form (`nodes`, `edges`, `variables`) or sequential form
/// (`tasks`), reporting every shape problem with its path.
pub fn parse_definition(json: &Value) -> Result<Definition, Vec<Problem>> {
    let Value::Object(object) = json else {
        return Err(vec![Problem::new("", "a definition must be a JSON object")]);
    };
    let mut f = Fields::new(object, String::new());
    let name = f.optional_str("name");
    let mut problems = std::mem::take(&mut f.problems);
    if object.contains_key("tasks") && !object.contains_key("nodes") {
        return match parse_tasks(&object["tasks"]) {
            Ok(mut definition) if problems.is_empty() => {
                definition.name = name;
                Ok(definition)
            }
            Ok(_) => Err(problems),
            Err(mut more) => {
                problems.append(&mut more);
                Err(problems)
            }
        };
    }
    let (nodes, edges, mut graph_problems) =
        parse_graph(object.get("nodes"), object.get("edges"), "");
    problems.append(&mut graph_problems);
    let variables = match object.get("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(v)) => v.clone(),
        Some(_) => {
            problems.push(Problem::new("variables", "must be an object"));
            Map::new()
        }
    };
    if problems.is_empty() {
        Ok(Definition {
            name,
            nodes,
            edges,
            variables,
        })
    } else {
        Err(problems)
    }
}

/// Converts the sequential form's `tasks` into a linear graph:
/// `trigger` → `task_1` … `task_n` (agent nodes) → `output`.
fn parse_tasks(tasks: &Value) -> Result<Definition, Vec<Problem>> {
    let Value::Array(tasks) = tasks else {
        return Err(vec![Problem::new("tasks", "must be a list of tasks")]);
    };
    if tasks.is_empty() {
        return Err(vec![Problem::new("tasks", "must not be empty")]);
    }
    let mut problems = Vec::new();
    let mut nodes = vec![Node {
        id: "trigger".into(),
        node_type: "trigger".into(),
        ..Node::default()
    }];
    for (i, task) in tasks.iter().enumerate() {
        let path = format!("tasks[{i}]");
        let Value::Object(task) = task else {
            problems.push(Problem::new(path, "must be an object"));
            continue;
        };
        let mut f = Fields::new(task, path);
        let agent = f.required_str("agent");
        let default_input = if i == 0 {
            "{{ trigger }}"
        } else {
            "{{ previous_output }}"
        };
        // An object or list input (the shape earlier systems used, e.g.
        // `{"content": "{{previous_output}}", "platforms": [...]}`) is
        // rendered by a transform node of its own, so each value is
        // rendered (and escaped) before the agent gets it as JSON text.
        let input = match task.get("input") {
            Some(structured @ (Value::Object(_) | Value::Array(_))) => {
                let mut template = Map::new();
                template.insert("template".into(), structured.clone());
                nodes.push(Node {
                    id: format!("task_{}_input", i + 1),
                    node_type: "transform".into(),
                    config: template,
                    ..Node::default()
                });
                "{{ previous_output | json }}".to_string()
            }
            _ => f
                .optional_str("input")
                .unwrap_or_else(|| default_input.into()),
        };
        problems.append(&mut f.problems);
        let mut config = Map::new();
        config.insert("agent_id".into(), Value::String(agent.unwrap_or_default()));
        config.insert("prompt".into(), Value::String(input));
        nodes.push(Node {
            id: format!("task_{}", i + 1),
            node_type: "agent".into(),
            config,
            ..Node::default()
        });
    }
    let mut output_config = Map::new();
    output_config.insert(
        "value".into(),
        Value::String("{{ previous_output }}".into()),
    );
    nodes.push(Node {
        id: "output".into(),
        node_type: "output".into(),
        config: output_config,
        ..Node::default()
    });
    let edges = nodes
        .windows(2)
        .map(|pair| Edge {
            id: None,
            source: pair[0].id.clone(),
            target: pair[1].id.clone(),
            source_handle: None,
        })
        .collect();
    if problems.is_empty() {
        Ok(Definition {
            name: None,
            nodes,
            edges,
            variables: Map::new(),
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_task_input_is_rendered_then_sent_as_json_text() {
        let def = parse_definition(&json!({"tasks": [
            {"agent": "seo", "input": {"content": "{{previous_output}}", "keywords": ["ai"]}}
        ]}))
        .unwrap();
        let ids: Vec<_> = def.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["trigger", "task_1_input", "task_1", "output"]);
        let context = json!({"previous_output": "line one\n\"quoted\" <b>"});
        let input = crate::render(&def.nodes[1].config["template"], &context).unwrap();
        let prompt = crate::render(
            &def.nodes[2].config["prompt"],
            &json!({"previous_output": input}),
        );
        assert_eq!(
            prompt.unwrap(),
            json!(r#"{"content":"line one\n\"quoted\" <b>","keywords":["ai"]}"#)
        );
    }

    #[test]
    fn sequential_form_becomes_a_linear_graph() {
        let def = parse_definition(&json!({
            "name": "pipeline",
            "tasks": [{"agent": "writer", "input": "Write about {{ trigger.topic }}"}, {"agent": "editor"}]
        }))
        .unwrap();
        assert_eq!(def.name.as_deref(), Some("pipeline"));
        let ids: Vec<_> = def.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["trigger", "task_1", "task_2", "output"]);
        assert_eq!(
            def.nodes[1].config["prompt"],
            json!("Write about {{ trigger.topic }}")
        );
        assert_eq!(
            def.nodes[2].config["prompt"],
            json!("{{ previous_output }}")
        );
        assert_eq!(def.nodes[2].config["agent_id"], json!("editor"));
        assert_eq!(def.nodes[3].config["value"], json!("{{ previous_output }}"));
        let edges: Vec<_> = def.edges.iter().map(Edge::effective_id).collect();
        assert_eq!(
            edges,
            ["trigger->task_1", "task_1->task_2", "task_2->output"]
        );
        let first = parse_definition(&json!({"tasks": [{"agent": "a"}]})).unwrap();
        assert_eq!(first.nodes[1].config["prompt"], json!("{{ trigger }}"));
    }

    #[test]
    fn sequential_form_problems_have_paths() {
        let problems =
            parse_definition(&json!({"tasks": [{"agent": "a"}, {"input": "x"}, 3]})).unwrap_err();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["tasks[1].agent", "tasks[2]"]);
        assert!(parse_definition(&json!({"tasks": []})).is_err());
    }

    #[test]
    fn graph_shape_problems_have_paths() {
        let problems = parse_definition(&json!({
            "nodes": [{"id": "t", "type": "trigger"}, {"type": "agent"}, {"id": "x", "type": "agent", "retry": {"max_attempts": 11}, "on_error": "explode"}],
            "edges": [{"source": "t"}],
            "variables": []
        }))
        .unwrap_err();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "nodes[1].id",
                "nodes[2].retry.max_attempts",
                "nodes[2].on_error",
                "edges[0].target",
                "variables"
            ]
        );
        assert_eq!(parse_definition(&json!([])).unwrap_err()[0].path, "");
        assert_eq!(parse_definition(&json!({})).unwrap_err()[0].path, "nodes");
    }

    #[test]
    fn definitions_round_trip_through_serde() {
        let json = json!({
            "nodes": [
                {"id": "t", "type": "trigger", "config": {}, "position": {"x": 1.0, "y": 2.0}},
                {"id": "a", "type": "agent", "config": {"agent_id": "x", "prompt": "hi"}, "retry": {"max_attempts": 3, "backoff_ms": 100}, "on_error": "route", "timeout_ms": 5}
            ],
            "edges": [{"source": "t", "target": "a"}],
            "variables": {"region": "eu"}
        });
        let def = parse_definition(&json).unwrap();
        assert_eq!(serde_json::to_value(&def).unwrap(), json);
        let back: Definition = serde_json::from_value(json).unwrap();
        assert_eq!(back, def);
    }

    #[test]
    fn edge_ids_default_from_endpoints() {
        let mut e = Edge {
            id: None,
            source: "a".into(),
            target: "b".into(),
            source_handle: Some("true".into()),
        };
        assert_eq!(e.effective_id(), "a->b:true");
        e.id = Some("e1".into());
        assert_eq!(e.effective_id(), "e1");
    }

    fn config(node_type: &str, config: Value) -> Result<NodeConfig, Vec<Problem>> {
        parse_node_config(node_type, config.as_object().unwrap(), "nodes[0]")
    }

    #[test]
    fn node_configs_parse_and_report_paths() {
        assert!(
            matches!(config("trigger", json!({"inputs": {"lead": {"type": "object", "required": true}}})), Ok(NodeConfig::Trigger(t)) if t.inputs["lead"].required)
        );
        assert_eq!(
            config("trigger", json!({"inputs": {"x": {"type": "date"}}})).unwrap_err()[0].path,
            "nodes[0].config.inputs.x.type"
        );
        assert_eq!(
            config("agent", json!({"prompt": "p"})).unwrap_err()[0].path,
            "nodes[0].config.agent_id"
        );
        assert_eq!(
            config("bogus", json!({})).unwrap_err()[0].path,
            "nodes[0].type"
        );
        let switch = config("switch", json!({"expression": "x", "cases": ["a", "b"]})).unwrap();
        assert_eq!(switch.handles(), ["a", "b", "default"]);
        assert_eq!(
            config("switch", json!({"expression": "x", "cases": ["a", "a"]})).unwrap_err()[0].path,
            "nodes[0].config.cases[1]"
        );
        assert!(
            matches!(config("http", json!({"method": "post", "url": "https://x", "headers": {"A": "{{ x }}"}})), Ok(NodeConfig::Http(h)) if h.method == HttpMethod::Post)
        );
        assert_eq!(
            config("http", json!({"method": "TRACE", "url": "u"})).unwrap_err()[0].path,
            "nodes[0].config.method"
        );
        assert_eq!(
            config("delay", json!({"duration_ms": 5})).unwrap(),
            NodeConfig::Delay(DelayConfig::Duration(5))
        );
        assert!(matches!(
            config("delay", json!({"until": "{{ trigger.at }}"})),
            Ok(NodeConfig::Delay(DelayConfig::Until(_)))
        ));
        assert_eq!(
            config("delay", json!({})).unwrap_err()[0].path,
            "nodes[0].config.duration_ms"
        );
        assert_eq!(
            config("delay", json!({"duration_ms": 1, "until": "x"})).unwrap_err()[0].path,
            "nodes[0].config"
        );
        assert_eq!(
            config("wait", json!({"signal": "approve", "timeout_ms": "soon"})).unwrap_err()[0].path,
            "nodes[0].config.timeout_ms"
        );
        assert!(config("output", json!({"value": null})).is_err());
        assert!(config("transform", json!({"template": {"a": "{{ x }}"}})).is_ok());
        assert!(config("condition", json!({"expression": "a > 1"})).is_ok());
    }

    #[test]
    fn loop_config_parses_body_with_paths() {
        let ok = config("loop", json!({"mode": "for_each", "items": "trigger.items", "body": {"nodes": [{"id": "b", "type": "transform", "config": {"template": "{{ item }}"}}], "edges": []}})).unwrap();
        let NodeConfig::Loop(l) = ok else { panic!() };
        assert_eq!(l.max_iterations, DEFAULT_MAX_ITERATIONS);
        assert_eq!(l.body.nodes[0].id, "b");
        let problems = config("loop", json!({"mode": "repeat_until", "max_iterations": 10001, "body": {"nodes": [{"id": "b"}]}})).unwrap_err();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "nodes[0].config.until",
                "nodes[0].config.max_iterations",
                "nodes[0].config.body.nodes[0].type"
            ]
        );
    }

    fn paths_of(problems: Vec<Problem>) -> Vec<String> {
        problems.into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn a_loop_without_a_mode_is_what_its_items_or_until_say() {
        let body = json!({"nodes": [{"id": "b", "type": "output", "config": {"value": 1}}]});
        let Ok(NodeConfig::Loop(each)) =
            config("loop", json!({"items": "trigger.items", "body": body}))
        else {
            panic!("a loop with items parses")
        };
        assert_eq!(
            (each.mode, each.items.as_deref(), each.until),
            (LoopMode::ForEach, Some("trigger.items"), None)
        );
        let Ok(NodeConfig::Loop(again)) =
            config("loop", json!({"until": "output > 3", "body": body}))
        else {
            panic!("a loop with until parses")
        };
        assert_eq!(again.mode, LoopMode::RepeatUntil);
        let both = config(
            "loop",
            json!({"items": "[1]", "until": "true", "body": body}),
        );
        let both = both.unwrap_err();
        assert_eq!(paths_of(both.clone()), ["nodes[0].config"]);
        assert!(both[0].problem.contains("`mode`"), "{}", both[0].problem);
        let neither = config("loop", json!({"body": body})).unwrap_err();
        assert_eq!(paths_of(neither.clone()), ["nodes[0].config.items"]);
        assert!(
            neither[0].problem.contains("`until`"),
            "{}",
            neither[0].problem
        );
        // Saying the mode still works, with both when the mode says which.
        let Ok(NodeConfig::Loop(said)) = config(
            "loop",
            json!({"mode": "for_each", "items": "[1]", "until": "true", "body": body}),
        ) else {
            panic!("a for_each loop may also say until")
        };
        assert_eq!(said.mode, LoopMode::ForEach);
        assert_eq!(
            paths_of(
                config(
                    "loop",
                    json!({"mode": "sometimes", "items": "[1]", "body": body})
                )
                .unwrap_err()
            ),
            ["nodes[0].config.mode"]
        );
    }

    #[test]
    fn iso_durations_read_as_milliseconds() {
        assert_eq!(iso_duration_ms("PT30S"), Ok(30_000));
        assert_eq!(iso_duration_ms("PT1H30M"), Ok(5_400_000));
        assert_eq!(iso_duration_ms("P1DT1.5S"), Ok(86_401_500));
        assert_eq!(iso_duration_ms("P1W"), Ok(604_800_000));
        assert_eq!(iso_duration_ms("pt2m"), Ok(120_000));
        assert_eq!(iso_duration_ms("PT0S"), Ok(0));
        // A fraction of a millisecond is dropped, not rounded.
        assert_eq!(iso_duration_ms("PT0.0015S"), Ok(1));
        assert_eq!(iso_duration_ms("PT1.9999S"), Ok(1_999));
        for bad in ["30s", "PT", "P1M", "P1Y", "-PT5S", "", "PT5X"] {
            assert!(iso_duration_ms(bad).is_err(), "{bad:?} is refused");
        }
        assert!(iso_duration_ms("P1M").unwrap_err().contains("months"));
    }

    #[test]
    fn a_delay_takes_milliseconds_or_an_iso_duration_but_not_both() {
        assert_eq!(
            config("delay", json!({"duration": "PT30S"})).unwrap(),
            NodeConfig::Delay(DelayConfig::Duration(30_000))
        );
        assert_eq!(
            config("delay", json!({"duration_ms": 30_000})).unwrap(),
            NodeConfig::Delay(DelayConfig::Duration(30_000))
        );
        let both = config("delay", json!({"duration": "PT30S", "duration_ms": 30_000}));
        assert_eq!(paths_of(both.unwrap_err()), ["nodes[0].config"]);
        let bad = config("delay", json!({"duration": "half a minute"})).unwrap_err();
        assert_eq!(paths_of(bad.clone()), ["nodes[0].config.duration"]);
        assert!(bad[0].problem.contains("PT30S"), "{}", bad[0].problem);
        assert_eq!(
            paths_of(config("delay", json!({"duration": "PT1S", "until": "x"})).unwrap_err()),
            ["nodes[0].config"]
        );
        let missing = config("delay", json!({})).unwrap_err();
        assert!(
            missing[0].problem.contains("`duration`"),
            "{}",
            missing[0].problem
        );
    }

    #[test]
    fn a_wait_without_a_timeout_waits_the_longest_a_wait_may() {
        let wait = |c: Value| match config("wait", c) {
            Ok(NodeConfig::Wait(w)) => w,
            other => panic!("{other:?}"),
        };
        let open = wait(json!({"signal": "approve"}));
        assert_eq!(open.timeout_ms, MAX_WAIT_MS);
        assert_eq!(MAX_WAIT_MS, 604_800_000, "7 days");
        let now = 1_700_000_000_000;
        assert_eq!(open.deadline(now), now + 604_800_000);
        assert_eq!(
            wait(json!({"signal": "s", "timeout": "PT1H"})).deadline(now),
            now + 3_600_000
        );
        assert_eq!(
            wait(json!({"signal": "s", "timeout_ms": 500})).deadline(now),
            now + 500
        );
        // A longer timeout (refused by validation, but perhaps stored before)
        // still ends at the maximum.
        let long = wait(json!({"signal": "s", "timeout": "P30D"}));
        assert_eq!(long.timeout_ms, 30 * 86_400_000);
        assert_eq!(long.deadline(now), now + 604_800_000);
        let both = config(
            "wait",
            json!({"signal": "s", "timeout": "PT1H", "timeout_ms": 5}),
        );
        assert_eq!(paths_of(both.unwrap_err()), ["nodes[0].config"]);
        assert_eq!(
            paths_of(config("wait", json!({"signal": "s", "timeout": "1h"})).unwrap_err()),
            ["nodes[0].config.timeout"]
        );
    }

    #[test]
    fn every_node_type_lists_its_config_fields() {
        for node_type in NODE_TYPES {
            assert!(config_fields(node_type).is_some(), "{node_type}");
        }
        assert_eq!(config_fields("teleport"), None);
    }

    #[test]
    fn config_strings_have_paths() {
        let http = config("http", json!({"method": "POST", "url": "{{ a }}", "headers": {"X": "h"}, "body": {"k": ["{{ b }}", 1]}})).unwrap();
        let paths: Vec<_> = http.strings().into_iter().map(|s| s.path).collect();
        assert_eq!(paths, ["url", "headers.X", "body.k[0]"]);
    }
}
