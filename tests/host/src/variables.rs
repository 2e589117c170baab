//! Spin variables: app-level values and per-component templates over them.

use crate::manifest::{ComponentDecl, Manifest};
use anyhow::{Context, bail};
use std::collections::{BTreeMap, HashMap};

/// Checks a variable name the way Spin does (`spin_expressions::Key`): lower-case ASCII
/// letters, digits and single underscores, starting with a letter and not ending with `_`.
pub fn validate_name(key: &str) -> Result<(), String> {
    let reason = if key.is_empty() {
        "must not be empty".to_string()
    } else if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        format!(
            "invalid character {c:?}. Variable names may contain only lower-case letters, numbers, and underscores."
        )
    } else if !key.as_bytes()[0].is_ascii_lowercase() {
        "must start with a lowercase ASCII letter".to_string()
    } else if !key.as_bytes()[key.len() - 1].is_ascii_alphanumeric() {
        "must end with a lowercase ASCII letter or digit".to_string()
    } else if key.contains("__") {
        "must not contain multiple consecutive underscores".to_string()
    } else {
        return Ok(());
    };
    Err(format!("{key:?}: {reason}"))
}

/// Expands `{{ name }}` expressions in `template` with `lookup`.
pub fn expand(
    template: &str,
    lookup: &dyn Fn(&str) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .with_context(|| format!("unterminated '{{{{' in template {template:?}"))?;
        out.push_str(&lookup(rest[start + 2..start + end].trim())?);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves every application variable once, at startup, as `spin up` does.
///
/// Precedence: explicit overrides (the host API, like `--variable`), then the
/// environment as `SPIN_VARIABLE_<NAME>` (upper case only: Spin's env provider
/// never looks at a lower-case name), then the manifest's `default`. A required
/// variable without a value refuses to start.
pub fn resolve_app(
    manifest: &Manifest,
    overrides: &HashMap<String, String>,
) -> anyhow::Result<HashMap<String, String>> {
    resolve_app_with(manifest, overrides, &|name| std::env::var(name).ok())
}

/// [`resolve_app`] reading the environment through `env`, so tests need not set it.
pub fn resolve_app_with(
    manifest: &Manifest,
    overrides: &HashMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<HashMap<String, String>> {
    let mut values = HashMap::new();
    for (name, decl) in &manifest.variables {
        validate_name(name).map_err(|e| anyhow::anyhow!("invalid variable name {e}"))?;
        let env = env(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()));
        let value = overrides
            .get(name)
            .cloned()
            .or(env)
            .or(decl.default.clone());
        match value {
            Some(v) => {
                values.insert(name.clone(), v);
            }
            None if decl.required => bail!("no value for required variable {name:?}"),
            // Spin also rejects a variable that is neither required nor has a default.
            None => bail!("variable {name:?} has no default and is not required"),
        }
    }
    for name in overrides.keys() {
        if !manifest.variables.contains_key(name) {
            bail!("variable {name:?} is set but not declared in [variables]");
        }
    }
    Ok(values)
}

/// Resolves one component's `[component.<id>.variables]` against the app values.
pub fn resolve_component(
    id: &str,
    decl: &ComponentDecl,
    app: &HashMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let lookup = |name: &str| {
        app.get(name)
            .cloned()
            .with_context(|| format!("unknown variable {name:?}"))
    };
    decl.variables
        .iter()
        .map(|(key, template)| {
            validate_name(key).map_err(|e| anyhow::anyhow!("invalid variable name {e}"))?;
            let value = expand(template, &lookup)
                .with_context(|| format!("component {id:?}, variable {key:?}"))?;
            Ok((key.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_spin_rules() {
        for ok in ["a", "abc", "a1b2c3", "a_1", "a_1_b_3"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "aX", "1bc", "_x", "x.y", "x_", "a__b", "x-y", "FOO"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    fn manifest(variables: &str) -> Manifest {
        toml::from_str(&format!(
            "spin_manifest_version = 2\n[variables]\n{variables}"
        ))
        .unwrap()
    }

    #[test]
    fn environment_overrides_defaults_in_upper_case_only() {
        let manifest = manifest("foo = { default = \"x\" }\nbar = { default = \"y\" }");
        let env = |name: &str| match name {
            "SPIN_VARIABLE_FOO" => Some("from-env".to_string()),
            // Spin's environment provider never reads a lower-case name.
            "SPIN_VARIABLE_bar" => Some("ignored".to_string()),
            _ => None,
        };
        let values = resolve_app_with(&manifest, &HashMap::new(), &env).unwrap();
        assert_eq!(values["foo"], "from-env");
        assert_eq!(values["bar"], "y");
    }

    #[test]
    fn explicit_overrides_win_over_the_environment() {
        let manifest = manifest("foo = { default = \"x\" }");
        let overrides = HashMap::from([("foo".to_string(), "override".to_string())]);
        let env = |_: &str| Some("from-env".to_string());
        assert_eq!(
            resolve_app_with(&manifest, &overrides, &env).unwrap()["foo"],
            "override"
        );
    }

    #[test]
    fn required_variable_without_a_value_refuses_to_start() {
        let manifest = manifest("key = { required = true }");
        let error = resolve_app_with(&manifest, &HashMap::new(), &|_| None).unwrap_err();
        assert!(error.to_string().contains("required"), "{error}");
        let env = |_: &str| Some("set".to_string());
        assert_eq!(
            resolve_app_with(&manifest, &HashMap::new(), &env).unwrap()["key"],
            "set"
        );
    }

    #[test]
    fn templates_expand() {
        let look = |n: &str| -> anyhow::Result<String> { Ok(format!("<{n}>")) };
        assert_eq!(expand("a{{ x }}b{{y}}", &look).unwrap(), "a<x>b<y>");
        assert_eq!(expand("plain", &look).unwrap(), "plain");
        assert!(expand("{{ x", &look).is_err());
    }
}
