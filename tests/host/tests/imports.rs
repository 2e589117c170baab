//! The host provides exactly the world `route`: a component that imports
//! anything else is refused at load, as it would fail on some Spin host.

use spin_test_host::HostOptions;
use std::path::Path;
use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
use wit_parser::{ManglingAndAbi, Resolve};

/// A component of a world that includes `route` plus `extra`'s imports.
fn component_with(extra: &str) -> Vec<u8> {
    let mut resolve = Resolve::default();
    resolve
        .push_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit"))
        .unwrap();
    let package = resolve
        .push_str(
            "wider.wit",
            &format!(
                "package test:wider;\n\
                 interface extra {{ poke: func(); }}\n\
                 world wider {{ include spindle:app/route@0.1.0; {extra} }}\n"
            ),
        )
        .unwrap();
    let world = resolve.select_world(&[package], Some("wider")).unwrap();
    let mut module = dummy_module(&resolve, world, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).unwrap();
    ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

async fn load(name: &str, wasm: &[u8]) -> anyhow::Result<spin_test_host::RunningHost> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("imports-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("app.wasm"), wasm).unwrap();
    std::fs::write(
        dir.join("spin.toml"),
        "spin_manifest_version = 2\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"app\"\n\
         [component.app]\nsource = \"app.wasm\"\n",
    )
    .unwrap();
    spin_test_host::serve(HostOptions::new(dir.join("spin.toml"), dir.join("state"))).await
}

#[tokio::test]
async fn a_component_of_the_route_world_loads() {
    let host = load("route", &component_with("")).await.unwrap();
    host.shutdown().await;
}

#[tokio::test]
async fn a_component_importing_beyond_the_route_world_is_refused() {
    let error = load("wider", &component_with("import extra;"))
        .await
        .err()
        .expect("the host refuses the component");
    assert!(
        format!("{error:#}").contains("test:wider/extra"),
        "the error names the import: {error:#}"
    );
}
