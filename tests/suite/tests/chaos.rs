//! Chaos: 100 runs of mixed shapes (a chain, a fan-out and join, a condition on
//! structured output, a loop with an agent body, an http call) while the test host
//! kills random invocations (before and after they answer), the fake provider answers
//! with random 429s, 500s, malformed bodies and slow successes, some runs are
//! cancelled midway, and the tick runs every 150 ms. Then:
//!
//! - every run ends completed, failed or cancelled (none stuck);
//! - no step output is written twice: each (node, iteration) has one step per run and
//!   each step at most one successful usage record;
//! - successful provider calls (the fake's count) = succeeded usage records = billed
//!   steps (agent steps with a billed cost);
//! - the usage summary's billed total = the sum of the runs' billed costs, and each
//!   run's cost = the sum of its steps'.
//!
//! Every random choice comes from one seed: `CHAOS_SEED` or a fixed default, printed
//! at the start (`CHAOS_SEED=42 cargo test -p spindle-suite --test chaos -- --nocapture`).
//! The seed fixes the plan (which workflow and inputs each run gets, which runs are
//! cancelled and when, the provider's scripted answers per model, and the fault of the
//! host's n-th invocation), not the interleaving: under concurrency the invocations
//! and provider requests arrive in a different order each time, so a failing seed
//! reproduces the same mix of faults but not necessarily the same schedule.
//!
//! The exact accounting holds because the faults cannot kill an instance between a
//! provider's answer and the step's store (README, "Status lifecycle": the provider is
//! then called again, and the organisation billed once): `AbortBeforeResponse` runs none of the component's code, and
//! `AbortAfterResponse` stops the instance at its first host call after answering, so
//! a step invocation (which answers as soon as it has claimed the step) dies before it
//! calls the provider. Agents have no tools, so a step makes one successful call.
//!
//! The workload runs under two kinds of faults:
//! - `host_faults::a_hundred_runs_survive_dying_invocations_and_a_faulty_provider`
//!   (test host only: it needs the host's fault injection) kills single invocations;
//! - `a_hundred_runs_survive_a_host_killed_mid_work_and_a_faulty_provider` (the test
//!   host and real Spin alike) kills the whole app at seeded moments and starts it
//!   again on the same state, as when a machine dies. Such a kill can fall between a
//!   provider's answer and the step's store: that step's call is then made again, so
//!   there the fake may count more successes than were billed (each extra one is a
//!   call whose answer was lost with the host), never fewer.

use fake_llm::{Dialect, Reply};
use serde_json::{Value, json};
use spin_test_host::{Fault, Invocation};
use spindle_suite::{
    Org, Target, configured, configured_with_faults, fake_llm, fake_turn, suite_variables,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const RUNS: usize = 100;
/// How many times `KilledHost` kills the app while the runs go on.
const HOST_KILLS: usize = 4;
const DEFAULT_SEED: u64 = 0x5EED_C4A0_5001;

/// How long a claimed step may run before the tick hands it to another invocation.
/// The exact accounting needs every live step to finish inside its lease (a step
/// still running when its lease lapses is run again, and its provider called again).
/// A step keeps its waits for the provider within a quarter of its lease (see
/// `a_step_retrying_past_its_lease_calls_the_provider_once`), but up to 4 slow
/// answers add to that: a lease of 10 s leaves room for them on a loaded machine.
const STEP_LEASE_MS: u64 = 10_000;

/// splitmix64: a small, seedable, well-mixed generator for every random choice.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fault of the host's `seq`-th invocation, from the seed alone (per mille).
fn fault_for(seed: u64, inv: &Invocation) -> Fault {
    let roll = mix(seed ^ mix(inv.seq.wrapping_add(0xFA17))) % 1000;
    let path = inv.path.as_str();
    if path.starts_with("/internal/steps/") {
        match roll {
            0..100 => Fault::AbortBeforeResponse,
            100..200 => Fault::AbortAfterResponse,
            _ => Fault::None,
        }
    } else if path.starts_with("/internal/tick") {
        match roll {
            0..50 => Fault::AbortBeforeResponse,
            50..100 => Fault::AbortAfterResponse,
            _ => Fault::None,
        }
    } else if path.starts_with("/api/v1/workflows/") && path.ends_with("/execute") {
        // The client must get its answer (the run's id): only after it.
        if roll < 100 {
            Fault::AbortAfterResponse
        } else {
            Fault::None
        }
    } else {
        Fault::None
    }
}

const WRITER: &str = "gpt-4o-mini";
const CRITIC: &str = "claude-3-5-haiku";
const SCORER: &str = "gpt-4o";
/// The model the http node asks the fake's Gemini endpoint for; agents use no Gemini
/// model, so the fake's Gemini successes are the http node's, not provider calls.
const HTTP_PROBE: &str = "http-probe";

/// Scripts `count` answers for `model`: mostly successes (some slow), with 429s,
/// 500s and malformed bodies mixed in. The first three are one of each fault, so
/// that every kind reaches a run whatever the seed (the runs use only the start
/// of each script).
fn script(
    rng: &mut Rng,
    model: &str,
    count: usize,
    structured: bool,
) -> BTreeMap<&'static str, usize> {
    let mut kinds = BTreeMap::new();
    for i in 0..count {
        let roll = match i {
            0 => 0,
            1 => 25,
            2 => 85,
            _ => rng.below(1000),
        };
        let success = || {
            let text = if structured {
                format!("{{\"score\": {}}}", rng_score(i))
            } else {
                format!("{model} answer {i}")
            };
            Reply::text(text).tokens(300 + (i as u64 % 700), 40 + (i as u64 % 160))
        };
        let (kind, reply) = match roll {
            0..25 => ("429", Reply::rate_limited(1)),
            25..85 => ("500", Reply::server_error()),
            85..135 => ("malformed", Reply::malformed()),
            135..185 => ("slow", success().after(Duration::from_millis(300))),
            _ => ("ok", success()),
        };
        *kinds.entry(kind).or_default() += 1;
        fake_llm().push_for_model(model, reply);
    }
    kinds
}

fn rng_score(i: usize) -> u64 {
    mix(i as u64) % 100
}

/// The http node's service: mostly fine, sometimes 500 or 429.
fn script_http(rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let reply = match rng.below(100) {
            0..8 => Reply::server_error(),
            8..10 => Reply::rate_limited(1),
            _ => Reply::text("probe ok").tokens(5, 2),
        };
        fake_llm().push_for_model(HTTP_PROBE, reply);
    }
}

fn agent(target: &Target, org: &Org, provider: &str, model: &str) -> String {
    target.create(
        org,
        "/api/v1/agents",
        &json!({"name": model, "model_config": {"provider": provider, "model": model, "max_tokens": 300}}),
    )
}

struct Agents {
    writer: String,
    critic: String,
    scorer: String,
}

/// The five shapes, as (name, definition).
fn workflows(agents: &Agents) -> Vec<(&'static str, Value)> {
    let Agents {
        writer,
        critic,
        scorer,
    } = agents;
    let retry = |attempts: u32| json!({"max_attempts": attempts, "backoff_ms": 150});
    let probe = format!(
        "{}/v1beta/models/{HTTP_PROBE}:generateContent",
        fake_llm().url()
    );
    vec![
        (
            "chain",
            json!({"name": "chain", "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "draft", "type": "agent", "config": {"agent_id": writer, "prompt": "Draft {{ trigger.topic }}"}},
                {"id": "review", "type": "agent", "retry": retry(3), "config": {"agent_id": critic, "prompt": "Review {{ steps.draft.output }}"}},
                {"id": "polish", "type": "agent", "on_error": "continue", "config": {"agent_id": writer, "prompt": "Polish {{ steps.review.output }}"}},
                {"id": "done", "type": "output", "config": {"value": {"text": "{{ steps.polish.output }}"}}}
            ], "edges": [
                {"source": "start", "target": "draft"}, {"source": "draft", "target": "review"},
                {"source": "review", "target": "polish"}, {"source": "polish", "target": "done"}
            ]}),
        ),
        (
            "fan-out",
            json!({"name": "fan-out", "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "a", "type": "agent", "config": {"agent_id": writer, "prompt": "A: {{ trigger.topic }}"}},
                {"id": "b", "type": "agent", "on_error": "continue", "config": {"agent_id": critic, "prompt": "B: {{ trigger.topic }}"}},
                {"id": "c", "type": "agent", "retry": retry(2), "config": {"agent_id": writer, "prompt": "C: {{ trigger.topic }}"}},
                {"id": "join", "type": "transform", "config": {"template": {"a": "{{ steps.a.output }}", "b": "{{ steps.b.output }}", "c": "{{ steps.c.output }}"}}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ], "edges": [
                {"source": "start", "target": "a"}, {"source": "start", "target": "b"}, {"source": "start", "target": "c"},
                {"source": "a", "target": "join"}, {"source": "b", "target": "join"}, {"source": "c", "target": "join"},
                {"source": "join", "target": "done"}
            ]}),
        ),
        (
            "condition",
            json!({"name": "condition", "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "score", "type": "agent", "retry": retry(3), "config": {"agent_id": scorer, "prompt": "Score {{ trigger.topic }}",
                    "output_schema": {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}}},
                {"id": "check", "type": "condition", "config": {"expression": "steps.score.output.score >= 50"}},
                {"id": "hot", "type": "agent", "config": {"agent_id": critic, "prompt": "Pitch {{ trigger.topic }} ({{ steps.score.output.score }})"}},
                {"id": "cold", "type": "transform", "config": {"template": "cold at {{ steps.score.output.score }}"}},
                {"id": "out", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ], "edges": [
                {"source": "start", "target": "score"}, {"source": "score", "target": "check"},
                {"source": "check", "target": "hot", "source_handle": "true"},
                {"source": "check", "target": "cold", "source_handle": "false"},
                {"source": "hot", "target": "out"}, {"source": "cold", "target": "out"}
            ]}),
        ),
        (
            "loop",
            json!({"name": "loop", "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "each", "type": "loop", "config": {"mode": "for_each", "items": "trigger.items", "body": {
                    "nodes": [{"id": "sum", "type": "agent", "retry": retry(2),
                        "config": {"agent_id": writer, "prompt": "Summarise {{ item }} (#{{ index }})"}}],
                    "edges": []
                }}},
                {"id": "done", "type": "output", "config": {"value": "{{ steps.each.output }}"}}
            ], "edges": [
                {"source": "start", "target": "each"}, {"source": "each", "target": "done"}
            ]}),
        ),
        (
            "http",
            json!({"name": "http", "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "call", "type": "http", "retry": retry(3), "timeout_ms": 3000, "config": {"method": "POST", "url": probe,
                    "body": {"contents": [{"parts": [{"text": "{{ trigger.topic }}"}]}]}}},
                {"id": "digest", "type": "agent", "config": {"agent_id": critic, "prompt": "Digest {{ trigger.topic }}: {{ steps.call.output.status }}"}},
                {"id": "done", "type": "output", "config": {"value": "{{ steps.digest.output }}"}}
            ], "edges": [
                {"source": "start", "target": "call"}, {"source": "call", "target": "digest"},
                {"source": "digest", "target": "done"}
            ]}),
        ),
    ]
}

/// How long a client keeps trying while the app is unreachable (killed and starting again).
const OUTAGE_PATIENCE: Duration = Duration::from_secs(60);

/// `method path` as the org's owner, retried while storage is busy (503) or the app
/// cannot be reached (killed, starting again); any other status is the answer.
fn call(
    target: &Target,
    org: &Org,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> spindle_suite::Reply {
    let authorization = format!("Bearer {}", org.owner_key);
    let mut all = vec![
        ("content-type", "application/json"),
        ("authorization", authorization.as_str()),
    ];
    all.extend_from_slice(headers);
    let body = body.map(Value::to_string);
    let deadline = Instant::now() + OUTAGE_PATIENCE;
    loop {
        match target.try_request(method, path, &all, body.as_deref().map(str::as_bytes)) {
            Ok(reply) if reply.status != 503 => return reply,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Ok(reply) => panic!(
                "{method} {path}: storage stayed busy: {}",
                String::from_utf8_lossy(&reply.body)
            ),
            Err(e) => panic!("{method} {path}: the app stayed unreachable: {e}"),
        }
    }
}

/// Starts a run. Retried through outages under an idempotency key, so a start whose
/// answer was lost with a killed app is not started twice.
fn start(target: &Target, org: &Org, workflow: &str, inputs: &Value, key: &str) -> String {
    let reply = call(
        target,
        org,
        "POST",
        &format!("/api/v1/workflows/{workflow}/execute"),
        &[("idempotency-key", key)],
        Some(&json!({"inputs": inputs})),
    );
    assert!(
        [200, 202].contains(&reply.status),
        "starting a run: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["execution_id"].as_str().unwrap().to_string()
}

/// `GET path` as the org's owner through busy storage and outages; panics unless 200.
fn get(target: &Target, org: &Org, path: &str) -> Value {
    let reply = call(target, org, "GET", path, &[], None);
    assert_eq!(
        reply.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

fn count(target: &Target, org: &Org, status: &str) -> u64 {
    get(
        target,
        org,
        &format!("/api/v1/executions?status={status}&limit=1"),
    )["total"]
        .as_u64()
        .unwrap()
}

/// One planned run: its workflow, inputs, and when (ms after its start) to cancel it.
struct Planned {
    shape: usize,
    inputs: Value,
    cancel_after: Option<u64>,
}

/// What goes wrong while the hundred runs go on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Faults {
    /// The test host kills single invocations, before and after they answer.
    DyingInvocations,
    /// The whole app is killed at seeded moments and started again on its state.
    KilledHost,
}

#[test]
fn a_hundred_runs_survive_a_host_killed_mid_work_and_a_faulty_provider() {
    chaos(Faults::KilledHost);
}

mod host_faults {
    #[test]
    fn a_hundred_runs_survive_dying_invocations_and_a_faulty_provider() {
        super::chaos(super::Faults::DyingInvocations);
    }
}

fn chaos(faults: Faults) {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .map(|s| {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |hex| u64::from_str_radix(hex, 16))
                .expect("CHAOS_SEED is a number")
        })
        .unwrap_or(DEFAULT_SEED);
    eprintln!("chaos seed: {seed} (rerun with CHAOS_SEED={seed})");
    let _turn = fake_turn();
    let mut variables = suite_variables();
    variables.insert("step_lease_ms".into(), STEP_LEASE_MS.to_string());
    // The test polls and starts runs faster than the default 600 requests a minute.
    variables.insert("rate_limit_per_minute".into(), "1000000".into());
    // How many invocations died before and after answering, and how often the app did.
    let killed = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let target = match faults {
        Faults::DyingInvocations => {
            let plan = {
                let killed = killed.clone();
                move |inv: &Invocation| {
                    let fault = fault_for(seed, inv);
                    match fault {
                        Fault::AbortBeforeResponse => killed[0].fetch_add(1, Ordering::Relaxed),
                        Fault::AbortAfterResponse => killed[1].fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                    fault
                }
            };
            configured_with_faults(variables, Arc::new(plan))
        }
        Faults::KilledHost => configured(variables),
    };
    let started = Instant::now();
    let org = target.create_org("chaos");
    let agents = Agents {
        writer: agent(&target, &org, "openai", WRITER),
        critic: agent(&target, &org, "anthropic", CRITIC),
        scorer: agent(&target, &org, "openai", SCORER),
    };
    let shapes = workflows(&agents);
    let workflow_ids: Vec<String> = shapes
        .iter()
        .map(|(_, definition)| target.create(&org, "/api/v1/workflows", definition))
        .collect();

    // The plan, all from the seed.
    let mut rng = Rng(seed);
    let planned: Vec<Planned> = (0..RUNS)
        .map(|i| {
            let shape = rng.below(shapes.len() as u64) as usize;
            let items: Vec<String> = (0..3 + rng.below(3))
                .map(|k| format!("item {i}.{k}"))
                .collect();
            let cancel_after = (rng.below(100) < 6).then(|| 200 + rng.below(2_500));
            Planned {
                shape,
                inputs: json!({"topic": format!("topic {i}"), "items": items}),
                cancel_after,
            }
        })
        .collect();
    let mixes = [
        (WRITER, script(&mut rng, WRITER, 1_500, false)),
        (CRITIC, script(&mut rng, CRITIC, 1_000, false)),
        (SCORER, script(&mut rng, SCORER, 400, true)),
    ];
    script_http(&mut rng, 300);
    eprintln!("chaos: provider scripts {mixes:?}");

    // Start the runs in four concurrent batches while the tick runs.
    let ticker = target.tick_every(Duration::from_millis(150));
    // With `KilledHost`, the app dies at seeded moments until every run has ended.
    let ended = AtomicBool::new(false);
    let runs = std::thread::scope(|scope| {
        if faults == Faults::KilledHost {
            let (target, ended, killed) = (&target, &ended, &killed);
            let pauses: Vec<u64> = (0..HOST_KILLS).map(|_| 500 + rng.below(3_000)).collect();
            scope.spawn(move || {
                for pause in pauses {
                    let until = Instant::now() + Duration::from_millis(pause);
                    while Instant::now() < until {
                        if ended.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    target.kill_and_restart();
                    killed[2].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let runs: Vec<(usize, String, Instant)> = std::thread::scope(|scope| {
            let batches: Vec<_> = planned
                .chunks(RUNS / 4)
                .enumerate()
                .map(|(batch, chunk)| {
                    let (target, org, workflow_ids) = (&target, &org, &workflow_ids);
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .enumerate()
                            .map(|(k, run)| {
                                let i = batch * (RUNS / 4) + k;
                                let key = format!("chaos-{seed}-{i}");
                                let id =
                                    start(target, org, &workflow_ids[run.shape], &run.inputs, &key);
                                (i, id, Instant::now())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            batches
                .into_iter()
                .flat_map(|b| b.join().expect("a batch starts its runs"))
                .collect()
        });
        eprintln!("chaos: {RUNS} runs started in {:?}", started.elapsed());

        // Cancel the planned ones when their time comes (409 if they ended first).
        let mut cancels: Vec<(Instant, &str)> = runs
            .iter()
            .filter_map(|(i, id, at)| {
                planned[*i]
                    .cancel_after
                    .map(|ms| (*at + Duration::from_millis(ms), id.as_str()))
            })
            .collect();
        cancels.sort();
        for (when, id) in &cancels {
            std::thread::sleep(when.saturating_duration_since(Instant::now()));
            let reply = call(
                &target,
                &org,
                "POST",
                &format!("/api/v1/executions/{id}/cancel"),
                &[],
                None,
            );
            assert!(
                [200, 409].contains(&reply.status),
                "cancel {id}: {}",
                reply.status
            );
        }

        // Every run ends.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let live = count(&target, &org, "running") + count(&target, &org, "pending");
            if live == 0 {
                break;
            }
            if Instant::now() > deadline {
                let stuck: Vec<Value> = runs
                    .iter()
                    .map(|(_, id, _)| get(&target, &org, &format!("/api/v1/executions/{id}")))
                    .filter(|run| {
                        !["completed", "failed", "cancelled"]
                            .contains(&run["status"].as_str().unwrap_or(""))
                    })
                    .collect();
                panic!("seed {seed}: {} runs stuck: {stuck:#?}", stuck.len());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        ended.store(true, Ordering::SeqCst);
        runs
    });
    eprintln!("chaos: every run ended after {:?}", started.elapsed());

    // Steps of runs that ended (failed, cancelled) may still be finishing: wait until
    // the fake has seen no request for a while (longer than a step's retry waits).
    let mut seen = fake_llm().received().len();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(250));
        let now_seen = fake_llm().received().len();
        if now_seen != seen {
            (seen, quiet_since) = (now_seen, Instant::now());
        }
    }
    drop(ticker);

    // The runs, their steps and the usage records.
    let executions: Vec<Value> = runs
        .iter()
        .map(|(_, id, _)| get(&target, &org, &format!("/api/v1/executions/{id}")))
        .collect();
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/usage/records?limit=1000".to_string();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = get(&target, &org, &path);
        records.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let summary = get(&target, &org, "/api/v1/usage/summary");

    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_shape: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut billed_steps = HashSet::new();
    let mut runs_billed = 0i64;
    // Steps that finished after their run had ended (running when a sibling failed
    // or the run was cancelled): the case whose cost the run's totals once missed.
    let mut late_steps = 0;
    // Steps with a gap in their attempt log: an attempt whose instance died
    // after claiming the step (README, "Status lifecycle"), the product's own
    // trace of a kill.
    let mut gapped_steps = 0;
    for ((i, id, _), run) in runs.iter().zip(&executions) {
        let status = run["status"].as_str().unwrap_or("?").to_string();
        *statuses.entry(status.clone()).or_default() += 1;
        *by_shape
            .entry((shapes[planned[*i].shape].0, status))
            .or_default() += 1;
        let steps = run["steps"].as_array().unwrap();
        let mut keys = HashSet::new();
        let mut steps_billed = 0;
        for step in steps {
            let key = (step["node_id"].clone(), step["iteration"].clone());
            if !keys.insert(key.clone()) {
                problems.push(format!("run {id}: step {key:?} stored twice"));
            }
            let billed = step["cost"]["billed_micros"].as_i64().unwrap_or(0);
            steps_billed += billed;
            if billed > 0 {
                billed_steps.insert(step["id"].as_str().unwrap().to_string());
            }
        }
        gapped_steps += steps
            .iter()
            .filter(|s| {
                let log = s["attempt_log"].as_array().map_or(&[][..], Vec::as_slice);
                log.iter()
                    .zip(1..)
                    .any(|(entry, attempt)| entry["attempt"] != attempt)
            })
            .count();
        let ended = run["finished_at"].as_str().unwrap_or("");
        late_steps += steps
            .iter()
            .filter(|s| {
                s["finished_at"]
                    .as_str()
                    .is_some_and(|f| !ended.is_empty() && f > ended)
            })
            .count();
        let run_billed = run["cost"]["billed_micros"].as_i64().unwrap_or(0);
        if run_billed != steps_billed {
            problems.push(format!(
                "run {id} ({}, {}): cost {run_billed} but its steps cost {steps_billed}",
                shapes[planned[*i].shape].0, run["status"]
            ));
        }
        runs_billed += run_billed;
    }
    let succeeded: Vec<&Value> = records
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .collect();
    let mut per_step: HashMap<&str, usize> = HashMap::new();
    for record in &succeeded {
        let step = record["step_id"].as_str().unwrap_or("none");
        *per_step.entry(step).or_default() += 1;
    }
    for (step, n) in &per_step {
        if *n > 1 {
            problems.push(format!("step {step}: {n} successful provider calls"));
        }
    }
    for step in per_step.keys() {
        if !billed_steps.contains(*step) {
            problems.push(format!(
                "step {step}: a successful call, but the step is not billed"
            ));
        }
    }
    let provider_successes =
        fake_llm().successes(Dialect::OpenAi) + fake_llm().successes(Dialect::Anthropic);
    let all_successes = provider_successes + fake_llm().successes(Dialect::Gemini);
    // What the fake really served: 429s, 500s, and 200s that were no success
    // (the malformed bodies).
    let served = [
        fake_llm().answered(429),
        fake_llm().answered(500),
        fake_llm().answered(200) - all_successes,
    ];
    let summary_billed = summary["totals"]["billed_cost_micros"].as_i64().unwrap();
    let killed = killed.each_ref().map(|count| count.load(Ordering::Relaxed));
    eprintln!(
        "chaos: {statuses:?} by shape {by_shape:?}; invocations killed before/after answering \
         {}/{}, the app {} times, steps with a gap in their attempts {gapped_steps}, steps \
         finished after their run {late_steps}; served 429/500/malformed {served:?}; provider \
         successes {provider_successes}, succeeded records {}, billed steps {}, records {}, \
         summary billed {summary_billed}, runs billed {runs_billed}; {:?} in all",
        killed[0],
        killed[1],
        killed[2],
        succeeded.len(),
        billed_steps.len(),
        records.len(),
        started.elapsed()
    );
    // A killed app can lose a provider's answer before its step stored it (see the
    // module's docs): then the fake counts more successes than were billed, never fewer.
    let lost_answers_allowed = faults == Faults::KilledHost;
    let successes_match = if lost_answers_allowed {
        provider_successes >= succeeded.len()
    } else {
        provider_successes == succeeded.len()
    };
    if !successes_match || succeeded.len() != billed_steps.len() {
        problems.push(format!(
            "provider successes {provider_successes}, succeeded usage records {}, billed steps {}",
            succeeded.len(),
            billed_steps.len()
        ));
    }
    if summary_billed != runs_billed {
        problems.push(format!(
            "the usage summary bills {summary_billed}, the runs {runs_billed}"
        ));
    }
    // The faults really happened: a chaos run without them proves nothing.
    if served.contains(&0) {
        problems.push(format!(
            "the provider served 429/500/malformed {served:?}: a kind of fault never reached a run"
        ));
    }
    match faults {
        Faults::DyingInvocations if killed[0] == 0 || killed[1] == 0 || gapped_steps == 0 => {
            problems.push(format!(
                "invocations killed before/after answering {}/{}, steps with a gap in their \
                 attempts {gapped_steps}: the host's fault injection did not kill invocations",
                killed[0], killed[1]
            ));
        }
        Faults::KilledHost if killed[2] == 0 => {
            problems.push("the app was never killed while the runs went on".to_string());
        }
        _ => {}
    }
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(statuses.values().sum::<usize>(), RUNS);
}

/// An agent step waits out a provider's `Retry-After` between attempts with the
/// step queued, not leased: three waits of 1 s outlast the suite's 2 s lease, yet
/// the tick never hands the step to a second invocation, and the provider answers
/// one call with success.
#[test]
fn a_step_retrying_past_its_lease_calls_the_provider_once() {
    let _turn = fake_turn();
    let target = configured(suite_variables());
    let org = target.create_org("chaos-lease");
    let writer = agent(&target, &org, "openai", WRITER);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "one", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "draft", "type": "agent", "retry": {"max_attempts": 4, "backoff_ms": 100},
                "config": {"agent_id": writer, "prompt": "Draft"}},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.draft.output }}"}}
        ], "edges": [{"source": "start", "target": "draft"}, {"source": "draft", "target": "done"}]}),
    );
    for reply in [
        Reply::rate_limited(1),
        Reply::rate_limited(1),
        Reply::rate_limited(1),
        Reply::text("first").tokens(100, 10),
        Reply::text("second").tokens(100, 10),
    ] {
        fake_llm().push_for_model(WRITER, reply);
    }
    let _ticker = target.tick_every(Duration::from_millis(100));
    let id = start(&target, &org, &workflow, &json!({}), "lease-once");
    let run = target.finished(&org, &id);
    // Asserts that nothing more happens: a second invocation handed the step
    // would still be in a Retry-After wait (1 s), then call the provider again,
    // so the ticks go on for longer than a wait and a lease (2 s) before the
    // fake's successes are counted.
    std::thread::sleep(Duration::from_secs(4));
    let records = get(&target, &org, "/api/v1/usage/records?status=succeeded");
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "first", "{run}");
    assert_eq!(fake_llm().successes(Dialect::OpenAi), 1, "{records}");
    assert_eq!(records["data"].as_array().unwrap().len(), 1, "{records}");
}

/// A provider call that succeeds but whose answer the step cannot use (prose where
/// the node's `output_schema` asks for JSON: `invalid_structured_output`) is billed,
/// and the failed step, and so the run, carries that cost: the usage summary and the
/// run agree.
#[test]
fn a_step_failing_after_a_billed_call_keeps_its_cost() {
    let _turn = fake_turn();
    let target = configured(suite_variables());
    let org = target.create_org("chaos-structured");
    let scorer = agent(&target, &org, "openai", SCORER);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "score", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "score", "type": "agent", "config": {"agent_id": scorer, "prompt": "Score",
                "output_schema": {"type": "object"}}}
        ], "edges": [{"source": "start", "target": "score"}]}),
    );
    fake_llm().push_for_model(SCORER, Reply::text("Sure! It scores 7.").tokens(1000, 100));
    let run = target.finished(
        &org,
        &start(&target, &org, &workflow, &json!({}), "billed-then-failed"),
    );
    assert_eq!(run["status"], "failed", "{run}");
    // gpt-4o at $2.50/M input and $10/M output: 1000 × 2.5 + 100 × 10 =
    // 3500 µ$, billed × 1.2 = 4200, although the answer was unusable.
    let summary = get(&target, &org, "/api/v1/usage/summary");
    assert_eq!(summary["totals"]["billed_cost_micros"], 4200, "{summary}");
    assert_eq!(
        run["cost"]["billed_micros"], 4200,
        "the run's cost is the sum of its usage records: {run}"
    );

    // A retry replaces the failed step; the call it made stays in the run's cost.
    fake_llm().push_for_model(SCORER, Reply::text(r#"{"score": 7}"#).tokens(1000, 100));
    let id = run["id"].as_str().unwrap();
    let path = format!("/api/v1/executions/{id}/retry");
    let retried = target.call("POST", &path, Some(&org.owner_key), None);
    assert_eq!(
        retried.status,
        202,
        "{:?}",
        String::from_utf8_lossy(&retried.body)
    );
    let run = target.finished(&org, id);
    assert_eq!(run["status"], "completed", "{run}");
    let summary = get(&target, &org, "/api/v1/usage/summary");
    assert_eq!(summary["totals"]["calls"], 2, "{summary}");
    assert_eq!(summary["totals"]["billed_cost_micros"], 8400, "{summary}");
    assert_eq!(
        run["cost"]["billed_micros"], 8400,
        "both calls are the run's: {run}"
    );
}
