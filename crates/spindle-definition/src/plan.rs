//! The planner: given which nodes are done (with their outcome) or skipped, which nodes
//! are ready to run, which are skipped, and whether the run is finished.

use std::collections::HashMap;

use crate::model::{Definition, ERROR_HANDLE, Edge, Node, TIMEOUT_HANDLE};

/// Where a node stands in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Not finished yet (including a node that is currently running).
    Pending,
    /// Finished; `handle` is the outcome (`"true"`/`"false"`, a switch case, `"error"`
    /// for a routed failure, `None` otherwise).
    Done {
        /// The outcome handle.
        handle: Option<String>,
    },
    /// Not run because no incoming edge was taken.
    Skipped,
}

/// What to do next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pending nodes whose inputs are all resolved and at least one taken, in definition
    /// order. Nodes the caller has already dispatched also appear; filter them out.
    pub ready: Vec<String>,
    /// Pending nodes to mark skipped (propagated down to the next join), in definition order.
    pub skip: Vec<String>,
    /// True when, once `skip` is applied, no node is pending.
    pub finished: bool,
}

/// Plans the definition's main graph; a node missing from `states` is pending.
pub fn plan(def: &Definition, states: &HashMap<String, NodeState>) -> Plan {
    plan_graph(&def.nodes, &def.edges, states)
}

/// Whether `edge` is taken when its source finished with `outcome`.
pub fn edge_taken(edge: &Edge, outcome: Option<&str>) -> bool {
    match (outcome, edge.source_handle.as_deref()) {
        (Some(ERROR_HANDLE), handle) => handle == Some(ERROR_HANDLE),
        (_, Some(ERROR_HANDLE)) => false,
        // A wait that timed out follows only its `timeout` edges, like an error.
        (Some(TIMEOUT_HANDLE), handle) => handle == Some(TIMEOUT_HANDLE),
        (_, None) => true,
        (outcome, Some(handle)) => outcome == Some(handle),
    }
}

/// Plans any graph (the main graph or a loop body): nodes without incoming edges (the
/// trigger, a body's entry nodes) are ready while pending. Edges to or from unknown
/// nodes are ignored; nodes on a cycle are never ready.
pub fn plan_graph(nodes: &[Node], edges: &[Edge], states: &HashMap<String, NodeState>) -> Plan {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .rev()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut incoming: Vec<Vec<(usize, &Edge)>> = vec![Vec::new(); nodes.len()];
    let mut outgoing: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for edge in edges {
        if let (Some(&s), Some(&t)) = (
            index.get(edge.source.as_str()),
            index.get(edge.target.as_str()),
        ) {
            incoming[t].push((s, edge));
            outgoing[s].push(t);
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Virtual {
        Pending,
        Done,
        Skipped,
    }
    let state_of = |i: usize| states.get(&nodes[i].id).unwrap_or(&NodeState::Pending);
    let mut virtual_state: Vec<Virtual> = (0..nodes.len())
        .map(|i| match state_of(i) {
            NodeState::Pending => Virtual::Pending,
            NodeState::Done { .. } => Virtual::Done,
            NodeState::Skipped => Virtual::Skipped,
        })
        .collect();

    // Kahn's order so a skip propagates through a whole branch in one call.
    let mut remaining: Vec<usize> = incoming.iter().map(Vec::len).collect();
    let mut queue: std::collections::BTreeSet<usize> =
        (0..nodes.len()).filter(|&i| remaining[i] == 0).collect();
    let mut ready = Vec::new();
    let mut skip = Vec::new();
    while let Some(n) = queue.pop_first() {
        if virtual_state[n] == Virtual::Pending && index.get(nodes[n].id.as_str()) == Some(&n) {
            let resolved = incoming[n]
                .iter()
                .all(|(s, _)| virtual_state[*s] != Virtual::Pending);
            if resolved {
                let taken = incoming[n].iter().any(|(s, edge)| match state_of(*s) {
                    NodeState::Done { handle } if virtual_state[*s] == Virtual::Done => {
                        edge_taken(edge, handle.as_deref())
                    }
                    _ => false,
                });
                if incoming[n].is_empty() || taken {
                    ready.push(n);
                } else {
                    skip.push(n);
                    virtual_state[n] = Virtual::Skipped;
                }
            }
        }
        for &t in &outgoing[n] {
            remaining[t] -= 1;
            if remaining[t] == 0 {
                queue.insert(t);
            }
        }
    }
    ready.sort_unstable();
    skip.sort_unstable();
    let finished = (0..nodes.len()).all(|i| virtual_state[i] != Virtual::Pending);
    Plan {
        ready: ready.into_iter().map(|i| nodes[i].id.clone()).collect(),
        skip: skip.into_iter().map(|i| nodes[i].id.clone()).collect(),
        finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_timed_out_wait_takes_only_its_timeout_edges() {
        let edge = |handle: Option<&str>| Edge {
            id: None,
            source: "w".into(),
            target: "t".into(),
            source_handle: handle.map(String::from),
        };
        assert!(edge_taken(&edge(Some("timeout")), Some("timeout")));
        assert!(!edge_taken(&edge(None), Some("timeout")));
        assert!(
            !edge_taken(&edge(Some("timeout")), None),
            "a signal does not take it"
        );
        assert!(edge_taken(&edge(None), None));
    }

    fn node(id: &str, node_type: &str) -> Node {
        Node {
            id: id.into(),
            node_type: node_type.into(),
            ..Node::default()
        }
    }

    fn edge(source: &str, target: &str, handle: Option<&str>) -> Edge {
        Edge {
            id: None,
            source: source.into(),
            target: target.into(),
            source_handle: handle.map(Into::into),
        }
    }

    fn done(handle: Option<&str>) -> NodeState {
        NodeState::Done {
            handle: handle.map(Into::into),
        }
    }

    /// t → c (condition) → yes / no; yes → y2; y2, no → join.
    fn branching() -> Definition {
        Definition {
            nodes: ["t", "c", "yes", "y2", "no", "join"]
                .iter()
                .map(|id| node(id, if *id == "c" { "condition" } else { "transform" }))
                .collect(),
            edges: vec![
                edge("t", "c", None),
                edge("c", "yes", Some("true")),
                edge("c", "no", Some("false")),
                edge("yes", "y2", None),
                edge("y2", "join", None),
                edge("no", "join", None),
            ],
            ..Definition::default()
        }
    }

    #[test]
    fn trigger_first_then_branch_skips_propagate_to_the_join() {
        let def = branching();
        let mut states = HashMap::new();
        assert_eq!(
            plan(&def, &states),
            Plan {
                ready: vec!["t".into()],
                skip: vec![],
                finished: false
            }
        );
        states.insert("t".into(), done(None));
        assert_eq!(plan(&def, &states).ready, ["c"]);
        states.insert("c".into(), done(Some("false")));
        let p = plan(&def, &states);
        assert_eq!(
            (p.ready, p.skip),
            (
                vec!["no".to_string()],
                vec!["yes".to_string(), "y2".to_string()]
            )
        );
        states.insert("yes".into(), NodeState::Skipped);
        states.insert("y2".into(), NodeState::Skipped);
        states.insert("no".into(), done(None));
        assert_eq!(plan(&def, &states).ready, ["join"]);
        states.insert("join".into(), done(None));
        assert_eq!(
            plan(&def, &states),
            Plan {
                ready: vec![],
                skip: vec![],
                finished: true
            }
        );
    }

    #[test]
    fn joins_wait_for_every_input() {
        let def = Definition {
            nodes: vec![
                node("t", "trigger"),
                node("a", "agent"),
                node("b", "agent"),
                node("j", "output"),
            ],
            edges: vec![
                edge("t", "a", None),
                edge("t", "b", None),
                edge("a", "j", None),
                edge("b", "j", None),
            ],
            ..Definition::default()
        };
        let mut states = HashMap::from([("t".to_string(), done(None))]);
        assert_eq!(plan(&def, &states).ready, ["a", "b"]);
        states.insert("a".into(), done(None));
        assert_eq!(plan(&def, &states).ready, ["b"]);
        states.insert("b".into(), done(None));
        assert_eq!(plan(&def, &states).ready, ["j"]);
    }

    #[test]
    fn error_outcomes_take_only_error_edges() {
        let ok = edge("a", "b", None);
        let on_true = edge("a", "b", Some("true"));
        let on_error = edge("a", "b", Some("error"));
        assert!(edge_taken(&ok, None) && edge_taken(&ok, Some("true")));
        assert!(!edge_taken(&ok, Some("error")));
        assert!(edge_taken(&on_error, Some("error")) && !edge_taken(&on_error, None));
        assert!(!edge_taken(&on_error, Some("true")));
        assert!(edge_taken(&on_true, Some("true")) && !edge_taken(&on_true, Some("false")));
        assert!(!edge_taken(&on_true, None));
    }

    #[test]
    fn finished_counts_skips_about_to_be_applied() {
        let def = branching();
        let states = HashMap::from([
            ("t".to_string(), done(None)),
            ("c".to_string(), done(Some("true"))),
            ("yes".to_string(), done(None)),
            ("y2".to_string(), done(None)),
            ("join".to_string(), done(None)),
        ]);
        let p = plan(&def, &states);
        assert_eq!(p.skip, ["no"]);
        assert!(p.finished);
    }

    /// A random DAG: node 0 is the trigger; each node i > 0 gets 1..=3 edges from earlier
    /// nodes; conditions/switches/routed nodes use random handles.
    #[derive(Debug, Clone)]
    struct RandomDag {
        kinds: Vec<u8>,
        edges: Vec<(usize, usize, u8)>,
        choices: Vec<u8>,
    }

    fn random_dag() -> impl Strategy<Value = RandomDag> {
        (2usize..24).prop_flat_map(|n| {
            let kinds = prop::collection::vec(0u8..4, n);
            let edges = prop::collection::vec((0usize..1000, 0u8..4, 1usize..4), n - 1);
            let choices = prop::collection::vec(any::<u8>(), n);
            (kinds, edges, choices).prop_map(move |(kinds, raw, choices)| {
                let mut edges = Vec::new();
                for (i, (from, handle, count)) in raw.into_iter().enumerate() {
                    let target = i + 1;
                    for c in 0..count {
                        edges.push((
                            (from + c * 7) % target,
                            target,
                            handle.wrapping_add(c as u8),
                        ));
                    }
                }
                RandomDag {
                    kinds,
                    edges,
                    choices,
                }
            })
        })
    }

    /// Kinds: 0 plain, 1 condition, 2 switch (cases a, b), 3 plain with error route.
    fn handles_of(kind: u8) -> Vec<Option<&'static str>> {
        match kind {
            1 => vec![Some("true"), Some("false")],
            2 => vec![Some("a"), Some("b"), Some("default")],
            3 => vec![None, Some("error")],
            _ => vec![None],
        }
    }

    fn build(dag: &RandomDag) -> Definition {
        let kinds: Vec<u8> = dag
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| if i == 0 { 0 } else { *k })
            .collect();
        let nodes = kinds
            .iter()
            .enumerate()
            .map(|(i, _)| {
                node(
                    &format!("n{i}"),
                    if i == 0 { "trigger" } else { "transform" },
                )
            })
            .collect();
        let mut edges: Vec<Edge> = Vec::new();
        for &(s, t, h) in &dag.edges {
            let options = handles_of(kinds[s]);
            let mut handles: Vec<Option<&str>> = options.clone();
            if kinds[s] != 1 {
                handles.push(None);
            }
            let handle = handles[h as usize % handles.len()];
            let e = edge(&format!("n{s}"), &format!("n{t}"), handle);
            if !edges.contains(&e) {
                edges.push(e);
            }
        }
        Definition {
            nodes,
            edges,
            ..Definition::default()
        }
    }

    proptest! {
        #[test]
        fn random_dags_always_finish_with_every_node_resolved_once(dag in random_dag()) {
            let def = build(&dag);
            let kinds: Vec<u8> = dag.kinds.iter().enumerate().map(|(i, k)| if i == 0 { 0 } else { *k }).collect();
            let mut states: HashMap<String, NodeState> = HashMap::new();
            let mut rounds = 0;
            loop {
                let p = plan(&def, &states);
                if p.finished {
                    prop_assert!(p.ready.is_empty());
                    for id in &p.skip {
                        prop_assert!(states.insert(id.clone(), NodeState::Skipped).is_none());
                    }
                    break;
                }
                prop_assert!(!p.ready.is_empty() || !p.skip.is_empty(), "deadlock with {:?}", states);
                rounds += 1;
                prop_assert!(rounds <= def.nodes.len() + 1);
                // Every predecessor of a marked node is already resolved (or skipped now).
                for id in p.ready.iter().chain(&p.skip) {
                    for e in def.edges.iter().filter(|e| &e.target == id) {
                        prop_assert!(states.contains_key(&e.source) || p.skip.contains(&e.source),
                            "{} marked before {}", id, e.source);
                    }
                }
                for id in &p.skip {
                    prop_assert!(states.insert(id.clone(), NodeState::Skipped).is_none(), "{} twice", id);
                }
                for id in &p.ready {
                    let i: usize = id[1..].parse().unwrap();
                    let options = handles_of(kinds[i]);
                    let handle = options[dag.choices[i] as usize % options.len()];
                    prop_assert!(states.insert(id.clone(), done(handle)).is_none(), "{} twice", id);
                }
            }
            prop_assert_eq!(states.len(), def.nodes.len());
            let trigger_done = matches!(states["n0"], NodeState::Done { .. });
            prop_assert!(trigger_done);
        }
    }
}
