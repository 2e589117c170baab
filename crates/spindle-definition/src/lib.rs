//! Spindle's workflow definition language: the model, its validation, templates and
//! expressions, and the planner that says which nodes run next.
//!
//! Pure and host-independent; builds for native targets and `wasm32-wasip2`.
#![deny(missing_docs)]

pub mod expression;
pub mod model;
pub mod plan;
pub mod validate;

pub use expression::{
    TemplateError, check_expression_syntax, check_template_syntax, evaluate,
    expression_step_references, is_truthy, render, step_references,
};
pub use model::{
    AgentConfig, ConditionConfig, ConfigString, DEFAULT_MAX_ITERATIONS, Definition, DelayConfig,
    ERROR_HANDLE, Edge, Graph, HttpConfig, HttpMethod, InputSpec, InputType, LoopConfig, LoopMode,
    MAX_LOOP_ITERATIONS, MAX_WAIT_MS, NODE_TYPES, Node, NodeConfig, OnError, OutputConfig,
    Position, Problem, RetryPolicy, SwitchConfig, TIMEOUT_HANDLE, TransformConfig, TriggerConfig,
    WaitConfig, config_fields, iso_duration_ms, parse_definition, parse_node_config,
};
pub use plan::{NodeState, Plan, edge_taken, plan, plan_graph};
pub use validate::{MAX_DEFINITION_BYTES, MAX_NODES, referenced_agents, validate};
