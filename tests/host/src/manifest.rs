//! The part of a `spin.toml` (manifest version 2) this host understands.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed `spin.toml`, with component sources made absolute.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    /// Must be 2: this host reads only the v2 format.
    pub spin_manifest_version: u32,
    /// `[variables]`: the application variables.
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    /// `[trigger]`: only `[[trigger.http]]` is used.
    #[serde(default)]
    pub trigger: Triggers,
    /// `[component.<id>]`.
    #[serde(default)]
    pub component: BTreeMap<String, ComponentDecl>,
}

/// One application variable.
#[derive(Debug, Default, Deserialize)]
pub struct VariableDecl {
    /// Value used when no provider sets it.
    pub default: Option<String>,
    /// Spin refuses to start when a required variable has no value.
    #[serde(default)]
    pub required: bool,
    /// Secret variables behave the same here (Spin only hides them in logs).
    #[serde(default)]
    pub secret: bool,
}

/// The `[trigger]` table.
#[derive(Debug, Default, Deserialize)]
pub struct Triggers {
    /// `[[trigger.http]]` entries.
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

/// One `[[trigger.http]]` entry.
#[derive(Debug, Deserialize)]
pub struct HttpTrigger {
    /// The route pattern, e.g. `/api/...` or `/items/:id`.
    pub route: String,
    /// The id of the component it runs.
    pub component: String,
}

/// One `[component.<id>]` table.
#[derive(Debug, Deserialize)]
pub struct ComponentDecl {
    /// Path of the `.wasm`, relative to the manifest's directory.
    pub source: PathBuf,
    /// Outbound HTTP permissions (`scheme://host[:port]`, `*` wildcards, `{{ var }}` templates).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Key-value store labels the component may open.
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    /// SQLite database labels the component may open.
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    /// `[component.<id>.variables]`: what the component may read, as templates over app variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads and checks a manifest; component sources become absolute paths.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let mut manifest: Manifest = toml::from_str(&text)
            .with_context(|| format!("cannot parse manifest {}", path.display()))?;
        if manifest.spin_manifest_version != 2 {
            bail!("only spin_manifest_version = 2 is supported");
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        for c in manifest.component.values_mut() {
            c.source = dir.join(&c.source);
        }
        for t in &manifest.trigger.http {
            if !manifest.component.contains_key(&t.component) {
                bail!(
                    "trigger for route {:?} names unknown component {:?}",
                    t.route,
                    t.component
                );
            }
        }
        Ok(manifest)
    }
}
