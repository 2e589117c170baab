//! Starter templates: ready-made workflows whose agent nodes name roles
//! (`"agent_id": "$writer"`) that the user maps to agents of their own.

use super::{Document, created, insert_workflow};
use crate::auth::authenticate;
use crate::context::RequestContext;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use spindle_auth::Role;
#[cfg(test)]
use spindle_definition::{parse_definition, validate};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Params};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A starter template as shipped in `templates.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Template {
    /// Stable id, e.g. `lead-scoring`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// A grouping such as `sales`.
    pub category: String,
    /// Agent roles the template needs: role → what that agent does.
    pub agents: BTreeMap<String, String>,
    /// The definition, with `$role` in place of agent ids.
    pub definition: Json,
}

/// Every starter template.
pub fn templates() -> &'static [Template] {
    static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        // Shipped with the binary and checked by a unit test: it always parses.
        serde_json::from_str(include_str!("templates.json")).unwrap_or_default()
    })
}

impl Template {
    /// The definition with each `$role` replaced by `agents[role]`.
    pub fn definition_with(&self, agents: &BTreeMap<String, String>) -> Json {
        let mut definition = self.definition.clone();
        substitute_roles(&mut definition, agents);
        definition
    }

    fn summary(&self) -> Json {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "agents": self.agents,
        })
    }
}

fn substitute_roles(value: &mut Json, agents: &BTreeMap<String, String>) {
    match value {
        Json::Object(object) => {
            for (key, inner) in object.iter_mut() {
                match inner {
                    Json::String(text) if key == "agent_id" => {
                        if let Some(agent) =
                            text.strip_prefix('$').and_then(|role| agents.get(role))
                        {
                            *text = agent.clone();
                        }
                    }
                    _ => substitute_roles(inner, agents),
                }
            }
        }
        Json::Array(items) => items
            .iter_mut()
            .for_each(|item| substitute_roles(item, agents)),
        _ => {}
    }
}

fn find(id: &str) -> Result<&'static Template, ApiError> {
    templates()
        .iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("template {id} not found")))
}

/// `GET /api/v1/templates` (viewer): every template, without definitions.
pub(super) fn list(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    authenticate(ctx, request)?.require(Role::Viewer)?;
    let data: Vec<Json> = templates().iter().map(Template::summary).collect();
    Ok(ApiResponse::json(
        200,
        &json!({"data": data, "total": data.len()}),
    ))
}

/// `GET /api/v1/templates/:id` (viewer): one template with its definition.
pub(super) fn get(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    authenticate(ctx, request)?.require(Role::Viewer)?;
    let template = find(params.get("id").unwrap_or_default())?;
    let mut body = template.summary();
    body["definition"] = template.definition.clone();
    Ok(ApiResponse::json(200, &body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UseTemplate {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    agents: BTreeMap<String, String>,
}

/// `POST /api/v1/templates/:id/use` (member) `{name?, agents: {role: agent id}}`:
/// a new workflow in the caller's organisation from the template.
pub(super) fn use_template(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let template = find(params.get("id").unwrap_or_default())?;
    let body: UseTemplate = if request.body.is_empty() {
        UseTemplate {
            name: None,
            agents: BTreeMap::new(),
        }
    } else {
        request.json()?
    };
    let mut problems: Vec<ErrorDetail> = template
        .agents
        .keys()
        .filter(|role| !body.agents.contains_key(*role))
        .map(|role| {
            ErrorDetail::new(
                format!("agents.{role}"),
                format!("map the {role} role to one of your agents"),
            )
        })
        .collect();
    problems.extend(
        body.agents
            .keys()
            .filter(|role| !template.agents.contains_key(*role))
            .map(|role| {
                ErrorDetail::new(format!("agents.{role}"), "the template has no such role")
            }),
    );
    if !problems.is_empty() {
        return Err(ApiError::Validation {
            message: "the template's agent roles are not all mapped".into(),
            details: problems,
        });
    }
    let mut document = Map::new();
    document.insert(
        "name".into(),
        json!(body.name.unwrap_or_else(|| template.name.clone())),
    );
    document.insert("description".into(), json!(template.description));
    if let Json::Object(definition) = template.definition_with(&body.agents) {
        document.extend(definition);
    }
    let document: Document = super::read_document(ctx, &caller, &Json::Object(document))?;
    let (id, secret) = insert_workflow(ctx, &caller, &document, &json!({"template": template.id}))?;
    created(ctx, &caller, &id, &secret)
}

/// Every template is valid once its roles are mapped (a test keeps the file honest).
#[cfg(test)]
fn check_templates() -> Result<(), String> {
    for template in templates() {
        let agents = template
            .agents
            .keys()
            .map(|role| (role.clone(), format!("agent-{role}")))
            .collect();
        let definition = parse_definition(&template.definition_with(&agents))
            .map_err(|problems| format!("{}: {problems:?}", template.id))?;
        let problems = validate(&definition, &|_| true);
        if !problems.is_empty() {
            return Err(format!("{}: {problems:?}", template.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_templates_parse_and_are_valid() {
        assert_eq!(templates().len(), 4, "templates.json parses");
        check_templates().unwrap();
    }

    #[test]
    fn roles_are_replaced_only_in_agent_ids() {
        let template = find("lead-scoring").unwrap();
        let agents = BTreeMap::from([
            ("scorer".to_string(), "a1".to_string()),
            ("proposer".to_string(), "a2".to_string()),
        ]);
        let text = template.definition_with(&agents).to_string();
        assert!(text.contains("\"agent_id\":\"a1\"") && text.contains("\"agent_id\":\"a2\""));
        assert!(!text.contains("$scorer"));
    }
}
