//! Spindle's benchmark, on the test host (or on `SPINDLE_URL`), with the
//! fake provider answering at once: the workloads of `../shared/peers/`.
//!
//! - W1: engine overhead per step, one run of N sequential agent steps (a loop
//!   of one agent step; N = 10, 100, 1000 and 10,000).
//! - W2: execute call → first step running.
//! - W3: 1, 10 and 50 concurrent runs of 20 steps: steps/s and completion.
//! - W4: W1 and API reads again with 10,000 past executions stored.
//! - W5: component sizes and the time of a minimal request (instantiation).
//!
//! ```sh
//! cargo run -p spindle-bench --release            # all of them
//! cargo run -p spindle-bench --release -- w1 w3   # some
//! ```
//! Prints a table and writes `target/bench/results.json`.

use serde_json::{Value, json};
use spindle_suite::{Org, Target, configured, fake_llm, is_external, shared, suite_variables};
use std::time::{Duration, Instant};

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn millis(value: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A workflow whose run is `steps` sequential agent steps (a loop of one agent step).
fn chain(target: &Target, org: &Org, agent: &str, steps: usize) -> String {
    target.create(
        org,
        "/api/v1/workflows",
        &json!({
            "name": format!("chain of {steps}"),
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "each", "type": "loop", "config": {
                    "mode": "for_each", "items": "trigger.items", "max_iterations": steps.max(1),
                    "body": {"nodes": [{"id": "step", "type": "agent",
                        "config": {"agent_id": agent, "prompt": "step {{ index }}"}}], "edges": []}
                }}
            ],
            "edges": [{"source": "start", "target": "each"}]
        }),
    )
}

/// Starts a run, retrying a `503` (the database was busy past its timeout)
/// as a client should; returns the run's id.
fn start(target: &Target, org: &Org, workflow: &str, steps: usize) -> String {
    let items: Vec<usize> = (0..steps).collect();
    loop {
        let reply = target.call(
            "POST",
            &format!("/api/v1/workflows/{workflow}/execute"),
            Some(&org.owner_key),
            Some(&json!({"inputs": {"items": items}})),
        );
        match reply.status {
            202 => return reply.json()["execution_id"].as_str().unwrap().to_string(),
            503 => BUSY_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            other => panic!(
                "execute answered {other}: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        };
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many starts answered 503 and were sent again.
static BUSY_RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits for the run, polling slowly: reading a long run is not free, and
/// a busy poll would slow the steps it measures.
fn wait(target: &Target, org: &Org, id: &str, poll: Duration) -> Value {
    loop {
        let run = target.execution(org, id);
        if run["status"] != "running" {
            assert_eq!(run["status"], "completed", "{}", run["error"]);
            return run;
        }
        std::thread::sleep(poll);
    }
}

/// The agent steps' end times, in run order.
fn step_ends(run: &Value) -> Vec<i64> {
    let mut ends: Vec<(i64, i64)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node_id"] == "step")
        .filter_map(|s| {
            let index = s["iteration"]
                .as_str()?
                .strip_prefix("each#")?
                .parse()
                .ok()?;
            Some((index, millis(&s["finished_at"])?))
        })
        .collect();
    ends.sort_unstable();
    ends.into_iter().map(|(_, end)| end).collect()
}

/// The mean time of the run's provider calls (ms), from their usage records'
/// `latency_ms` (whole ms each; over many calls the mean is finer).
fn mean_call_ms(target: &Target, org: &Org, execution: &str) -> f64 {
    let (mut total, mut count) = (0i64, 0usize);
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/usage/records?execution_id={execution}&limit=1000");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = target.call("GET", &path, Some(&org.owner_key), None).json();
        for record in page["data"].as_array().into_iter().flatten() {
            total += record["latency_ms"].as_i64().unwrap_or(0);
            count += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    total as f64 / count.max(1) as f64
}

fn w1(target: &Target, org: &Org, agent: &str, sizes: &[usize], label: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for &steps in sizes {
        let workflow = chain(target, org, agent, steps);
        let started = Instant::now();
        let id = start(target, org, &workflow, steps);
        let run = wait(target, org, &id, Duration::from_millis(500));
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        let ends = step_ends(&run);
        assert_eq!(ends.len(), steps);
        let per_step: Vec<f64> = ends.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let head = &per_step[..per_step.len().min(100)];
        let tail = &per_step[per_step.len().saturating_sub(100)..];
        // Whole-run time per step is finer than the ms timestamps of one step.
        let span = (ends.last().unwrap_or(&0) - ends.first().unwrap_or(&0)) as f64;
        let mean = if steps > 1 {
            span / (steps - 1) as f64
        } else {
            wall
        };
        let call = mean_call_ms(target, org, &id);
        println!(
            "{label:<3} N={steps:<5} wall {wall:>8.0} ms  mean {mean:>6.2} ms/step (provider call {call:.2}, overhead {:.2})  first 100 p50/p99 {:>5.1}/{:>5.1}  last 100 {:>5.1}/{:>5.1}",
            mean - call,
            percentile(head, 50.0),
            percentile(head, 99.0),
            percentile(tail, 50.0),
            percentile(tail, 99.0)
        );
        rows.push(json!({
            "workload": label, "steps": steps, "wall_ms": wall, "mean_ms_per_step": mean,
            "mean_provider_call_ms": call, "mean_overhead_ms_per_step": mean - call,
            "first_100": {"p50_ms": percentile(head, 50.0), "p99_ms": percentile(head, 99.0)},
            "last_100": {"p50_ms": percentile(tail, 50.0), "p99_ms": percentile(tail, 99.0)},
        }));
    }
    rows
}

fn w2(target: &Target, org: &Org, agent: &str, runs: usize) -> Value {
    let workflow = chain(target, org, agent, 1);
    let mut latencies = Vec::new();
    for _ in 0..runs {
        let called = now_ms();
        let id = start(target, org, &workflow, 1);
        let run = wait(target, org, &id, Duration::from_millis(5));
        let step = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node_id"] == "step")
            .cloned()
            .unwrap_or_default();
        if let Some(started) = millis(&step["started_at"]) {
            latencies.push((started - called).max(0) as f64);
        }
    }
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    println!("W2  execute → first step running over {runs} runs: p50 {p50:.1} ms  p99 {p99:.1} ms");
    json!({"workload": "W2", "runs": runs, "p50_ms": p50, "p99_ms": p99})
}

fn w3(target: &Target, org: &Org, agent: &str, concurrency: &[usize], steps: usize) -> Vec<Value> {
    let workflow = chain(target, org, agent, steps);
    let mut rows = Vec::new();
    // As in production, a tick picks up a step whose invocation failed.
    let _ticker = target.tick_every(Duration::from_secs(1));
    for &n in concurrency {
        let started = Instant::now();
        let runs: Vec<Value> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let workflow = &workflow;
                    scope.spawn(move || {
                        let id = start(target, org, workflow, steps);
                        // Fifty clients polling every 50 ms would be a
                        // thousand reads a second on two cores: the load
                        // would be the readers, not the runs. The figures
                        // come from the runs' own timestamps, so a slow poll
                        // costs them nothing.
                        wait(target, org, &id, Duration::from_millis(500))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // From the first run's creation to the last one's end, as the
        // engine recorded them.
        let first = runs.iter().filter_map(|r| millis(&r["created_at"])).min();
        let last = runs.iter().filter_map(|r| millis(&r["finished_at"])).max();
        let wall = match (first, last) {
            (Some(first), Some(last)) => (last - first).max(1) as f64 / 1000.0,
            _ => started.elapsed().as_secs_f64(),
        };
        let completions: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some((millis(&r["finished_at"])? - millis(&r["created_at"])?) as f64))
            .collect();
        let steps_per_s = (n * steps) as f64 / wall;
        let (p50, p99) = (
            percentile(&completions, 50.0),
            percentile(&completions, 99.0),
        );
        let busy = BUSY_RETRIES.swap(0, std::sync::atomic::Ordering::Relaxed);
        println!(
            "W3  {n:>2} concurrent runs of {steps} steps: {steps_per_s:>7.1} steps/s  completion p50 {p50:.0} ms  p99 {p99:.0} ms  (503 retried: {busy})"
        );
        rows.push(json!({"workload": "W3", "concurrency": n, "steps": steps,
            "steps_per_s": steps_per_s, "completion_p50_ms": p50, "completion_p99_ms": p99,
            "busy_retries": busy}));
    }
    rows
}

/// Times `count` calls of `path`, in ms.
fn reads(target: &Target, org: &Org, path: &str, count: usize) -> (f64, f64) {
    let mut times = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        let reply = target.call("GET", path, Some(&org.owner_key), None);
        assert_eq!(reply.status, 200, "{path}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    (percentile(&times, 50.0), percentile(&times, 99.0))
}

fn w4(target: &Target, org: &Org, agent: &str, past: usize) -> Vec<Value> {
    let trivial = target.create(
        org,
        "/api/v1/workflows",
        &json!({"name": "history", "nodes": [{"id": "start", "type": "trigger"},
            {"id": "done", "type": "output", "config": {"value": "{{ trigger.n }}"}}],
            "edges": [{"source": "start", "target": "done"}]}),
    );
    let started = Instant::now();
    let mut last = String::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|worker| {
                let trivial = &trivial;
                scope.spawn(move || {
                    let mut last = String::new();
                    for n in (worker..past).step_by(4) {
                        last = target.start_run(org, trivial, json!({"n": n}));
                    }
                    last
                })
            })
            .collect();
        for handle in handles {
            last = handle.join().unwrap();
        }
    });
    println!(
        "W4  stored {past} past executions in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut rows = w1(target, org, agent, &[1000], "W4");
    let one = reads(target, org, &format!("/api/v1/executions/{last}"), 200);
    let list = reads(
        target,
        org,
        &format!("/api/v1/executions?workflow_id={trivial}&status=completed&limit=20"),
        200,
    );
    println!(
        "W4  reads with {past} runs stored: GET /executions/:id p50 {:.2} ms p99 {:.2} ms; filtered list p50 {:.2} ms p99 {:.2} ms",
        one.0, one.1, list.0, list.1
    );
    rows.push(json!({"workload": "W4 reads", "past_executions": past,
        "get_execution": {"p50_ms": one.0, "p99_ms": one.1},
        "filtered_list": {"p50_ms": list.0, "p99_ms": list.1}}));
    rows
}

fn w5(target: &Target) -> Value {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/release");
    let mut sizes = serde_json::Map::new();
    for component in ["accounts", "workflows", "agents", "execute", "usage"] {
        let size = std::fs::metadata(dir.join(format!("{component}.wasm"))).map_or(0, |m| m.len());
        sizes.insert(component.into(), json!(size));
    }
    let mut times = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        assert_eq!(target.get("/healthz").status, 200);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
    println!(
        "W5  sizes {}  GET /healthz (a fresh instance each) p50 {p50:.2} ms p99 {p99:.2} ms",
        Value::Object(sizes.clone())
    );
    json!({"workload": "W5", "component_bytes": sizes, "healthz": {"p50_ms": p50, "p99_ms": p99}})
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).map(|a| a.to_lowercase()).collect();
    let wants = |w: &str| args.is_empty() || args.iter().any(|a| a == w);
    // The benchmark polls and reads fast: lift the per-key rate limit on
    // the test host (a real Spin under SPINDLE_URL needs the same setting).
    let mut variables = suite_variables();
    variables.insert("rate_limit_per_minute".into(), "100000000".into());
    let own = (!is_external()).then(|| configured(variables));
    let target = own.as_ref().unwrap_or_else(|| shared());
    fake_llm().set_recording(false);
    let org = target.create_org("bench");
    let agent = target.create_agent(&org);
    let mut results = Vec::new();
    if wants("w1") {
        results.extend(w1(target, &org, &agent, &[10, 100, 1000, 10_000], "W1"));
    }
    if wants("w2") {
        results.push(w2(target, &org, &agent, 200));
    }
    if wants("w3") {
        results.extend(w3(target, &org, &agent, &[1, 10, 50], 20));
    }
    if wants("w5") {
        results.push(w5(target));
    }
    if wants("w4") {
        results.extend(w4(target, &org, &agent, 10_000));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).expect("write JSON");
    println!("written: {}", path.display());
}
