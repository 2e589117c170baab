//! Every built component must target the `route` world in `wit/`: whatever
//! it imports, every Spin host since 2.0 provides, so it runs on all of them.
//! This checks the components `cargo build --target wasm32-wasip2 --release`
//! produced; it builds nothing itself.

use std::path::{Path, PathBuf};
use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
use wit_parser::{ManglingAndAbi, PackageId, Resolve, WorldId};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn route_world() -> (Resolve, PackageId, WorldId) {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(root().join("wit")).expect("wit/ parses");
    let world = resolve
        .select_world(&[package], Some("route"))
        .expect("world `route`");
    (resolve, package, world)
}

/// The components spin.toml declares, with their built wasm files.
fn manifest_components() -> Vec<(String, PathBuf)> {
    let manifest: toml::Table = std::fs::read_to_string(root().join("spin.toml"))
        .unwrap()
        .parse()
        .unwrap();
    manifest["component"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(id, component)| {
            let source = component["source"].as_str().unwrap();
            (id.clone(), root().join(source))
        })
        .collect()
}

fn encode_component(resolve: &Resolve, world: WorldId) -> Vec<u8> {
    let mut module = dummy_module(resolve, world, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, resolve, world, StringEncoding::UTF8).unwrap();
    ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

#[test]
fn every_component_targets_the_route_world() {
    let (resolve, _, world) = route_world();
    let components = manifest_components();
    assert_eq!(
        components.len(),
        5,
        "spin.toml declares the five components"
    );
    for (id, path) in components {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{id}: {} is missing ({e}); build the components first: \
                 cargo build --target wasm32-wasip2 --release",
                path.display()
            )
        });
        if let Err(error) = wit_component::targets(&resolve, world, &bytes) {
            panic!("{id} does not target the `route` world: {error:?}");
        }
    }
}

#[test]
fn a_component_of_the_route_world_passes_the_check() {
    let (resolve, _, world) = route_world();
    let component = encode_component(&resolve, world);
    wit_component::targets(&resolve, world, &component).unwrap();
}

#[test]
fn a_component_importing_beyond_the_route_world_fails_the_check() {
    let (mut resolve, _, route) = route_world();
    // A world that also imports something no Spin host promises.
    let extra = resolve
        .push_str(
            "wider.wit",
            "package spindle:wider;\n\
             interface extra { poke: func(); }\n\
             world wider { include spindle:app/route@0.1.0; import extra; }\n",
        )
        .unwrap();
    let wider = resolve.select_world(&[extra], Some("wider")).unwrap();
    let component = encode_component(&resolve, wider);
    let error = wit_component::targets(&resolve, route, &component).unwrap_err();
    assert!(
        format!("{error:?}").contains("spindle:wider/extra"),
        "unexpected error: {error:?}"
    );
}
