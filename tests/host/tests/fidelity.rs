//! Serves `tests/probe` on the test host and diffs `fidelity.sh`'s output against
//! what a real Spin 4.0.2 answered (`golden-spin-4.0.2.txt`).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_matches_real_spin() {
    let state = common::fresh_dir("fidelity");
    let host = common::serve(common::probe_options(&state)).await;
    let dir = common::probe_dir();
    let out = tokio::process::Command::new("bash")
        .arg(dir.join("fidelity.sh"))
        .arg(host.url())
        .output()
        .await
        .expect("bash runs fidelity.sh");
    let ours = String::from_utf8_lossy(&out.stdout).into_owned();
    let golden = std::fs::read_to_string(dir.join("golden-spin-4.0.2.txt")).unwrap();
    if ours != golden {
        let ours_file = state.join("ours.txt");
        std::fs::write(&ours_file, &ours).unwrap();
        let diff = std::process::Command::new("diff")
            .arg("-u")
            .arg(dir.join("golden-spin-4.0.2.txt"))
            .arg(&ours_file)
            .output()
            .expect("diff runs");
        panic!(
            "the test host differs from real Spin (golden vs ours):\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    host.shutdown().await;
}
