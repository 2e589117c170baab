//! Spindle's benchmark: engine overhead per step (W1). A run of N
//! sequential agent steps (a loop whose body is one agent step) against the
//! fake provider answering at once, on the test host, or on `SPINDLE_URL`.
//! Prints a table and writes `target/bench/w1.json`.
//!
//! ```sh
//! cargo run -p spindle-bench --release -- 10 100 1000
//! ```

use serde_json::{Value, json};
use spindle_suite::{Org, Target, fake_llm, shared};
use std::time::{Duration, Instant};

/// One W1 measurement.
struct W1 {
    steps: usize,
    wall_ms: f64,
    /// Time from one step's end to the next one's end, in ms, in run order.
    per_step_ms: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (percentile(&sorted, 50.0), percentile(&sorted, 99.0))
}

fn millis(value: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn run_w1(target: &Target, org: &Org, agent: &str, steps: usize) -> W1 {
    let definition = json!({
        "name": format!("W1 {steps}"),
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "each", "type": "loop", "config": {
                "mode": "for_each", "items": "trigger.items", "max_iterations": steps,
                "body": {"nodes": [{"id": "step", "type": "agent",
                    "config": {"agent_id": agent, "prompt": "step {{ index }}"}}], "edges": []}
            }}
        ],
        "edges": [{"source": "start", "target": "each"}]
    });
    let workflow = target.create(org, "/api/v1/workflows", &definition);
    let items: Vec<usize> = (0..steps).collect();
    let started = Instant::now();
    let reply = target.call(
        "POST",
        &format!("/api/v1/workflows/{workflow}/execute"),
        Some(&org.owner_key),
        Some(&json!({"inputs": {"items": items}})),
    );
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let id = reply.json()["execution_id"].as_str().unwrap().to_string();
    let run = loop {
        let run = target
            .call(
                "GET",
                &format!("/api/v1/executions/{id}"),
                Some(&org.owner_key),
                None,
            )
            .json();
        if run["status"] != "running" {
            break run;
        }
        // Reading the whole run is not free: poll slowly so it does not skew the steps.
        std::thread::sleep(Duration::from_millis(500));
    };
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(run["status"], "completed", "{}", run["error"]);
    let mut ends: Vec<(i64, i64)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node_id"] == "step")
        .filter_map(|s| {
            let index: i64 = s["iteration"]
                .as_str()?
                .strip_prefix("each#")?
                .parse()
                .ok()?;
            Some((index, millis(&s["finished_at"])?))
        })
        .collect();
    ends.sort_unstable();
    assert_eq!(ends.len(), steps, "every step finished");
    let per_step_ms = ends.windows(2).map(|w| (w[1].1 - w[0].1) as f64).collect();
    W1 {
        steps,
        wall_ms,
        per_step_ms,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    let target = shared();
    fake_llm().set_recording(false);
    let org = target.create_org("bench");
    let agent = target.create_agent(&org);
    let mut results = Vec::new();
    println!(
        "{:>6} {:>10} {:>9} {:>20} {:>20}",
        "steps", "wall ms", "ms/step", "first 100 p50/p99", "last 100 p50/p99"
    );
    for steps in sizes {
        let w1 = run_w1(target, &org, &agent, steps);
        let head = &w1.per_step_ms[..w1.per_step_ms.len().min(100)];
        let tail = &w1.per_step_ms[w1.per_step_ms.len().saturating_sub(100)..];
        let (head50, head99) = summary(head);
        let (tail50, tail99) = summary(tail);
        let mean = w1.wall_ms / w1.steps as f64;
        println!(
            "{:>6} {:>10.0} {:>9.2} {:>20} {:>20}",
            w1.steps,
            w1.wall_ms,
            mean,
            format!("{head50:.1} / {head99:.1}"),
            format!("{tail50:.1} / {tail99:.1}")
        );
        results.push(json!({
            "workload": "W1", "steps": w1.steps, "wall_ms": w1.wall_ms, "mean_ms_per_step": mean,
            "first_100": {"p50_ms": head50, "p99_ms": head99},
            "last_100": {"p50_ms": tail50, "p99_ms": tail99},
        }));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let path = out.join("w1.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).expect("write JSON");
    println!("written: {}", path.display());
}
