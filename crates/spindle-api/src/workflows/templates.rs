//! Starter templates: ready-made workflows whose agent nodes name roles
//! (`"agent_id": "$writer"`) that the user maps to agents of their own, or
//! that get agents created for them when the template is used.

use super::{Document, created_json, insert_workflow};
use crate::agents::{AgentSpec, insert_agent};
use crate::auth::authenticate;
use crate::context::RequestContext;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use spindle_auth::{Caller, Role};
#[cfg(test)]
use spindle_definition::{parse_definition, validate};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Params};
use spindle_store::{Db, OrgScoped, Value, in_transaction};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The provider of the agents a template creates for roles left unmapped.
const DEFAULT_PROVIDER: &str = "openai";
/// Their model: one with a price in the pricing table, cheap enough to try
/// a template on (a unit test keeps it priced).
const DEFAULT_MODEL: &str = "gpt-4o-mini";

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
    /// The standing instructions (system prompt) of the agent created for
    /// each role the user does not map.
    pub instructions: BTreeMap<String, String>,
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

/// `POST /api/v1/templates/:id/use` (member) `{name?, agents?: {role: agent id}}`:
/// a new workflow in the caller's organisation from the template. Each role
/// not mapped gets a new agent (named after the role, on [`DEFAULT_MODEL`],
/// with the role's instructions), listed in `created_agents`; the agents and
/// the workflow are stored in one transaction, so a refused request stores
/// neither.
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
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let mut problems = Vec::new();
    for (role, agent) in &body.agents {
        if !template.agents.contains_key(role) {
            let roles: Vec<&str> = template.agents.keys().map(String::as_str).collect();
            problems.push(ErrorDetail::new(
                format!("agents.{role}"),
                format!(
                    "the template has no such role; its roles: {}",
                    roles.join(", ")
                ),
            ));
        } else if !agent_exists(&org, agent)? {
            problems.push(ErrorDetail::new(
                format!("agents.{role}"),
                format!("no agent {agent} in your organisation"),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Validation {
            message: "the template's agent mapping is invalid".into(),
            details: problems,
        });
    }
    let (mut workflow, created_agents) = in_transaction(ctx.db()?, |db| {
        let mut agents = body.agents.clone();
        let mut created_agents = Vec::new();
        for role in template.agents.keys() {
            if agents.contains_key(role) {
                continue;
            }
            let (id, name) = create_role_agent(ctx, db, &caller, template, role)?;
            created_agents.push(json!({"role": role, "id": id, "name": name}));
            agents.insert(role.clone(), id);
        }
        let mut document = Map::new();
        document.insert(
            "name".into(),
            json!(body.name.clone().unwrap_or_else(|| template.name.clone())),
        );
        document.insert("description".into(), json!(template.description));
        if let Json::Object(definition) = template.definition_with(&agents) {
            document.extend(definition);
        }
        let document: Document = super::read_document(ctx, &caller, &Json::Object(document))?;
        let (id, secret) =
            insert_workflow(ctx, &caller, &document, &json!({"template": template.id}))?;
        Ok::<_, ApiError>((created_json(ctx, &caller, &id, &secret)?, created_agents))
    })?;
    workflow["created_agents"] = Json::Array(created_agents);
    Ok(ApiResponse::json(201, &workflow))
}

/// Whether `id` is a live agent of the organisation.
fn agent_exists(org: &OrgScoped, id: &str) -> Result<bool, ApiError> {
    let found = org.execute(
        "SELECT 1 FROM agents WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        &[Value::from(id)],
    )?;
    Ok(!found.rows.is_empty())
}

/// The agent a template creates for `role`: its spec, checked as
/// `POST /api/v1/agents` checks one.
fn role_agent_spec(template: &Template, role: &str) -> Result<AgentSpec, ApiError> {
    let does = template.agents.get(role).map_or("", String::as_str);
    AgentSpec::from_json(json!({
        "name": role,
        "description": format!("{does} (created for the {} template)", template.name),
        "model_config": {"provider": DEFAULT_PROVIDER, "model": DEFAULT_MODEL},
        "instructions": template.instructions.get(role).map_or("", String::as_str),
    }))
}

/// Creates the agent for `role` in the caller's transaction; returns its id and name.
fn create_role_agent(
    ctx: &RequestContext,
    db: &dyn Db,
    caller: &Caller,
    template: &Template,
    role: &str,
) -> Result<(String, String), ApiError> {
    let spec = role_agent_spec(template, role)?;
    let details = json!({"name": spec.name, "template": template.id, "role": role});
    let id = insert_agent(ctx, db, caller, &spec, &details)?;
    Ok((id, spec.name))
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
    fn every_role_gets_a_priced_agent_with_instructions() {
        use spindle_providers::{Provider, pricing::price_for};
        assert!(
            price_for(Provider::OpenAi, DEFAULT_MODEL).is_some(),
            "{DEFAULT_MODEL} has a price"
        );
        assert_eq!(Provider::parse(DEFAULT_PROVIDER), Some(Provider::OpenAi));
        for template in templates() {
            let roles: Vec<&String> = template.agents.keys().collect();
            let instructed: Vec<&String> = template.instructions.keys().collect();
            assert_eq!(roles, instructed, "{}: instructions per role", template.id);
            for role in template.agents.keys() {
                let spec = role_agent_spec(template, role).unwrap();
                assert_eq!(spec.name, *role);
                assert_eq!(spec.model_config.model, DEFAULT_MODEL);
                assert!(spec.instructions.len() > 100, "{}: {role}", template.id);
                assert!(spec.description.contains(&template.name));
            }
        }
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
