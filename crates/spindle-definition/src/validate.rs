//! Validation: every problem of a definition at once, each with its path.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::expression::{
    check_expression_syntax, check_template_syntax, expression_step_references, step_references,
};
use crate::model::{
    Definition, ERROR_HANDLE, Edge, MAX_WAIT_MS, Node, NodeConfig, OnError, Problem, config_fields,
};

/// Largest accepted definition, serialized as JSON.
pub const MAX_DEFINITION_BYTES: usize = 1 << 20;
/// Most nodes a definition may have, counting loop bodies.
pub const MAX_NODES: usize = 500;

/// Checks a definition and returns every problem found (empty when it is valid).
/// `agent_exists` says whether an agent id is usable by the definition's owner.
pub fn validate(def: &Definition, agent_exists: &dyn Fn(&str) -> bool) -> Vec<Problem> {
    let mut v = Validator {
        agent_exists,
        problems: Vec::new(),
        first_path_of_id: HashMap::new(),
        all_ids: HashSet::new(),
        node_count: 0,
    };
    match serde_json::to_vec(def) {
        Ok(bytes) if bytes.len() > MAX_DEFINITION_BYTES => v.problems.push(Problem::new(
            "",
            format!(
                "the definition is {} bytes; the limit is {MAX_DEFINITION_BYTES}",
                bytes.len()
            ),
        )),
        Ok(_) => {}
        Err(e) => v
            .problems
            .push(Problem::new("", format!("cannot be serialized: {e}"))),
    }
    // The graph checks below take more than linear time in the number of nodes (each
    // node's ancestors, each node's edges): a 1 MiB definition of 20 000 nodes kept
    // them busy for minutes. A definition over the limit is refused on that alone.
    let nodes = count_nodes(&def.nodes);
    if nodes > MAX_NODES {
        v.node_count = nodes;
    } else {
        collect_ids(&def.nodes, &mut v.all_ids);
        v.graph(&def.nodes, &def.edges, "", &HashSet::new());
    }
    if v.node_count > MAX_NODES {
        v.problems.push(Problem::new(
            "nodes",
            format!(
                "the definition has {} nodes (counting loop bodies); the limit is {MAX_NODES}",
                v.node_count
            ),
        ));
    }
    v.problems
}

/// The distinct agent ids used by agent nodes (including inside loop bodies), sorted.
pub fn referenced_agents(def: &Definition) -> Vec<String> {
    fn walk(nodes: &[Node], into: &mut BTreeSet<String>) {
        for node in nodes {
            match node.typed_config("") {
                Ok(NodeConfig::Agent(a)) => {
                    into.insert(a.agent_id);
                }
                Ok(NodeConfig::Loop(l)) => walk(&l.body.nodes, into),
                _ => {}
            }
        }
    }
    let mut agents = BTreeSet::new();
    walk(&def.nodes, &mut agents);
    agents.into_iter().collect()
}

/// How many nodes `nodes` has, counting loop bodies.
fn count_nodes(nodes: &[Node]) -> usize {
    nodes.len()
        + nodes
            .iter()
            .map(|node| match node.typed_config("") {
                Ok(NodeConfig::Loop(l)) => count_nodes(&l.body.nodes),
                _ => 0,
            })
            .sum::<usize>()
}

fn collect_ids(nodes: &[Node], into: &mut HashSet<String>) {
    for node in nodes {
        into.insert(node.id.clone());
        if let Ok(NodeConfig::Loop(l)) = node.typed_config("") {
            collect_ids(&l.body.nodes, into);
        }
    }
}

struct Validator<'a> {
    agent_exists: &'a dyn Fn(&str) -> bool,
    problems: Vec<Problem>,
    first_path_of_id: HashMap<String, String>,
    all_ids: HashSet<String>,
    node_count: usize,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Validator<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Validates one graph: the definition (`prefix` empty) or a loop body (`prefix` is the
    /// body's path). `outer_visible` are the step ids readable from outside the graph.
    fn graph(
        &mut self,
        nodes: &[Node],
        edges: &[Edge],
        prefix: &str,
        outer_visible: &HashSet<String>,
    ) {
        let is_body = !prefix.is_empty();
        let node_path = |i: usize| join(prefix, &format!("nodes[{i}]"));
        let edge_path = |i: usize| join(prefix, &format!("edges[{i}]"));
        self.node_count += nodes.len();
        if is_body && nodes.is_empty() {
            self.problem(join(prefix, "nodes"), "a loop body needs at least one node");
        }

        // Nodes: ids, types and configs.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut configs: Vec<Option<NodeConfig>> = Vec::with_capacity(nodes.len());
        let mut first_trigger: Option<usize> = None;
        for (i, node) in nodes.iter().enumerate() {
            let path = node_path(i);
            if node.id.trim().is_empty() {
                self.problem(join(&path, "id"), "must not be empty");
            } else if let Some(first) = self.first_path_of_id.get(&node.id) {
                let message = format!("duplicate node id `{}` (first used at {first})", node.id);
                self.problem(join(&path, "id"), message);
            } else {
                self.first_path_of_id.insert(node.id.clone(), path.clone());
            }
            index.entry(node.id.as_str()).or_insert(i);
            if node.node_type == "trigger" {
                if is_body {
                    self.problem(join(&path, "type"), "a loop body has no trigger");
                } else if let Some(first) = first_trigger {
                    let message =
                        format!("more than one trigger (the first is {})", node_path(first));
                    self.problem(join(&path, "type"), message);
                } else {
                    first_trigger = Some(i);
                }
            }
            if let Some(retry) = &node.retry
                && !(1..=10).contains(&retry.max_attempts)
            {
                self.problem(
                    join(&path, "retry.max_attempts"),
                    "must be between 1 and 10",
                );
            }
            // Checked here rather than when a config is parsed, so the engine
            // still runs a definition stored before fields were checked.
            if let Some(accepted) = config_fields(&node.node_type) {
                for key in node.config.keys() {
                    if !accepted.contains(&key.as_str()) {
                        let message = format!(
                            "unknown field; accepted for `{}` nodes: {}",
                            node.node_type,
                            accepted.join(", ")
                        );
                        self.problem(join(&path, &format!("config.{key}")), message);
                    }
                }
            }
            match node.typed_config(&path) {
                Ok(config) => {
                    if let NodeConfig::Wait(wait) = &config
                        && wait.timeout_ms > MAX_WAIT_MS
                    {
                        let key = if node.config.contains_key("timeout") {
                            "timeout"
                        } else {
                            "timeout_ms"
                        };
                        let message = format!(
                            "is {} ms; a wait lasts at most {MAX_WAIT_MS} ms (7 days, P7D)",
                            wait.timeout_ms
                        );
                        self.problem(join(&path, &format!("config.{key}")), message);
                    }
                    configs.push(Some(config));
                }
                Err(problems) => {
                    self.problems.extend(problems);
                    configs.push(None);
                }
            }
        }
        if !is_body && first_trigger.is_none() {
            self.problem(
                join(prefix, "nodes"),
                "the graph needs exactly one trigger node; it has none",
            );
        }

        // Edges: ids, endpoints and handles.
        let mut edge_ids: HashMap<String, usize> = HashMap::new();
        let mut successors: Vec<Vec<(usize, usize)>> = vec![Vec::new(); nodes.len()];
        let mut predecessors: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (k, edge) in edges.iter().enumerate() {
            let path = edge_path(k);
            let id = edge.effective_id();
            if let Some(first) = edge_ids.get(&id) {
                let message = format!(
                    "duplicate edge id `{id}` (first used at {})",
                    edge_path(*first)
                );
                self.problem(join(&path, "id"), message);
            } else {
                edge_ids.insert(id, k);
            }
            let source = index.get(edge.source.as_str()).copied();
            let target = index.get(edge.target.as_str()).copied();
            if source.is_none() {
                let message = format!("no node `{}` in this graph", edge.source);
                self.problem(join(&path, "source"), message);
            }
            if target.is_none() {
                let message = format!("no node `{}` in this graph", edge.target);
                self.problem(join(&path, "target"), message);
            }
            if let (Some(s), Some(handle)) = (source, &edge.source_handle)
                && let Some(config) = &configs[s]
            {
                let mut handles = config.handles();
                if nodes[s].on_error == OnError::Route {
                    handles.push(ERROR_HANDLE.into());
                }
                if !handles.contains(handle) {
                    let offered = if handles.is_empty() {
                        "it has none".to_string()
                    } else {
                        format!("it has {}", handles.join(", "))
                    };
                    let message = format!(
                        "node `{}` ({}) has no `{handle}` handle; {offered}",
                        nodes[s].id, nodes[s].node_type
                    );
                    self.problem(join(&path, "source_handle"), message);
                }
            }
            if let (Some(s), Some(t)) = (source, target) {
                successors[s].push((t, k));
                predecessors[t].push(s);
            }
        }

        // Conditions need both handles; routed errors need an error edge.
        for (i, node) in nodes.iter().enumerate() {
            let outgoing: Vec<Option<&str>> = edges
                .iter()
                .filter(|e| e.source == node.id)
                .map(|e| e.source_handle.as_deref())
                .collect();
            if let Some(NodeConfig::Condition(_)) = &configs[i] {
                let missing: Vec<&str> = ["true", "false"]
                    .into_iter()
                    .filter(|h| !outgoing.contains(&Some(*h)))
                    .collect();
                if !missing.is_empty() {
                    let message = format!(
                        "a condition needs outgoing edges on both `true` and `false` handles; missing {}",
                        missing.join(" and ")
                    );
                    self.problem(node_path(i), message);
                }
            }
            if node.on_error == OnError::Route && !outgoing.contains(&Some(ERROR_HANDLE)) {
                self.problem(
                    join(&node_path(i), "on_error"),
                    "`route` needs an outgoing edge with source_handle `error`",
                );
            }
        }

        self.cycles(nodes, &successors, prefix);

        // Reachability from the trigger (or, in a body, from its entry nodes).
        let starts: Vec<usize> = if is_body {
            (0..nodes.len())
                .filter(|&i| predecessors[i].is_empty())
                .collect()
        } else {
            first_trigger.into_iter().collect()
        };
        if !starts.is_empty() {
            let mut reached = vec![false; nodes.len()];
            let mut stack = starts;
            while let Some(n) = stack.pop() {
                if !std::mem::replace(&mut reached[n], true) {
                    stack.extend(successors[n].iter().map(|(t, _)| *t));
                }
            }
            for (i, node) in nodes.iter().enumerate() {
                if !reached[i] && index.get(node.id.as_str()) == Some(&i) {
                    let from = if is_body {
                        "the body's entry nodes"
                    } else {
                        "the trigger"
                    };
                    self.problem(
                        node_path(i),
                        format!("node `{}` is not reachable from {from}", node.id),
                    );
                }
            }
        }

        // Templates, step references, agents and loop bodies.
        for (i, node) in nodes.iter().enumerate() {
            let Some(config) = &configs[i] else { continue };
            let path = node_path(i);
            let mut visible = ancestors(i, &predecessors)
                .into_iter()
                .map(|a| nodes[a].id.clone())
                .collect::<HashSet<_>>();
            visible.extend(outer_visible.iter().cloned());
            let body_ids: HashSet<String> = match config {
                NodeConfig::Loop(l) => l.body.nodes.iter().map(|n| n.id.clone()).collect(),
                _ => HashSet::new(),
            };
            for s in config.strings() {
                let string_path = join(&path, &format!("config.{}", s.path));
                let (checked, references) = if s.is_expression {
                    (
                        check_expression_syntax(s.text),
                        expression_step_references(s.text),
                    )
                } else {
                    (check_template_syntax(s.text), step_references(s.text))
                };
                if let Err(e) = checked {
                    self.problem(string_path, e);
                    continue;
                }
                let sees_body = matches!(config, NodeConfig::Loop(_)) && s.path == "until";
                for id in references {
                    if visible.contains(&id) || (sees_body && body_ids.contains(&id)) {
                        continue;
                    }
                    let message = if self.all_ids.contains(&id) {
                        format!("`steps.{id}` is not upstream of node `{}`", node.id)
                    } else {
                        format!("`steps.{id}` refers to no node")
                    };
                    self.problem(string_path.clone(), message);
                }
            }
            match config {
                NodeConfig::Agent(a) if !(self.agent_exists)(&a.agent_id) => {
                    let message = format!("unknown agent `{}`", a.agent_id);
                    self.problem(join(&path, "config.agent_id"), message);
                }
                NodeConfig::Loop(l) => {
                    let body_path = join(&path, "config.body");
                    self.graph(&l.body.nodes, &l.body.edges, &body_path, &visible);
                }
                _ => {}
            }
        }
    }

    /// Reports each cycle once, naming its nodes, at the edge that closes it.
    fn cycles(&mut self, nodes: &[Node], successors: &[Vec<(usize, usize)>], prefix: &str) {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnStack,
            Done,
        }
        let mut mark = vec![Mark::New; nodes.len()];
        let mut reported: HashSet<BTreeSet<usize>> = HashSet::new();
        for root in 0..nodes.len() {
            if mark[root] != Mark::New {
                continue;
            }
            // Iterative DFS: (node, next successor position).
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            mark[root] = Mark::OnStack;
            while let Some(&mut (n, ref mut next)) = stack.last_mut() {
                if let Some(&(t, k)) = successors[n].get(*next) {
                    *next += 1;
                    match mark[t] {
                        Mark::New => {
                            mark[t] = Mark::OnStack;
                            stack.push((t, 0));
                        }
                        Mark::OnStack => {
                            let from = stack.iter().position(|(s, _)| *s == t).unwrap_or(0);
                            let members: Vec<usize> =
                                stack[from..].iter().map(|(s, _)| *s).collect();
                            if reported.insert(members.iter().copied().collect()) {
                                let mut names: Vec<&str> =
                                    members.iter().map(|&m| nodes[m].id.as_str()).collect();
                                names.push(nodes[t].id.as_str());
                                let message = format!("cycle: {}", names.join(" -> "));
                                self.problem(join(prefix, &format!("edges[{k}]")), message);
                            }
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[n] = Mark::Done;
                    stack.pop();
                }
            }
        }
    }
}

/// Every node with a path to `node` (not including `node` unless it is on a cycle).
fn ancestors(node: usize, predecessors: &[Vec<usize>]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut stack = predecessors[node].clone();
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(predecessors[n].iter().copied());
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_definition;
    use serde_json::{Value, json};

    fn known(agent: &str) -> bool {
        agent != "ghost"
    }

    fn problems(json: Value) -> Vec<Problem> {
        validate(&parse_definition(&json).expect("shape"), &known)
    }

    fn paths(json: Value) -> Vec<String> {
        problems(json).into_iter().map(|p| p.path).collect()
    }

    /// trigger → score (agent) → check (condition) → hot / cold → out (join).
    fn valid() -> Value {
        json!({
            "nodes": [
                {"id": "start", "type": "trigger", "config": {"inputs": {"lead": {"type": "object", "required": true}}}},
                {"id": "score", "type": "agent", "config": {"agent_id": "scorer", "prompt": "Score {{ trigger.lead.name }}"}},
                {"id": "check", "type": "condition", "config": {"expression": "steps.score.output.score >= 70"}},
                {"id": "hot", "type": "http", "config": {"method": "POST", "url": "https://crm/{{ steps.score.output.id }}", "body": {"s": "{{ steps.score.output }}"}}},
                {"id": "cold", "type": "transform", "config": {"template": {"note": "{{ steps.check.output }}"}}},
                {"id": "out", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "score"},
                {"source": "score", "target": "check"},
                {"source": "check", "target": "hot", "source_handle": "true"},
                {"source": "check", "target": "cold", "source_handle": "false"},
                {"source": "hot", "target": "out"},
                {"source": "cold", "target": "out"}
            ]
        })
    }

    #[test]
    fn a_valid_definition_has_no_problems() {
        assert_eq!(problems(valid()), vec![]);
    }

    #[test]
    fn unknown_node_type_and_bad_config() {
        let mut d = valid();
        d["nodes"][4]["type"] = json!("teleport");
        d["nodes"][1]["config"] = json!({"prompt": "x"});
        assert_eq!(paths(d), ["nodes[1].config.agent_id", "nodes[4].type"]);
    }

    #[test]
    fn duplicate_node_and_edge_ids() {
        let mut d = valid();
        d["nodes"][4]["id"] = json!("hot");
        d["edges"][1]["id"] = json!("e");
        d["edges"][2]["id"] = json!("e");
        let found = paths(d);
        assert!(found.contains(&"nodes[4].id".to_string()), "{found:?}");
        assert!(found.contains(&"edges[2].id".to_string()), "{found:?}");
    }

    #[test]
    fn dangling_edges() {
        let mut d = valid();
        d["edges"]
            .as_array_mut()
            .unwrap()
            .push(json!({"source": "nowhere", "target": "out"}));
        d["edges"]
            .as_array_mut()
            .unwrap()
            .push(json!({"source": "out", "target": "void"}));
        assert_eq!(paths(d), ["edges[6].source", "edges[7].target"]);
    }

    #[test]
    fn cycles_are_named() {
        let mut d = valid();
        d["edges"]
            .as_array_mut()
            .unwrap()
            .push(json!({"source": "out", "target": "score"}));
        let found = problems(d);
        let cycle = found
            .iter()
            .find(|p| p.problem.starts_with("cycle"))
            .expect("cycle");
        assert_eq!(cycle.path, "edges[6]");
        assert!(
            cycle.problem.contains("score -> check") && cycle.problem.contains("out -> score"),
            "{}",
            cycle.problem
        );
    }

    #[test]
    fn unreachable_nodes() {
        let mut d = valid();
        d["nodes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "island", "type": "output", "config": {"value": 1}}));
        assert_eq!(paths(d), ["nodes[6]"]);
    }

    #[test]
    fn exactly_one_trigger() {
        let mut none = valid();
        none["nodes"][0]["type"] = json!("output");
        none["nodes"][0]["config"] = json!({"value": 1});
        assert!(paths(none).contains(&"nodes".to_string()));
        let mut two = valid();
        two["nodes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "t2", "type": "trigger"}));
        // The second trigger has no incoming edge, so it is also unreachable.
        assert_eq!(paths(two), ["nodes[6].type", "nodes[6]"]);
    }

    #[test]
    fn condition_needs_both_handles_and_handles_must_exist() {
        let mut d = valid();
        d["edges"][3]["source_handle"] = json!("maybe");
        let found = problems(d);
        let found: Vec<_> = found
            .iter()
            .map(|p| (p.path.as_str(), p.problem.as_str()))
            .collect();
        assert_eq!(found[0].0, "edges[3].source_handle");
        assert!(found[0].1.contains("has no `maybe` handle"));
        assert_eq!(found[1].0, "nodes[2]");
        assert!(found[1].1.contains("missing false"));
        let mut d = valid();
        d["edges"][0]["source_handle"] = json!("true");
        assert_eq!(paths(d), ["edges[0].source_handle"]);
    }

    #[test]
    fn error_handles_need_route_and_route_needs_an_error_edge() {
        let mut d = valid();
        d["edges"]
            .as_array_mut()
            .unwrap()
            .push(json!({"source": "score", "target": "out", "source_handle": "error"}));
        assert_eq!(paths(d.clone()), ["edges[6].source_handle"]);
        d["nodes"][1]["on_error"] = json!("route");
        assert_eq!(paths(d.clone()), Vec::<String>::new());
        d["edges"].as_array_mut().unwrap().pop();
        assert_eq!(paths(d), ["nodes[1].on_error"]);
    }

    #[test]
    fn template_syntax_errors_have_paths() {
        let mut d = valid();
        d["nodes"][3]["config"]["body"] = json!({"s": ["ok", "{{ steps.score.output "]});
        d["nodes"][2]["config"]["expression"] = json!("steps.score.output >=");
        assert_eq!(
            paths(d),
            ["nodes[2].config.expression", "nodes[3].config.body.s[1]"]
        );
    }

    #[test]
    fn step_references_must_be_upstream() {
        let mut d = valid();
        d["nodes"][1]["config"]["prompt"] = json!("{{ steps.out.output }} {{ steps.nobody }}");
        d["nodes"][4]["config"]["template"] = json!("{{ steps.hot.output }}");
        let found = problems(d);
        let found: Vec<_> = found
            .iter()
            .map(|p| (p.path.as_str(), p.problem.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "nodes[1].config.prompt",
                    "`steps.out` is not upstream of node `score`"
                ),
                ("nodes[1].config.prompt", "`steps.nobody` refers to no node"),
                (
                    "nodes[4].config.template",
                    "`steps.hot` is not upstream of node `cold`"
                ),
            ]
        );
    }

    #[test]
    fn unknown_agents() {
        let mut d = valid();
        d["nodes"][1]["config"]["agent_id"] = json!("ghost");
        assert_eq!(paths(d), ["nodes[1].config.agent_id"]);
    }

    #[test]
    fn limits() {
        let mut big = json!({"nodes": [{"id": "t", "type": "trigger"}], "edges": []});
        for i in 0..MAX_NODES {
            big["nodes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"id": format!("n{i}"), "type": "output", "config": {"value": 1}}));
            big["edges"]
                .as_array_mut()
                .unwrap()
                .push(json!({"source": "t", "target": format!("n{i}")}));
        }
        assert_eq!(paths(big), ["nodes"]);
        let mut huge = valid();
        huge["variables"] = json!({"blob": "x".repeat(MAX_DEFINITION_BYTES)});
        assert_eq!(paths(huge), [""]);
        let mut many = valid();
        many["nodes"][4] = json!({"id": "cold", "type": "loop", "config": {"mode": "repeat_until", "until": "true", "max_iterations": 10001, "body": {"nodes": [{"id": "b", "type": "output", "config": {"value": 1}}]}}});
        assert_eq!(paths(many), ["nodes[4].config.max_iterations"]);
    }

    fn with_loop(body: Value, items: &str, until: Option<&str>) -> Value {
        let mut d = valid();
        let mut config =
            json!({"mode": "for_each", "items": items, "max_iterations": 50, "body": body});
        if let Some(until) = until {
            config["until"] = json!(until);
        }
        d["nodes"][4] = json!({"id": "cold", "type": "loop", "config": config});
        d
    }

    #[test]
    fn loop_bodies_are_validated_recursively() {
        let body = json!({
            "nodes": [
                {"id": "each", "type": "agent", "config": {"agent_id": "scorer", "prompt": "{{ item }} {{ steps.score.output }}"}},
                {"id": "after", "type": "transform", "config": {"template": "{{ steps.each.output }} {{ index }}"}}
            ],
            "edges": [{"source": "each", "target": "after"}]
        });
        assert_eq!(
            problems(with_loop(
                body.clone(),
                "steps.score.output.items",
                Some("steps.after.output")
            )),
            vec![]
        );

        let bad = json!({
            "nodes": [
                {"id": "each", "type": "agent", "config": {"agent_id": "ghost", "prompt": "{{ steps.hot.output }}"}},
                {"id": "after", "type": "transform", "config": {"template": "{{ steps.each.output }}"}},
                {"id": "t", "type": "trigger"},
                {"id": "x", "type": "nope"}
            ],
            "edges": [{"source": "each", "target": "after"}, {"source": "after", "target": "each"}]
        });
        let found = paths(with_loop(bad, "steps.after.output", None));
        assert_eq!(
            found,
            [
                "nodes[4].config.items",
                "nodes[4].config.body.nodes[2].type",
                "nodes[4].config.body.nodes[3].type",
                "nodes[4].config.body.edges[1]",
                "nodes[4].config.body.nodes[0]",
                "nodes[4].config.body.nodes[1]",
                "nodes[4].config.body.nodes[0].config.prompt",
                "nodes[4].config.body.nodes[0].config.agent_id",
            ]
        );
        let empty = paths(with_loop(json!({"nodes": []}), "[1]", None));
        assert_eq!(empty, ["nodes[4].config.body.nodes"]);
        let duplicate = paths(with_loop(
            json!({"nodes": [{"id": "hot", "type": "output", "config": {"value": 1}}]}),
            "[1]",
            None,
        ));
        assert_eq!(duplicate, ["nodes[4].config.body.nodes[0].id"]);
    }

    #[test]
    fn an_unknown_config_field_is_named_with_the_fields_accepted() {
        let mut d = valid();
        d["nodes"][1]["config"]["temprature"] = json!(0.2);
        d["nodes"][4] = json!({"id": "cold", "type": "loop", "config": {"items": "[1]", "body": {
            "nodes": [{"id": "b", "type": "delay", "config": {"duration": "PT1S", "seconds": 1}}]}}});
        let found = problems(d);
        let found: Vec<_> = found
            .iter()
            .map(|p| (p.path.as_str(), p.problem.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "nodes[1].config.temprature",
                    "unknown field; accepted for `agent` nodes: agent_id, prompt, output_schema, max_tokens"
                ),
                (
                    "nodes[4].config.body.nodes[0].config.seconds",
                    "unknown field; accepted for `delay` nodes: duration_ms, duration, until"
                ),
            ]
        );
    }

    #[test]
    fn a_wait_may_not_outlast_the_maximum() {
        let mut d = valid();
        d["nodes"][4] =
            json!({"id": "cold", "type": "wait", "config": {"signal": "ok", "timeout": "P8D"}});
        let found = problems(d.clone());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "nodes[4].config.timeout");
        assert!(found[0].problem.contains("7 days"), "{}", found[0].problem);
        d["nodes"][4]["config"] = json!({"signal": "ok", "timeout_ms": MAX_WAIT_MS + 1});
        assert_eq!(paths(d.clone()), ["nodes[4].config.timeout_ms"]);
        d["nodes"][4]["config"] = json!({"signal": "ok", "timeout": "P7D"});
        assert_eq!(paths(d.clone()), Vec::<String>::new());
        d["nodes"][4]["config"] = json!({"signal": "ok"});
        assert_eq!(paths(d), Vec::<String>::new());
    }

    #[test]
    fn referenced_agents_include_loop_bodies() {
        let body = json!({"nodes": [{"id": "each", "type": "agent", "config": {"agent_id": "looper", "prompt": "{{ item }}"}}]});
        let def = parse_definition(&with_loop(body, "[1, 2]", None)).unwrap();
        assert_eq!(referenced_agents(&def), ["looper", "scorer"]);
    }

    #[test]
    fn sequential_definitions_validate() {
        let def = parse_definition(&json!({"tasks": [{"agent": "a"}, {"agent": "b", "input": "{{ steps.task_1.output }}"}]})).unwrap();
        assert_eq!(validate(&def, &known), vec![]);
        assert_eq!(referenced_agents(&def), ["a", "b"]);
    }
}
