//! Shared by the integration tests: serving the probe app on a fresh state dir.

use spin_test_host::{HostOptions, RunningHost};
use std::path::{Path, PathBuf};

/// `tests/probe`, the probe app (a spin-sdk 5.2 app whose answers a real Spin recorded).
pub fn probe_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../probe")
}

/// Options for the probe on a fresh state dir; fails clearly when the wasm is not built.
pub fn probe_options(state: &Path) -> HostOptions {
    let wasm =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/release/probe.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: build it first with `cargo build --target wasm32-wasip2 --release -p probe`",
        wasm.display()
    );
    HostOptions::new(probe_dir().join("spin.toml"), state)
}

/// Serves the probe with `opts`.
pub async fn serve(opts: HostOptions) -> RunningHost {
    spin_test_host::serve(opts).await.expect("probe app starts")
}

/// A fresh, empty state directory under the target dir's test scratch space.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("spin-test-host-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// GET `url`, returning status and body (status 0 if the connection failed).
#[allow(dead_code)] // not every test file uses it
pub async fn get(url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-m", "20", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}
