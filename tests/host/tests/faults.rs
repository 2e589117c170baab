//! Fault injection, `wait_idle`, the invocation counter, routing misses and variables.

mod common;

use spin_test_host::{Fault, Invocation};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_response_drops_the_work_after_it() {
    let state = common::fresh_dir("abort-after");
    let mut opts = common::probe_options(&state);
    // Kill every /post-response invocation once it has answered.
    opts.faults = Some(Arc::new(|inv: &Invocation| {
        if inv.path.starts_with("/post-response") {
            Fault::AbortAfterResponse
        } else {
            Fault::None
        }
    }));
    let host = common::serve(opts).await;
    let url = host.url();

    // The probe busy-loops 300 ms after answering, then writes SQLite, pings
    // itself and records `pr:a:done`: the abort lands well before that.
    let (status, body) = common::get(&format!("{url}/post-response?id=a&busy=300")).await;
    assert_eq!(status, 202, "{body}");
    host.wait_idle().await;
    let (_, done) = common::get(&format!("{url}/kv/get?key=pr:a:done")).await;
    assert_eq!(
        done.trim(),
        "pr:a:done => None",
        "work after the response must not run"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_response_stops_side_effects_at_once() {
    let state = common::fresh_dir("abort-after-exact");
    let mut opts = common::probe_options(&state);
    opts.faults = Some(Arc::new(|inv: &Invocation| {
        if inv.path.starts_with("/post-response") {
            Fault::AbortAfterResponse
        } else {
            Fault::None
        }
    }));
    let host = common::serve(opts).await;
    let url = host.url();

    // No busy work: right after answering, the probe records `pr:<id>:start` in
    // key-value, inserts into SQLite, pings itself and records `pr:<id>:done`.
    // None of it may happen, however the guest and the server race.
    for i in 0..20 {
        let id = format!("x{i}");
        let before = host.invocations();
        let (status, body) = common::get(&format!("{url}/post-response?id={id}")).await;
        assert_eq!(status, 202, "{body}");
        assert!(
            body.starts_with(&format!("accepted id={id} t_set=")) && body.ends_with('\n'),
            "the whole response arrives: {body:?}"
        );
        host.wait_idle().await;
        assert_eq!(host.invocations() - before, 1, "round {i}: no self ping");
        for key in [
            format!("pr:{id}:start"),
            format!("pr:{id}:done"),
            format!("ping:pr-{id}"),
        ] {
            let (_, got) = common::get(&format!("{url}/kv/get?key={key}")).await;
            assert_eq!(got.trim(), format!("{key} => None"), "round {i}");
        }
    }
    host.shutdown().await;

    // The probe's `pr` table got no row (it is not even created).
    let db = rusqlite::Connection::open(state.join("sqlite_db.db")).unwrap();
    let rows = db
        .query_row("SELECT count(*) FROM pr", [], |r| r.get::<_, i64>(0))
        .unwrap_or(0);
    assert_eq!(rows, 0, "no SQLite insert after the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_after_response_runs_and_wait_idle_waits_for_it() {
    let state = common::fresh_dir("after");
    let host = common::serve(common::probe_options(&state)).await;
    let url = host.url();
    let before = host.invocations();
    let (status, _) = common::get(&format!("{url}/post-response?id=b&busy=300")).await;
    assert_eq!(status, 202);
    // The 202 came at once; the busy work and the self ping follow it.
    host.wait_idle().await;
    let (_, done) = common::get(&format!("{url}/kv/get?key=pr:b:done")).await;
    assert!(done.contains("sqlite_insert=Ok([])"), "{done}");
    assert!(done.contains("self_ping=200 pong"), "{done}");
    // post-response, its self ping, and the kv read.
    assert_eq!(host.invocations() - before, 3);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_response_fails_the_connection_and_self_requests() {
    let state = common::fresh_dir("abort-before");
    let mut opts = common::probe_options(&state);
    opts.faults = Some(Arc::new(|inv: &Invocation| {
        if inv.path.starts_with("/trivial") || inv.path.starts_with("/internal/ping") {
            Fault::AbortBeforeResponse
        } else {
            Fault::None
        }
    }));
    let host = common::serve(opts).await;
    let url = host.url();
    let (status, _) = common::get(&format!("{url}/trivial")).await;
    assert_eq!(status, 0, "the client's connection fails");
    let (status, body) = common::get(&format!("{url}/out?u=/internal/ping")).await;
    assert_eq!(status, 200);
    assert!(body.contains("-> ERR"), "the self request fails: {body}");
    host.wait_idle().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_paths_get_spins_empty_404() {
    let state = common::fresh_dir("404");
    let mut opts = common::probe_options(&state);
    // The probe without its catch-all (`main` serves only /headers/... now).
    let manifest = std::fs::read_to_string(&opts.manifest).unwrap();
    let without_catch_all = manifest.replacen("route = \"/...\"", "route = \"/headers/...\"", 1);
    let path = common::probe_dir().join(format!("spin-404-{}.toml", std::process::id()));
    std::fs::write(&path, without_catch_all).unwrap();
    opts.manifest = path.clone();
    let host = common::serve(opts).await;
    let _ = std::fs::remove_file(&path);
    let url = host.url();
    assert_eq!(
        common::get(&format!("{url}/nowhere")).await,
        (404, String::new())
    );
    assert_eq!(host.invocations(), 0, "a 404 runs no component");
    assert_eq!(common::get(&format!("{url}/noself/var")).await.0, 200);
    assert_eq!(host.invocations(), 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_are_per_component_and_overridable() {
    let state = common::fresh_dir("vars");
    let mut opts = common::probe_options(&state);
    opts.variables.insert("foo".into(), "from-api".into());
    let host = common::serve(opts).await;
    let url = host.url();
    assert_eq!(
        common::get(&format!("{url}/var")).await.1,
        "foo=Ok(\"from-api\")\n"
    );
    // `noself` maps only `whoami`: `foo` is Undefined there.
    let (_, body) = common::get(&format!("{url}/noself/var")).await;
    assert!(body.starts_with("foo=Err(Error::Undefined("), "{body}");
    host.shutdown().await;
}

#[tokio::test]
async fn refuses_to_start_like_spin() {
    let state = common::fresh_dir("refuse");
    let opts = common::probe_options(&state);
    let manifest = std::fs::read_to_string(&opts.manifest).unwrap();
    for (what, edited) in [
        (
            "unconfigured kv label",
            manifest.replacen(
                "key_value_stores = [\"default\"]",
                "key_value_stores = [\"other\"]",
                1,
            ),
        ),
        (
            "unconfigured sqlite label",
            manifest.replacen(
                "sqlite_databases = [\"default\"]",
                "sqlite_databases = [\"other\"]",
                1,
            ),
        ),
        (
            "required variable without value",
            manifest.replacen("foo = { default = \"x\" }", "foo = { required = true }", 1),
        ),
        (
            "bad allowed host",
            manifest.replacen("\"http://self\", ", "\"self\", ", 1),
        ),
    ] {
        assert_ne!(edited, manifest, "{what}: edit applied");
        let path = common::probe_dir().join(format!("spin-refuse-{}.toml", std::process::id()));
        std::fs::write(&path, edited).unwrap();
        let mut o = opts.clone();
        o.manifest = path.clone();
        let result = spin_test_host::serve(o).await;
        let _ = std::fs::remove_file(&path);
        assert!(result.is_err(), "{what}: must refuse to start");
    }
}
