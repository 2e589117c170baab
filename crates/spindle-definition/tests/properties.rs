//! No JSON value makes definition validation, template rendering or expression
//! evaluation panic, run unbounded or break what they promise.
//!
//! The properties feed arbitrary JSON (nested objects and lists, template fragments,
//! huge numbers, unicode), grammar-built expressions and graph-shaped definitions to
//! `parse_definition` + `validate`, `render`, `evaluate` and the syntax checks. Each
//! must answer the same every time; a refused definition names at least one problem,
//! every problem at a path in what was checked; a parsed definition, stored and read
//! back, is itself; the syntax checks agree with rendering and evaluation (what passes
//! them never fails for its syntax, what fails them never renders); text without
//! expressions renders to itself and one path to the value there. A panic fails the
//! property, and a stack overflow or an allocation failure aborts the test binary.
//! Boundedness is not timed: the
//! known-expensive inputs (long chains, deep nesting, huge repetitions, builtins that
//! allocate by an argument or multiply two sizes) are listed below and must be refused
//! by the engine's limits (`MAX_EXPRESSION_DEPTH`, `MAX_REPEAT_LEN`, `MAX_VALUE_SIZE`,
//! fuel, minijinja's range limit) with an error.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use spindle_definition::{
    NODE_TYPES, TemplateError, check_expression_syntax, check_template_syntax, evaluate,
    expression_step_references, is_truthy, parse_definition, referenced_agents, render,
    step_references, validate,
};

/// Pieces of template and expression syntax, glued together at random.
const FRAGMENTS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    "'",
    "\"",
    "\\",
    " ",
    "|",
    ".",
    ",",
    ":",
    "-",
    "+",
    "*",
    "**",
    "/",
    "//",
    "%",
    "~",
    "==",
    "!=",
    "<",
    ">=",
    "not ",
    " and ",
    " or ",
    " in ",
    " is ",
    " if ",
    " else ",
    "none",
    "true",
    "null",
    "steps",
    "steps.a",
    ".output",
    "trigger",
    "item",
    "index",
    "variables",
    "loops",
    "previous_output",
    "length",
    "json",
    "join",
    "replace",
    "batch(",
    "indent(",
    "format(",
    "map(",
    "range(",
    "dict(",
    "lower",
    "0",
    "1",
    "-1",
    "10**9",
    "2**64",
    "99999999999999999999999",
    "1e308",
    "-0.0",
    "0.1",
    "é",
    "日本",
    "😀",
    "\u{0}",
    "\u{202e}",
    "\n",
    "\t",
];

fn fragments() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..16).prop_map(|parts| parts.concat())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => fragments(),
        1 => "\\PC{0,40}",
        1 => "[a-z{}% |.'\"]{0,30}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            json!(0),
            json!(-0.0),
            json!(1e308),
            json!(-1e308),
            json!(f64::MIN_POSITIVE),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(0.1),
        ]),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A context shaped like the engine's, with arbitrary values in it.
fn context() -> impl Strategy<Value = Value> {
    (
        arbitrary_json(),
        arbitrary_json(),
        arbitrary_json(),
        arbitrary_json(),
    )
        .prop_map(|(a, trigger, item, other)| {
            json!({
                "trigger": trigger,
                "steps": {"a": {"output": a, "status": "completed"}, "b": {"output": other}},
                "previous_output": item.clone(),
                "item": item,
                "index": 3,
                "variables": {"v": "x", "n": 10},
                "execution": {"id": "exec-1"},
            })
        })
}

/// Expressions built from the grammar: every operator, filter (the removed ones too),
/// test, call, subscript and slice, over literals and context paths.
fn expression() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        prop::sample::select(vec![
            "steps.a.output",
            "steps.a.output.x",
            "steps['b'].output",
            "steps.nope.output.deeper",
            "trigger",
            "item",
            "index",
            "variables.n",
            "previous_output",
            "execution.id",
            "loops",
            "none",
            "null",
            "true",
            "false",
            "undefined_name",
            "range(5)",
            "range(100000)",
            "range(10**9)",
            "'a' * 100000",
            "dict(a=1)",
            "namespace(a=1)",
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec!["1e308", "0.5", "-0.0", "99999999999999999999999999"])
            .prop_map(String::from),
        text().prop_map(|t| serde_json::to_string(&t).unwrap()),
        "'[^'\\\\]{0,12}'",
    ];
    atom.prop_recursive(5, 48, 4, |inner| {
        let binary = prop::sample::select(vec![
            "+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "in",
            "not in", "and", "or",
        ]);
        let filter = prop::sample::select(vec![
            "length",
            "count",
            "json",
            "join",
            "replace",
            "lower",
            "upper",
            "title",
            "trim",
            "first",
            "last",
            "list",
            "sort",
            "unique",
            "reverse",
            "sum",
            "min",
            "max",
            "int",
            "float",
            "abs",
            "round",
            "string",
            "default",
            "items",
            "dictsort",
            "split",
            "lines",
            "batch",
            "slice",
            "indent",
            "format",
            "map",
            "select",
            "reject",
            "selectattr",
            "groupby",
            "chain",
            "zip",
            "pprint",
            "escape",
            "tojson",
            "bogus",
        ]);
        let test = prop::sample::select(vec![
            "none",
            "defined",
            "number",
            "string",
            "sequence",
            "mapping",
            "odd",
            "even",
            "divisibleby(0)",
            "startingwith('a')",
            "in([1])",
            "bogus",
        ]);
        prop_oneof![
            (inner.clone(), binary, inner.clone())
                .prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            inner.clone().prop_map(|a| format!("not ({a})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("({a}) if ({b}) else ({c})")),
            (
                inner.clone(),
                filter,
                prop::collection::vec(inner.clone(), 0..3)
            )
                .prop_map(|(a, f, args)| if args.is_empty() {
                    format!("({a}) | {f}")
                } else {
                    format!("({a}) | {f}({})", args.join(", "))
                }),
            (inner.clone(), test).prop_map(|(a, t)| format!("({a}) is {t}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}]")),
            (inner.clone(), "[a-z_]{1,6}").prop_map(|(a, name)| format!("({a}).{name}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}:]")),
            (inner.clone(), any::<i8>()).prop_map(|(a, step)| format!("({a})[::{step}]")),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((inner.clone(), inner.clone()), 0..3).prop_map(|pairs| {
                let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", pairs.join(", "))
            }),
            (inner.clone(), inner).prop_map(|(a, b)| format!("range({a}, {b})")),
        ]
    })
}

/// A node config for `node_type` whose strings are templates and expressions.
fn config(node_type: &'static str) -> BoxedStrategy<Value> {
    let template = prop_oneof![
        text(),
        expression().prop_map(|e| format!("{{{{ {e} }}}}")),
        (text(), expression()).prop_map(|(t, e)| format!("{t} {{{{ {e} }}}} {t}")),
    ];
    match node_type {
        "agent" => (template, prop::sample::select(vec!["a1", "ghost", ""]), arbitrary_json())
            .prop_map(|(prompt, agent, schema)| {
                json!({"agent_id": agent, "prompt": prompt, "output_schema": schema})
            })
            .boxed(),
        "condition" => expression().prop_map(|e| json!({"expression": e})).boxed(),
        "switch" => (expression(), prop::collection::vec(text(), 0..3))
            .prop_map(|(e, cases)| json!({"expression": e, "cases": cases}))
            .boxed(),
        "transform" | "output" => arbitrary_json()
            .prop_map(|v| json!({"template": v, "value": v}))
            .boxed(),
        "http" => (template, arbitrary_json(), number())
            .prop_map(|(url, body, timeout)| {
                json!({"method": "POST", "url": url, "body": body, "headers": {"x": "{{ 1 }}"}, "timeout_ms": timeout})
            })
            .boxed(),
        "delay" => number().prop_map(|n| json!({"duration_ms": n})).boxed(),
        "wait" => (text(), number())
            .prop_map(|(signal, timeout)| json!({"signal": signal, "timeout_ms": timeout}))
            .boxed(),
        "trigger" => arbitrary_json().prop_map(|inputs| json!({"inputs": inputs})).boxed(),
        _ => arbitrary_json().boxed(),
    }
}

const IDS: &[&str] = &["t", "a", "b", "c", "d", "e", "", "t"];

fn node() -> impl Strategy<Value = Value> {
    let types: Vec<&'static str> = NODE_TYPES.iter().copied().chain(["bogus"]).collect();
    (
        prop::sample::select(IDS),
        prop::sample::select(types),
        prop::option::of((0u64..20, number())),
        prop::sample::select(vec![
            None,
            Some("fail"),
            Some("continue"),
            Some("route"),
            Some("x"),
        ]),
    )
        .prop_flat_map(|(id, node_type, retry, on_error)| {
            config(node_type).prop_map(move |config| {
                let mut node = json!({"id": id, "type": node_type, "config": config});
                if let Some((attempts, backoff)) = &retry {
                    node["retry"] = json!({"max_attempts": attempts, "backoff_ms": backoff});
                }
                if let Some(on_error) = on_error {
                    node["on_error"] = json!(on_error);
                }
                node
            })
        })
}

fn edges() -> impl Strategy<Value = Value> {
    let handle = prop::sample::select(vec![
        None,
        Some("true"),
        Some("false"),
        Some("error"),
        Some("timeout"),
        Some("default"),
        Some("x"),
    ]);
    prop::collection::vec(
        (prop::sample::select(IDS), prop::sample::select(IDS), handle),
        0..10,
    )
    .prop_map(|edges| {
        Value::Array(
            edges
                .into_iter()
                .map(|(source, target, handle)| {
                    let mut edge = json!({"source": source, "target": target});
                    if let Some(handle) = handle {
                        edge["source_handle"] = json!(handle);
                    }
                    edge
                })
                .collect(),
        )
    })
}

/// Graph-shaped definitions, loops nested in loops included, mostly almost valid.
fn definition() -> impl Strategy<Value = Value> {
    let graph = (prop::collection::vec(node(), 0..7), edges())
        .prop_map(|(nodes, edges)| json!({"nodes": nodes, "edges": edges}));
    graph.prop_recursive(3, 12, 2, |body| {
        (
            prop::collection::vec(node(), 0..5),
            edges(),
            body,
            expression(),
            prop::sample::select(vec!["for_each", "repeat_until", "x"]),
            number(),
        )
            .prop_map(|(mut nodes, edges, body, items, mode, max)| {
                nodes.push(json!({"id": "loop", "type": "loop", "config": {
                    "mode": mode, "items": items, "until": items, "max_iterations": max, "body": body,
                }}));
                json!({"nodes": nodes, "edges": edges})
            })
    })
}

fn sequential() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (prop::sample::select(vec!["a1", "ghost"]), arbitrary_json()),
        0..4,
    )
    .prop_map(|tasks| {
        let tasks: Vec<Value> = tasks
            .into_iter()
            .map(|(agent, input)| json!({"agent": agent, "input": input}))
            .collect();
        json!({"name": "seq", "tasks": tasks})
    })
}

/// Whether `path` (`nodes[2].config.agent_id`, `tasks[0]`; empty for the whole
/// document) is a place in `doc`: a value there, or a key missing from an object
/// that is there (a required field, named where it belongs). Paths do not quote
/// keys, so one through an object with a key holding `.` or `[` cannot be read back
/// for sure; from such an object on it is taken as located.
fn locates(doc: &Value, path: &str) -> bool {
    fn walk(value: &Value, rest: &str) -> bool {
        if rest.is_empty() {
            return true;
        }
        if let Some(rest) = rest.strip_prefix('[') {
            let Some((index, rest)) = rest.split_once(']') else {
                return false;
            };
            let item = index
                .parse::<usize>()
                .ok()
                .and_then(|i| value.as_array()?.get(i));
            return item.is_some_and(|item| walk(item, rest));
        }
        let (Some(rest), Some(object)) = (rest.strip_prefix('.'), value.as_object()) else {
            return false;
        };
        if object.keys().any(|key| key.contains(['.', '['])) {
            return true;
        }
        let present = object.iter().any(|(key, item)| {
            rest.strip_prefix(key.as_str()).is_some_and(|after| {
                (after.is_empty() || after.starts_with(['.', '['])) && walk(item, after)
            })
        });
        present || !rest.contains(['.', '['])
    }
    path.is_empty()
        || if path.starts_with('[') {
            walk(doc, path)
        } else {
            walk(doc, &format!(".{path}"))
        }
}

/// Parses and, when it parses, validates `doc`, holding both to what they promise:
/// the same answer each time; a refusal with at least one problem, each at a path in
/// the document; a definition that is itself once stored and read back; problems of
/// validation at paths in that stored definition (which the sequential form's `tasks`
/// become); its agents listed once each, sorted, and an unknown one a problem.
fn parse_and_validate(doc: &Value) -> Result<(), TestCaseError> {
    let parsed = parse_definition(doc);
    prop_assert_eq!(&parse_definition(doc), &parsed);
    let definition = match parsed {
        Ok(definition) => definition,
        Err(problems) => {
            prop_assert!(!problems.is_empty(), "refused without a problem: {}", doc);
            for problem in &problems {
                prop_assert!(
                    locates(doc, &problem.path),
                    "{:?} is not in {}",
                    problem,
                    doc
                );
            }
            return Ok(());
        }
    };
    let stored = serde_json::to_value(&definition).expect("a parsed definition serializes");
    prop_assert_eq!(parse_definition(&stored), Ok(definition.clone()));
    let agent_exists = |agent: &str| agent != "ghost";
    let problems = validate(&definition, &agent_exists);
    prop_assert_eq!(&validate(&definition, &agent_exists), &problems);
    for problem in &problems {
        prop_assert!(
            locates(&stored, &problem.path),
            "{:?} is not in {}",
            problem,
            stored
        );
    }
    let agents = referenced_agents(&definition);
    prop_assert!(
        agents.windows(2).all(|pair| pair[0] < pair[1]),
        "{:?}",
        agents
    );
    if agents.iter().any(|agent| agent == "ghost") {
        prop_assert!(
            problems.iter().any(|p| p.problem.contains("ghost")),
            "the unknown agent is not a problem: {:?}",
            problems
        );
    }
    Ok(())
}

/// A syntax failure: what the syntax checks are there to catch before a run.
fn is_syntax_error(result: &Result<Value, TemplateError>) -> bool {
    matches!(
        result,
        Err(TemplateError::Syntax(_) | TemplateError::TooLong(_))
    )
}

/// Everything a template or expression string goes through, held to what it
/// promises: rendering and evaluation answer the same each time; a string that passes
/// a syntax check never fails for its syntax, and one that fails it never renders or
/// evaluates (nor reads any step, as an expression).
fn check_string(s: &str, ctx: &Value) -> Result<(), TestCaseError> {
    let template = json!(s);
    let rendered = render(&template, ctx);
    prop_assert_eq!(&render(&template, ctx), &rendered);
    match check_template_syntax(s) {
        Ok(()) => prop_assert!(
            !is_syntax_error(&rendered),
            "{:?} passed the check: {:?}",
            s,
            rendered
        ),
        Err(problem) => prop_assert!(
            rendered.is_err(),
            "{:?} failed the check ({}) but rendered {:?}",
            s,
            problem,
            rendered
        ),
    }
    let _ = step_references(s);
    let evaluated = evaluate(s, ctx);
    prop_assert_eq!(&evaluate(s, ctx), &evaluated);
    match check_expression_syntax(s) {
        Ok(()) => prop_assert!(
            !is_syntax_error(&evaluated),
            "{:?} passed the check: {:?}",
            s,
            evaluated
        ),
        Err(problem) => {
            prop_assert!(
                is_syntax_error(&evaluated),
                "{:?} failed the check ({}) but evaluated {:?}",
                s,
                problem,
                evaluated
            );
            prop_assert!(expression_step_references(s).is_empty());
        }
    }
    Ok(())
}

/// Arbitrary JSON whose strings hold no `{`, so no expression.
fn json_without_expressions() -> impl Strategy<Value = Value> {
    fn strip(value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(s.replace('{', "")),
            Value::Array(items) => Value::Array(items.into_iter().map(strip).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, strip(v))).collect())
            }
            other => other,
        }
    }
    arbitrary_json().prop_map(strip)
}

/// A step id as definitions write them.
fn step_id() -> impl Strategy<Value = String> {
    "n_[a-z0-9_]{0,5}"
}

// 256 cases each (proptest's default; `PROPTEST_CASES=5000` for a longer hunt).
proptest! {
    #[test]
    fn arbitrary_json_is_refused_or_validated_alike_each_time_at_paths_it_has(doc in arbitrary_json()) {
        parse_and_validate(&doc)?;
        let mut wrapped = Map::new();
        wrapped.insert("nodes".into(), doc.clone());
        wrapped.insert("edges".into(), doc.clone());
        wrapped.insert("variables".into(), doc);
        parse_and_validate(&Value::Object(wrapped))?;
    }

    #[test]
    fn graph_shaped_definitions_are_validated_alike_each_time_at_paths_they_have(doc in definition(), tasks in sequential()) {
        parse_and_validate(&doc)?;
        parse_and_validate(&tasks)?;
    }

    #[test]
    fn arbitrary_templates_render_alike_each_time_and_as_their_syntax_check_says(template in arbitrary_json(), ctx in context()) {
        let rendered = render(&template, &ctx);
        prop_assert_eq!(&render(&template, &ctx), &rendered);
        if let Value::String(s) = &template {
            check_string(s, &ctx)?;
        }
    }

    #[test]
    fn arbitrary_strings_are_checked_rendered_and_evaluated_as_their_syntax_check_says(s in text(), ctx in context()) {
        check_string(&s, &ctx)?;
        check_string(&format!("{{{{ {s} }}}}"), &ctx)?;
    }

    #[test]
    fn grammar_expressions_evaluate_alike_each_time_as_their_template_and_check_say(e in expression(), ctx in context()) {
        let evaluated = evaluate(&e, &ctx);
        prop_assert_eq!(&evaluate(&e, &ctx), &evaluated);
        // The syntax check accepts exactly what compiles.
        match check_expression_syntax(&e) {
            Ok(()) => prop_assert!(!is_syntax_error(&evaluated), "{} passed the check: {:?}", e, evaluated),
            Err(_) => prop_assert!(is_syntax_error(&evaluated), "{} evaluated to {:?} but fails the syntax check", e, evaluated),
        }
        // A template that is exactly the expression gives the same value.
        let rendered = render(&json!(format!("{{{{ {e} }}}}")), &ctx);
        prop_assert_eq!(rendered.is_ok(), evaluated.is_ok(), "{}", e);
        if let (Ok(a), Ok(b)) = (&rendered, &evaluated) {
            prop_assert_eq!(a, b);
        }
        // `not` reads a value's truthiness as conditions do (JSON truthiness).
        if let (Ok(value), Ok(negated)) = (&evaluated, evaluate(&format!("not ({e})"), &ctx)) {
            prop_assert_eq!(negated, json!(!is_truthy(value)), "{}", e);
        }
        check_string(&format!("[{{{{ {e} }}}}] and {{{{ {e} }}}}"), &ctx)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn text_without_expressions_renders_to_itself(template in json_without_expressions(), ctx in context()) {
        prop_assert_eq!(render(&template, &ctx), Ok(template.clone()));
    }

    #[test]
    fn a_template_of_one_path_renders_the_value_there_and_mixed_text_as_a_string(value in arbitrary_json(), text in "x[a-z .,:]{0,8}") {
        let ctx = json!({"steps": {"a": {"output": value.clone()}}});
        // Exactly one expression, whitespace around it too, keeps the value's JSON type.
        prop_assert_eq!(render(&json!("{{ steps.a.output }}"), &ctx), Ok(value.clone()));
        prop_assert_eq!(render(&json!(" {{steps.a.output}}\n"), &ctx), Ok(value.clone()));
        // With text around it, a string: strings as they are, other values as JSON.
        let shown = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mixed = json!(format!("{text}{{{{ steps.a.output }}}}{text}"));
        prop_assert_eq!(render(&mixed, &ctx), Ok(json!(format!("{text}{shown}{text}"))));
    }

    #[test]
    fn step_references_name_each_step_a_template_reads_once_in_order(
        reads in prop::collection::vec((step_id(), any::<bool>()), 0..6),
        text in "[a-z .,:]{0,8}",
    ) {
        let template: Vec<String> = reads
            .iter()
            .map(|(id, bracketed)| if *bracketed {
                format!("{{{{ steps['{id}'].output }}}}")
            } else {
                format!("{{{{ steps.{id}.output.x }}}}")
            })
            .collect();
        let template = template.join(&text);
        let mut expected: Vec<String> = Vec::new();
        for (id, _) in &reads {
            if !expected.contains(id) {
                expected.push(id.clone());
            }
        }
        prop_assert_eq!(step_references(&template), expected);
    }
}

/// Runs `f` on a thread with a fixed stack, so that unbounded recursion shows up as
/// an overflow (which aborts the test binary) whatever the input's length. 4 MiB is
/// twice what the deepest accepted expression needs in a debug build; before the
/// depth limit, 9 000 `-` overflowed 8 MiB.
fn on_fixed_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(4 << 20)
        .spawn(f)
        .expect("a thread")
        .join()
        .expect("no panic")
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let shapes: &[(&str, &str, &str)] = &[
        ("", "-", "1"),
        ("", "not ", "x"),
        ("1", " + 1", ""),
        ("1", " ** 1", ""),
        ("'a'", " ~ 'a'", ""),
        ("x", ".a", ""),
        ("x", "[0]", ""),
        ("x", "()", ""),
        ("x", " | length", ""),
        ("x", " is none", ""),
        ("1", " if 1 else 1", ""),
        ("1", " < 1", ""),
        ("x", " or x", ""),
        ("", "(", "1"),
        ("", "[", "1"),
        ("", "{'a': ", "1"),
        ("", "-(", "1"),
        ("", "not (", "x"),
    ];
    for &(head, repeated, tail) in shapes {
        for n in [10, 99, 100, 101, 1_000, 9_000] {
            let expression = format!("{head}{}{tail}", repeated.repeat(n));
            if expression.len() > spindle_definition::expression::MAX_EXPRESSION_LEN {
                continue;
            }
            let shown = format!("{head}{repeated}×{n}{tail}");
            let result = on_fixed_stack(move || {
                let ctx = json!({"x": {"a": 1}});
                let checked = check_expression_syntax(&expression).is_ok();
                let template = json!(format!("{{{{ {expression} }}}}"));
                (
                    checked,
                    evaluate(&expression, &ctx),
                    render(&template, &ctx),
                )
            });
            let (checked, evaluated, rendered) = result;
            if n >= 1_000 {
                assert!(!checked, "{shown} passes the syntax check");
                assert!(
                    matches!(evaluated, Err(TemplateError::Syntax(_))),
                    "{shown}: {evaluated:?}"
                );
                assert!(rendered.is_err(), "{shown}: {rendered:?}");
            }
        }
    }
}

#[test]
fn deep_json_renders_and_validates() {
    // serde_json refuses to parse JSON nested deeper than 128, so that is as deep as
    // a definition, a context or a template can be.
    let mut deep = json!("{{ item }}");
    for i in 0..120 {
        deep = if i % 2 == 0 {
            json!([deep])
        } else {
            json!({"k": deep})
        };
    }
    let ctx = json!({"item": deep.clone()});
    let rendered = on_fixed_stack(move || render(&deep, &ctx).map(|_| ()));
    assert!(rendered.is_ok(), "{rendered:?}");

    // Loops nested in loop bodies as deep as 128 levels of JSON allow.
    let mut body = json!({"nodes": [{"id": "leaf", "type": "transform", "config": {"template": "{{ item }}"}}], "edges": []});
    for i in 0..24 {
        body = json!({"nodes": [{"id": format!("l{i}"), "type": "loop", "config": {"mode": "for_each", "items": "item", "body": body}}], "edges": []});
    }
    let doc = json!({
        "nodes": [{"id": "t", "type": "trigger"}, body["nodes"][0].clone()],
        "edges": [{"source": "t", "target": "l23"}],
    });
    let problems = on_fixed_stack(move || {
        let definition = parse_definition(&doc).expect("a graph");
        validate(&definition, &|_| true)
    });
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn known_expensive_expressions_fail() {
    let ctx = json!({"x": {"a": 1}, "s": "ab", "big": "x".repeat(1 << 20)});
    let expensive = [
        // Repetition, directly or by sharing one big value many times.
        "'a' * 10**9",
        "'a' * 100000 * 100000",
        "[1] * 10**9",
        "[range(100000) | list] * 100000",
        "[s] * 100000",
        "[big] * 10",
        "([range(100000) | list] * 100000) | length",
        "range(100000) | chain(*([range(100000) | list] * 100000)) | list",
        // Exponentiation and numbers too big for JSON.
        "10 ** 10 ** 10",
        "2 ** 100",
        "99999999999999999999999999999",
        "-(-170141183460469231731687303715884105728)",
        // Ranges over minijinja's 100 000 items.
        "range(10**9) | length",
        "range(100001) | join(',')",
        // Two sizes multiplied.
        "range(100000) | join(range(100000) | join(','))",
        "('a' * 100000) | replace('a', 'a' * 100000)",
        "('a' * 100000) | replace('', 'a' * 100)",
        "big | join('x' * 1000)",
        // Builtins that allocate by an argument, or run filters per item: not available.
        "[1] | batch(10**18, 0)",
        "[1] | slice(10**12)",
        "'x' | indent(10**12)",
        "'%999999999999d' | format(1)",
        "range(100000) | map('string') | list",
        "range(100000) | select('odd') | list",
        "[{'a': 1}] | groupby('a')",
        // Results over MAX_VALUE_SIZE.
        "[big, big, big, big, big, big, big, big, big]",
        "big ~ big ~ big ~ big ~ big ~ big ~ big ~ big ~ big",
        // Division by zero.
        "1 // 0",
        "1 % 0",
    ];
    for e in expensive {
        let (expression, ctx) = (e.to_string(), ctx.clone());
        let result =
            on_fixed_stack(move || evaluate(&expression, &ctx).map(|v| v.to_string().len()));
        assert!(result.is_err(), "{e} should fail: {result:?}");
    }
    // A template repeating a big value is limited as a whole.
    let template = json!({"a": "{{ big }}", "b": vec!["{{ big }}"; 9]});
    assert!(render(&template, &ctx).is_err());
    let text = json!("{{ big }}".repeat(9));
    assert!(render(&text, &ctx).is_err());
    // Within the limits the same operations work.
    for (e, expected) in [
        ("'ab' * 3", json!("ababab")),
        ("[1, 2] * 2", json!([1, 2, 1, 2])),
        ("range(3) | join(', ')", json!("0, 1, 2")),
        ("'a-b-c' | replace('-', '+')", json!("a+b+c")),
        ("'ab' | replace('', '.')", json!(".a.b.")),
        ("2 ** 10", json!(1024)),
        ("big | length", json!(1 << 20)),
        ("(big ~ big) | length", json!(2 << 20)),
        ("s | join(',')", json!("a,b")),
        ("none | join(',')", json!("")),
    ] {
        assert_eq!(evaluate(e, &ctx), Ok(expected), "{e}");
    }
}

#[test]
fn many_nodes_are_refused_by_the_limit() {
    // A long chain just under the 1 MiB definition limit: validation answers, with
    // the node limit among its problems.
    let n = 20_000;
    let mut nodes = vec![json!({"id": "t", "type": "trigger"})];
    let mut edges = Vec::new();
    let mut previous = "t".to_string();
    for i in 0..n {
        let id = format!("n{i}");
        nodes.push(
            json!({"id": id, "type": "transform", "config": {"template": "{{ previous_output }}"}}),
        );
        edges.push(json!({"source": previous, "target": id}));
        previous = id;
    }
    let doc = json!({"nodes": nodes, "edges": edges});
    let definition = parse_definition(&doc).expect("a graph");
    let problems = validate(&definition, &|_| true);
    assert!(problems.iter().any(|p| p.path == "nodes"), "{problems:?}");
}

#[test]
fn slices_follow_python_and_never_panic() {
    let ctx = json!({"empty": [], "s": "héllo"});
    for (e, expected) in [
        ("[1, 2, 3][::-1]", json!([3, 2, 1])),
        ("[][::-1]", json!([])),
        ("''[::-1]", json!("")),
        ("empty[::-3]", json!([])),
        ("[1, 2, 3, 4][3:0:-1]", json!([4, 3, 2])),
        ("[1, 2, 3, 4][::2]", json!([1, 3])),
        ("[1, 2, 3][-2:]", json!([2, 3])),
        ("[1, 2, 3][:-5]", json!([])),
        ("[1, 2, 3][10:]", json!([])),
        ("s[1:3]", json!("él")),
        ("s[::-1]", json!("olléh")),
        ("missing[1:]", json!([])),
        ("range(5)[1::2]", json!([1, 3])),
        ("[1, 2, 3][::-9223372036854775807]", json!([3])),
        ("[1][::-9223372036854775808]", json!([1])),
    ] {
        assert_eq!(evaluate(e, &ctx), Ok(expected), "{e}");
    }
    for e in ["[1][::0]", "5[1:]", "[1]['a':]"] {
        let result = evaluate(e, &ctx);
        assert!(result.is_err(), "{e}: {result:?}");
    }
}

#[test]
fn wide_but_shallow_expressions_are_accepted() {
    let ctx = json!({"x": {"a": 1}});
    let list = format!("[{}]", vec!["x.a + 1"; 300].join(", "));
    assert_eq!(evaluate(&list, &ctx), Ok(json!(vec![2; 300])));
    let keys: Vec<String> = (0..200).map(|i| format!("'k{i}': x.a")).collect();
    let map = format!("{{{}}}", keys.join(", "));
    assert_eq!(
        evaluate(&map, &ctx).map(|m| m.as_object().map(|o| o.len())),
        Ok(Some(200))
    );
    let any = format!("{}x.a == 1", "x.a == 2 or ".repeat(20));
    assert_eq!(evaluate(&any, &ctx), Ok(json!(true)));
    let template = format!("{}!", "{{ x.a }} and ".repeat(500));
    assert!(render(&json!(template), &ctx).is_ok());
}

#[test]
fn inputs_that_once_panicked_answer() {
    let ctx = json!({"x": 1});
    // minijinja's lexer: `}}` outside brackets ("empty lexer stack").
    for e in ["not }}{{", ") ( }}", "1 }}", "x -}}"] {
        assert!(
            matches!(evaluate(e, &ctx), Err(TemplateError::Syntax(_))),
            "{e}"
        );
        assert!(check_expression_syntax(e).is_err(), "{e}");
    }
    assert!(check_template_syntax("{{ ) ( }} }}").is_err());
    assert_eq!(
        evaluate("{'a': {'b': 1}}", &ctx),
        Ok(json!({"a": {"b": 1}}))
    );
    // minijinja's `divisibleby` divides by zero.
    assert_eq!(evaluate("x is divisibleby(0)", &ctx), Ok(json!(false)));
    assert_eq!(evaluate("6 is divisibleby(3)", &ctx), Ok(json!(true)));
    assert_eq!(evaluate("6.0 is divisibleby(0.0)", &ctx), Ok(json!(false)));
    // minijinja's slicing indexes an empty list backwards.
    assert_eq!(evaluate("[][::-1]", &ctx), Ok(json!([])));
}

#[test]
fn an_expression_that_parses_but_rewrites_to_invalid_source_fails_the_syntax_check() {
    // Found by the syntax-check properties: minijinja's parser accepts it, and what
    // Spindle rewrites it to does not compile, so every run of it would fail.
    let e = " and /not |not ";
    assert!(matches!(
        evaluate(e, &json!({})),
        Err(TemplateError::Syntax(_))
    ));
    assert!(check_expression_syntax(e).is_err());
    assert!(check_template_syntax(&format!("{{{{{e}}}}}")).is_err());
    // Nor does such an expression read a step: validation must not order the graph
    // by references of a condition it refuses.
    let e = "steps.a==not ";
    assert!(check_expression_syntax(e).is_err());
    assert_eq!(expression_step_references(e), Vec::<String>::new());
}

#[test]
fn a_lazy_filter_result_is_as_true_as_the_json_it_gives() {
    // Found by the `not` property: minijinja's `chain` of values that are not all
    // lists or all maps answers a lazy iterable, true whatever it holds, while the
    // JSON it gives is `[]`, false to a condition.
    let ctx = json!({"steps": {"a": {"output": null}}});
    for e in [
        "steps.a.output | chain",
        "((steps.a.output)[steps.a.output]) | chain",
        "'' | chain('')",
        "[] | zip(steps.a.output | chain)",
    ] {
        assert_eq!(evaluate(e, &ctx), Ok(json!([])), "{e}");
        assert_eq!(
            evaluate(&format!("not ({e})"), &ctx),
            Ok(json!(true)),
            "{e}"
        );
        assert_eq!(
            evaluate(&format!("({e}) or 'empty'"), &ctx),
            Ok(json!("empty")),
            "{e}"
        );
    }
    assert_eq!(
        evaluate("'ab' | chain([1])", &ctx),
        Ok(json!(["a", "b", 1]))
    );
}

#[test]
fn arithmetic_without_a_finite_result_fails_instead_of_turning_null() {
    // Found by the `not` property: `0 / 0` was NaN inside the expression (true to
    // `not`) and `null` once written as JSON.
    let ctx = json!({});
    for e in [
        "0 / 0",
        "-(1 / 0)",
        "1e308 * 10",
        "1e308 + 1e308",
        "-1e308 - 1e308",
        "10.0 ** 400",
        "not (0 / 0)",
        "[1 / 0]",
        "'inf' | float",
    ] {
        assert!(
            matches!(evaluate(e, &ctx), Err(TemplateError::Evaluation(m)) if m.contains("finite")),
            "{e}: {:?}",
            evaluate(e, &ctx)
        );
    }
    assert_eq!(evaluate("1 / 4", &ctx), Ok(json!(0.25)));
    assert_eq!(evaluate("1e300 * 10", &ctx), Ok(json!(1e301)));
}

#[test]
fn repeating_an_empty_list_many_times_answers_at_once() {
    // Found by the grammar property: repeating walked the count even with nothing to
    // repeat, so `[] * 7471179321279025051` kept a step busy for ever.
    let ctx = json!({});
    assert_eq!(evaluate("[] * 7471179321279025051", &ctx), Ok(json!([])));
    assert_eq!(evaluate("'' * 7471179321279025051", &ctx), Ok(json!("")));
    assert_eq!(evaluate("[1, 2] * 2", &ctx), Ok(json!([1, 2, 1, 2])));
}
