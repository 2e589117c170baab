//! The reference pipelines, end to end over HTTP against the fake provider.
//!
//! `reference/004…` describes a sequential content pipeline (5.1: draft →
//! optimise → distribute, whose `tasks` payload is its 4.1 example) and three
//! example workflows (6.1 Sales Lead Processing, 6.2 IT Incident Response,
//! 6.3 Legal Contract Review); `reference/000…` describes a lead-scoring
//! flow whose condition on the structured score (`>= 70`) routes a lead to
//! "create high-value task" or to the other branch. Each test builds one of
//! them from agents of its own, runs it to completion and checks the exact
//! requests the provider received (path, key, model, system prompt, rendered
//! user message, sampling settings), every step's output, typed templates,
//! and that tokens and cost are what the scripted replies report.

use fake_llm::{ReceivedRequest, Reply};
use serde_json::{Value, json};
use spindle_suite::{Org, Target, fake_llm, fake_turn, provider_key, shared, step};

/// An agent as the test defines it; knows the requests it should cause.
struct AgentDef {
    name: &'static str,
    description: &'static str,
    instructions: &'static str,
    provider: &'static str,
    model: &'static str,
    temperature: Option<f64>,
    max_tokens: Option<u64>,
}

impl AgentDef {
    fn definition(&self) -> Value {
        let mut model_config = json!({"provider": self.provider, "model": self.model});
        if let Some(t) = self.temperature {
            model_config["temperature"] = json!(t);
        }
        if let Some(m) = self.max_tokens {
            model_config["max_tokens"] = json!(m);
        }
        json!({
            "name": self.name,
            "description": self.description,
            "instructions": self.instructions,
            "model_config": model_config,
        })
    }

    fn create(&self, target: &Target, org: &Org) -> String {
        target.create(org, "/api/v1/agents", &self.definition())
    }

    /// The system prompt README.md's agent section implies: name,
    /// description, then the instructions.
    fn system(&self) -> String {
        format!(
            "You are {}: {}\n\n{}",
            self.name, self.description, self.instructions
        )
    }

    /// Scripts this agent's next answer (by model: each pipeline gives
    /// each agent a model of its own).
    fn answers(&self, reply: Reply) {
        fake_llm().push_for_model(self.model, reply);
    }

    /// Asserts that `sent` is this agent's request for the user message
    /// `user`, with the node's `max_tokens` (if any) over the agent's.
    fn assert_request(&self, sent: &ReceivedRequest, user: &str, node_max_tokens: Option<u64>) {
        self.assert_request_with(sent, user, node_max_tokens, None);
    }

    /// [`Self::assert_request`] for a node with an `output_schema`: the
    /// request asks for JSON in the provider's own way.
    fn assert_structured_request(&self, sent: &ReceivedRequest, user: &str, schema: &Value) {
        self.assert_request_with(sent, user, None, Some(schema));
    }

    fn assert_request_with(
        &self,
        sent: &ReceivedRequest,
        user: &str,
        node_max_tokens: Option<u64>,
        schema: Option<&Value>,
    ) {
        let max_tokens = node_max_tokens.or(self.max_tokens);
        let mut system = self.system();
        if let (Some(schema), "anthropic") = (schema, self.provider) {
            // The Messages API has no response format: the rule joins the system prompt.
            system = format!(
                "{system}\n\nAnswer with only a JSON value, no prose, that follows this JSON Schema: {schema}"
            );
        }
        let who = format!("the request of {} ({})", self.name, self.model);
        assert_eq!(sent.method, "POST", "{who}");
        assert_eq!(sent.model.as_deref(), Some(self.model), "{who}");
        let key = provider_key(self.provider);
        let (path, body) = match self.provider {
            "openai" => {
                assert_eq!(
                    sent.header("authorization"),
                    Some(format!("Bearer {key}").as_str()),
                    "{who}"
                );
                let mut body = json!({
                    "model": self.model,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user}
                    ]
                });
                if let Some(t) = self.temperature {
                    body["temperature"] = json!(t);
                }
                if let Some(m) = max_tokens {
                    body["max_tokens"] = json!(m);
                }
                if let Some(schema) = schema {
                    body["response_format"] = json!({"type": "json_schema",
                        "json_schema": {"name": "output", "schema": schema}});
                }
                ("/v1/chat/completions".to_string(), body)
            }
            "anthropic" => {
                assert_eq!(sent.header("x-api-key"), Some(key.as_str()), "{who}");
                assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
                let mut body = json!({
                    "model": self.model,
                    // Anthropic requires it: 1024 when neither node nor agent sets one.
                    "max_tokens": max_tokens.unwrap_or(1024),
                    "system": system,
                    "messages": [{"role": "user", "content": user}]
                });
                if let Some(t) = self.temperature {
                    body["temperature"] = json!(t);
                }
                ("/v1/messages".to_string(), body)
            }
            "gemini" => {
                assert_eq!(sent.header("x-goog-api-key"), Some(key.as_str()), "{who}");
                let mut body = json!({
                    "systemInstruction": {"parts": [{"text": system}]},
                    "contents": [{"role": "user", "parts": [{"text": user}]}]
                });
                let mut config = serde_json::Map::new();
                if let Some(t) = self.temperature {
                    config.insert("temperature".into(), json!(t));
                }
                if let Some(m) = max_tokens {
                    config.insert("maxOutputTokens".into(), json!(m));
                }
                if let Some(schema) = schema {
                    config.insert("responseMimeType".into(), json!("application/json"));
                    config.insert("responseSchema".into(), schema.clone());
                }
                if !config.is_empty() {
                    body["generationConfig"] = Value::Object(config);
                }
                (
                    format!("/v1beta/models/{}:generateContent", self.model),
                    body,
                )
            }
            other => panic!("no provider {other} in these tests"),
        };
        assert_eq!(sent.path, path, "{who}");
        assert_eq!(
            sent.body, body,
            "{who}: got\n{:#}\nexpected\n{:#}",
            sent.body, body
        );
    }
}

/// The lead scorers' `output_schema`.
fn lead_schema() -> Value {
    json!({"type": "object", "properties": {"score": {"type": "number"}, "factors": {"type": "array", "items": {"type": "string"}}}, "required": ["score"]})
}

/// The incident triage's `output_schema`.
fn triage_schema() -> Value {
    json!({"type": "object", "properties": {"severity": {"type": "string", "enum": ["critical", "high", "low"]}, "category": {"type": "string"}}, "required": ["severity"]})
}

/// The contract extractor's `output_schema`.
fn contract_schema() -> Value {
    json!({"type": "object", "properties": {"term_months": {"type": "number"}, "liability_cap_eur": {"type": "number"}, "clauses": {"type": "array"}}})
}

/// Starts a run and waits until it has completed.
fn run_to_completion(target: &Target, org: &Org, workflow: &str, inputs: Value) -> Value {
    let id = target.start_run(org, workflow, inputs);
    let run = target.finished(org, &id);
    assert_eq!(run["status"], "completed", "{run:#}");
    assert!(run["error"].is_null(), "{run:#}");
    run
}

/// Asserts that each node ran once, completed, and has this output.
fn assert_outputs(run: &Value, outputs: &[(&str, Value)]) {
    for (node, output) in outputs {
        let step = step(run, node);
        assert_eq!(step["status"], "completed", "step {node}: {step:#}");
        assert_eq!(step["attempts"], 1, "step {node}: {step:#}");
        assert_eq!(&step["output"], output, "step {node}");
    }
}

/// The chat requests the fake received (not webhook deliveries), oldest first.
fn chat_requests() -> Vec<ReceivedRequest> {
    fake_llm()
        .received()
        .into_iter()
        .filter(|r| r.dialect.is_some())
        .collect()
}

/// Asserts the number of chat requests, naming them when it is wrong.
fn assert_request_count(sent: &[ReceivedRequest], expected: usize) {
    assert_eq!(
        sent.len(),
        expected,
        "provider requests: {:#?}",
        sent.iter()
            .map(|r| (r.path.as_str(), r.raw_body.as_str()))
            .collect::<Vec<_>>()
    );
}

/// Asserts each agent step's tokens and cost (`(node, input tokens, output
/// tokens, base µ$, billed µ$)`, the money worked out by hand in each test
/// from the built-in table's prices), that every other step cost nothing,
/// and that the run's totals are the sums of its steps.
///
/// A price of $P per million tokens is P µ$ a token; `base` is rounded half
/// up to the µ$, then `billed` = base × 1.2 (the default 20% markup), rounded
/// half up.
fn assert_billing(run: &Value, calls: &[(&str, u64, u64, i64, i64)]) {
    let (mut tokens_in, mut tokens_out, mut base, mut billed) = (0, 0, 0, 0);
    for (node, input, output, step_base, step_billed) in calls {
        let step = step(run, node);
        assert_eq!(
            step["usage"],
            json!({"input_tokens": input, "output_tokens": output}),
            "step {node}"
        );
        assert_eq!(
            step["cost"],
            json!({"base_micros": step_base, "billed_micros": step_billed}),
            "step {node}"
        );
        tokens_in += input;
        tokens_out += output;
        base += step_base;
        billed += step_billed;
    }
    for step in run["steps"].as_array().unwrap() {
        if calls.iter().any(|(node, ..)| step["node_id"] == *node) {
            continue;
        }
        for field in [
            &step["usage"]["input_tokens"],
            &step["usage"]["output_tokens"],
            &step["cost"]["base_micros"],
            &step["cost"]["billed_micros"],
        ] {
            assert_eq!(
                field.as_i64().unwrap_or(0),
                0,
                "step {} called no provider: {step:#}",
                step["node_id"]
            );
        }
    }
    assert_eq!(
        run["usage"],
        json!({"input_tokens": tokens_in, "output_tokens": tokens_out}),
        "the run's tokens are the sum of its steps'"
    );
    assert_eq!(
        run["cost"],
        json!({"base_micros": base, "billed_micros": billed}),
        "the run's cost is the sum of its steps'"
    );
}

// ---------------------------------------------------------------------------
// 004 §5.1: the content pipeline (draft → optimise → distribute)
// ---------------------------------------------------------------------------

const WRITER: AgentDef = AgentDef {
    name: "Content Writer",
    description: "drafts long-form marketing articles",
    instructions: "Write in Markdown: a title, then short sections.",
    provider: "openai",
    model: "gpt-4o-mini",
    temperature: Some(0.7),
    max_tokens: Some(800),
};

const SEO: AgentDef = AgentDef {
    name: "SEO Optimiser",
    description: "optimises articles for search engines",
    instructions: "Keep the author's voice; work each keyword into a heading and the first paragraph.",
    provider: "anthropic",
    model: "claude-3-5-haiku",
    temperature: None,
    max_tokens: Some(1500),
};

const SOCIAL: AgentDef = AgentDef {
    name: "Social Media Manager",
    description: "writes posts that promote an article",
    instructions: "Write one post per platform (Twitter, LinkedIn), each under 280 characters, labelled with the platform's name.",
    provider: "gemini",
    model: "gemini-2.0-flash",
    temperature: Some(0.5),
    max_tokens: None,
};

const DRAFT: &str =
    "# AI in Healthcare\n\nHospitals now use \"AI triage\" to cut waiting times by a third.";
const OPTIMISED: &str = "# AI Healthcare: How Clinical AI Cuts Waiting Times\n\nAI healthcare tools such as \"AI triage\" help hospitals cut waiting times by a third.";
const POSTS: &str = "Twitter: Clinical AI cuts ER waits by a third. #AIhealthcare\nLinkedIn: How hospitals use AI triage to cut waiting times - our new article.";

/// 5.1's sequential pipeline in the sequential form of 4.1 (`tasks`): each
/// output is the next step's input, the last task's input is the default
/// `{{ previous_output }}`, and the three steps speak the three wire formats.
#[test]
fn content_pipeline_drafts_optimises_and_distributes() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pipeline-content");
    let (writer, seo, social) = (
        WRITER.create(target, &org),
        SEO.create(target, &org),
        SOCIAL.create(target, &org),
    );
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Content Marketing Pipeline",
            "tasks": [
                {"agent": writer, "input": "Write a blog post about {{ trigger.topic }} for hospital administrators."},
                {"agent": seo, "input": "Optimise this post for the keywords {{ trigger.keywords }}:\n\n{{ previous_output }}"},
                {"agent": social}
            ]
        }),
    );
    WRITER.answers(Reply::text(DRAFT).tokens(60, 18));
    SEO.answers(Reply::text(OPTIMISED).tokens(140, 25));
    SOCIAL.answers(Reply::text(POSTS).tokens(90, 30));

    let run = run_to_completion(
        target,
        &org,
        &workflow,
        json!({"topic": "AI in healthcare", "keywords": ["AI healthcare", "clinical AI"]}),
    );

    let sent = chat_requests();
    assert_request_count(&sent, 3);
    WRITER.assert_request(
        &sent[0],
        "Write a blog post about AI in healthcare for hospital administrators.",
        None,
    );
    SEO.assert_request(
        &sent[1],
        &format!(
            "Optimise this post for the keywords [\"AI healthcare\",\"clinical AI\"]:\n\n{DRAFT}"
        ),
        None,
    );
    SOCIAL.assert_request(&sent[2], OPTIMISED, None);
    assert_outputs(
        &run,
        &[
            ("task_1", json!(DRAFT)),
            ("task_2", json!(OPTIMISED)),
            ("task_3", json!(POSTS)),
            ("output", json!(POSTS)),
        ],
    );
    assert_eq!(run["output"], POSTS);
    assert_billing(
        &run,
        &[
            // gpt-4o-mini: 60 × $0.15/M + 18 × $0.6/M = 9 + 10.8 = 19.8 → 20 µ$; × 1.2 = 24
            ("task_1", 60, 18, 20, 24),
            // claude-3-5-haiku: 140 × $0.8/M + 25 × $4/M = 112 + 100 = 212 µ$; × 1.2 = 254.4 → 254
            ("task_2", 140, 25, 212, 254),
            // gemini-2.0-flash: 90 × $0.1/M + 30 × $0.4/M = 9 + 12 = 21 µ$; × 1.2 = 25.2 → 25
            ("task_3", 90, 30, 21, 25),
        ],
    );
}

/// 4.1's payload as the reference writes it: task inputs that are JSON
/// objects with `{{previous_output}}` inside. Each input reaches the model
/// as the JSON text of the rendered object, so the draft (quotes, line
/// breaks and all) arrives as the string value of `content`.
#[test]
fn content_pipeline_structured_task_inputs_reach_the_model_as_json() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pipeline-content-structured");
    let (writer, seo, social) = (
        WRITER.create(target, &org),
        SEO.create(target, &org),
        SOCIAL.create(target, &org),
    );
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Content Marketing Pipeline",
            "tasks": [
                {"agent": writer, "input": {"format": "blog_post", "topic": "{{ trigger.topic }}"}},
                {"agent": seo, "input": {"content": "{{previous_output}}", "target_keywords": ["AI healthcare"]}},
                {"agent": social, "input": {"content": "{{previous_output}}", "platforms": ["twitter", "linkedin"]}}
            ]
        }),
    );
    WRITER.answers(Reply::text(DRAFT).tokens(40, 18));
    SEO.answers(Reply::text(OPTIMISED).tokens(80, 25));
    SOCIAL.answers(Reply::text(POSTS).tokens(70, 30));

    let run = run_to_completion(
        target,
        &org,
        &workflow,
        json!({"topic": "AI in healthcare"}),
    );
    assert_eq!(run["output"], POSTS);
    assert_billing(
        &run,
        &[
            // gpt-4o-mini: 40 × $0.15/M + 18 × $0.6/M = 6 + 10.8 = 16.8 → 17 µ$; × 1.2 = 20.4 → 20
            ("task_1", 40, 18, 17, 20),
            // claude-3-5-haiku: 80 × $0.8/M + 25 × $4/M = 64 + 100 = 164 µ$; × 1.2 = 196.8 → 197
            ("task_2", 80, 25, 164, 197),
            // gemini-2.0-flash: 70 × $0.1/M + 30 × $0.4/M = 7 + 12 = 19 µ$; × 1.2 = 22.8 → 23
            ("task_3", 70, 30, 19, 23),
        ],
    );

    let sent = chat_requests();
    assert_request_count(&sent, 3);
    // Keys in alphabetical order, as every JSON object in these tests.
    let expected = [
        json!({"format": "blog_post", "topic": "AI in healthcare"}),
        json!({"content": DRAFT, "target_keywords": ["AI healthcare"]}),
        json!({"content": OPTIMISED, "platforms": ["twitter", "linkedin"]}),
    ];
    for (i, (request, expected)) in sent.iter().zip(&expected).enumerate() {
        let user = request.body["messages"][1]["content"]
            .as_str()
            .or_else(|| request.body["messages"][0]["content"].as_str())
            .or_else(|| request.body["contents"][0]["parts"][0]["text"].as_str())
            .unwrap_or_default();
        let parsed: Result<Value, _> = serde_json::from_str(user);
        assert!(
            parsed.as_ref().is_ok_and(|v| v == expected),
            "task {} input should be the JSON text of {expected}; the model got:\n{user}",
            i + 1
        );
    }
    WRITER.assert_request(&sent[0], &expected[0].to_string(), None);
    SEO.assert_request(&sent[1], &expected[1].to_string(), None);
    SOCIAL.assert_request(&sent[2], &expected[2].to_string(), None);
}

// ---------------------------------------------------------------------------
// 004 §6.1: Sales Lead Processing (score → CRM → proposal → follow-up email)
// ---------------------------------------------------------------------------

const LEAD_SCORER: AgentDef = AgentDef {
    name: "Lead Scorer",
    description: "scores incoming leads from firmographic data",
    instructions: "Answer with JSON only: {\"score\": 0-100, \"factors\": [reasons]}.",
    provider: "openai",
    model: "gpt-4o",
    temperature: Some(0.2),
    max_tokens: None,
};

const CRM: AgentDef = AgentDef {
    name: "CRM Assistant",
    description: "creates and updates CRM records",
    instructions: "Reply with the record's CRM id and what changed.",
    provider: "anthropic",
    model: "claude-sonnet-4",
    temperature: None,
    max_tokens: Some(300),
};

const PROPOSER: AgentDef = AgentDef {
    name: "Proposal Writer",
    description: "writes personalised outreach proposals",
    instructions: "Be specific to the lead's company; at most 150 words.",
    provider: "openai",
    model: "gpt-4o-mini",
    temperature: Some(0.6),
    max_tokens: Some(900),
};

const EMAILER: AgentDef = AgentDef {
    name: "Email Marketer",
    description: "drafts and schedules follow-up emails",
    instructions: "Include a subject line and a send time.",
    provider: "gemini",
    model: "gemini-2.5-flash",
    temperature: None,
    max_tokens: Some(400),
};

#[test]
fn sales_lead_processing_scores_records_proposes_and_follows_up() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pipeline-sales");
    let (scorer, crm, proposer, emailer) = (
        LEAD_SCORER.create(target, &org),
        CRM.create(target, &org),
        PROPOSER.create(target, &org),
        EMAILER.create(target, &org),
    );
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Sales Lead Processing",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {"inputs": {"lead": {"type": "object", "required": true}}}},
                {"id": "score", "type": "agent", "name": "Score lead", "config": {
                    "agent_id": scorer,
                    "prompt": "Score this lead from 0 to 100 on its firmographic data: {{ trigger.lead }}",
                    "output_schema": lead_schema()
                }},
                {"id": "record", "type": "transform", "name": "CRM record", "config": {"template": {
                    "factors": "{{ steps.score.output.factors }}",
                    "lead": "{{ trigger.lead }}",
                    "score": "{{ steps.score.output.score }}",
                    "stage": "qualified",
                    "summary": "{{ trigger.lead.name }} scored {{ steps.score.output.score }}/100"
                }}},
                {"id": "crm", "type": "agent", "name": "Update CRM", "config": {
                    "agent_id": crm,
                    "prompt": "Create or update the CRM record for this lead: {{ previous_output }}"
                }},
                {"id": "proposal", "type": "agent", "name": "Proposal", "config": {
                    "agent_id": proposer,
                    "prompt": "Write a personalised outreach proposal for {{ trigger.lead.name }}, {{ trigger.lead.title }} at {{ trigger.lead.company }} ({{ trigger.lead.employees }} employees).\nWhy they fit: {{ steps.score.output.factors }}\nCRM: {{ steps.crm.output }}",
                    "max_tokens": 600
                }},
                {"id": "email", "type": "agent", "name": "Follow-up email", "config": {
                    "agent_id": emailer,
                    "prompt": "Draft a follow-up email to {{ trigger.lead.email }} based on this proposal:\n\n{{ previous_output }}"
                }},
                {"id": "done", "type": "output", "config": {"value": {
                    "crm": "{{ steps.crm.output }}",
                    "email": "{{ previous_output }}",
                    "employees": "{{ trigger.lead.employees }}",
                    "lead": "{{ trigger.lead }}",
                    "record": "{{ steps.record.output }}",
                    "score": "{{ steps.score.output.score }}"
                }}}
            ],
            "edges": [
                {"source": "start", "target": "score"},
                {"source": "score", "target": "record"},
                {"source": "record", "target": "crm"},
                {"source": "crm", "target": "proposal"},
                {"source": "proposal", "target": "email"},
                {"source": "email", "target": "done"}
            ]
        }),
    );
    let lead = json!({
        "company": "Northwind Health",
        "email": "ada@northwind.example",
        "employees": 1200,
        "name": "Ada Lovelace",
        "title": "VP Operations"
    });
    let lead_text = r#"{"company":"Northwind Health","email":"ada@northwind.example","employees":1200,"name":"Ada Lovelace","title":"VP Operations"}"#;
    let crm_reply = "Updated CRM record CRM-1042: lead score 85, stage qualified.";
    let proposal = "Ada, Northwind Health's 1,200-person operation is ready for automated scheduling: a 30-day pilot could cut no-shows by 20%.";
    let email = "Subject: A 30-day pilot for Northwind Health\nSend: Tuesday 09:00\n\nHi Ada, following up on the pilot we proposed.";
    LEAD_SCORER.answers(
        Reply::text(
            r#"{"score": 85, "factors": ["1,200 employees", "VP-level contact", "Budget confirmed"]}"#,
        )
        .tokens(420, 35),
    );
    CRM.answers(Reply::text(crm_reply).tokens(160, 14));
    PROPOSER.answers(Reply::text(proposal).tokens(130, 27));
    EMAILER.answers(Reply::text(email).tokens(75, 24));

    let run = run_to_completion(target, &org, &workflow, json!({"lead": lead}));

    let sent = chat_requests();
    assert_request_count(&sent, 4);
    LEAD_SCORER.assert_structured_request(
        &sent[0],
        &format!("Score this lead from 0 to 100 on its firmographic data: {lead_text}"),
        &lead_schema(),
    );
    CRM.assert_request(
        &sent[1],
        &format!(
            "Create or update the CRM record for this lead: {{\"factors\":[\"1,200 employees\",\"VP-level contact\",\"Budget confirmed\"],\"lead\":{lead_text},\"score\":85,\"stage\":\"qualified\",\"summary\":\"Ada Lovelace scored 85/100\"}}"
        ),
        None,
    );
    PROPOSER.assert_request(
        &sent[2],
        &format!(
            "Write a personalised outreach proposal for Ada Lovelace, VP Operations at Northwind Health (1200 employees).\nWhy they fit: [\"1,200 employees\",\"VP-level contact\",\"Budget confirmed\"]\nCRM: {crm_reply}"
        ),
        Some(600),
    );
    EMAILER.assert_request(
        &sent[3],
        &format!(
            "Draft a follow-up email to ada@northwind.example based on this proposal:\n\n{proposal}"
        ),
        None,
    );

    let factors = json!(["1,200 employees", "VP-level contact", "Budget confirmed"]);
    let record = json!({
        "factors": factors,
        "lead": lead,
        "score": 85,
        "stage": "qualified",
        "summary": "Ada Lovelace scored 85/100"
    });
    assert_outputs(
        &run,
        &[
            ("score", json!({"score": 85, "factors": factors})),
            ("record", record.clone()),
            ("crm", json!(crm_reply)),
            ("proposal", json!(proposal)),
            ("email", json!(email)),
        ],
    );
    // Typed templates: a value that is exactly one expression keeps its type.
    let output = &run["output"];
    assert!(output["lead"].is_object(), "{output:#}");
    assert!(output["record"]["lead"].is_object(), "{output:#}");
    assert!(output["record"]["factors"].is_array(), "{output:#}");
    assert!(output["score"].is_u64(), "{output:#}");
    assert!(output["employees"].is_u64(), "{output:#}");
    assert!(output["record"]["summary"].is_string(), "{output:#}");
    assert_eq!(
        *output,
        json!({
            "crm": crm_reply,
            "email": email,
            "employees": 1200,
            "lead": lead,
            "record": record,
            "score": 85
        })
    );
    assert_billing(
        &run,
        &[
            // gpt-4o: 420 × $2.5/M + 35 × $10/M = 1050 + 350 = 1400 µ$; × 1.2 = 1680
            ("score", 420, 35, 1400, 1680),
            // claude-sonnet-4: 160 × $3/M + 14 × $15/M = 480 + 210 = 690 µ$; × 1.2 = 828
            ("crm", 160, 14, 690, 828),
            // gpt-4o-mini: 130 × $0.15/M + 27 × $0.6/M = 19.5 + 16.2 = 35.7 → 36 µ$; × 1.2 = 43.2 → 43
            ("proposal", 130, 27, 36, 43),
            // gemini-2.5-flash: 75 × $0.3/M + 24 × $2.5/M = 22.5 + 60 = 82.5 → 83 µ$; × 1.2 = 99.6 → 100
            ("email", 75, 24, 83, 100),
        ],
    );
}

// ---------------------------------------------------------------------------
// 004 §6.2: IT Incident Response (triage → monitoring → diagnosis → remediation)
// ---------------------------------------------------------------------------

const TRIAGE: AgentDef = AgentDef {
    name: "Incident Triage",
    description: "classifies incident severity and category",
    instructions: "Answer with JSON: {\"severity\": \"critical\" | \"high\" | \"low\", \"category\": string}.",
    provider: "anthropic",
    model: "claude-haiku-4-5",
    temperature: None,
    max_tokens: Some(200),
};

const MONITORING: AgentDef = AgentDef {
    name: "Monitoring Analyst",
    description: "pulls the metrics and logs relevant to an incident",
    instructions: "Name concrete dashboards, metrics and log queries.",
    provider: "gemini",
    model: "gemini-2.5-flash",
    temperature: Some(0.3),
    max_tokens: None,
};

const DIAGNOSIS: AgentDef = AgentDef {
    name: "Diagnosis Engineer",
    description: "analyses incident data and suggests a root cause",
    instructions: "Give the single most likely root cause and the evidence for it.",
    provider: "anthropic",
    model: "claude-sonnet-4",
    temperature: Some(0.2),
    max_tokens: Some(1000),
};

const REMEDIATION: AgentDef = AgentDef {
    name: "Remediation Planner",
    description: "writes remediation playbooks",
    instructions: "Number the steps; include a rollback.",
    provider: "openai",
    model: "gpt-4.1-mini",
    temperature: None,
    max_tokens: Some(1200),
};

#[test]
fn it_incident_response_triages_diagnoses_and_writes_a_playbook() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pipeline-incident");
    let (triage, monitoring, diagnosis, remediation) = (
        TRIAGE.create(target, &org),
        MONITORING.create(target, &org),
        DIAGNOSIS.create(target, &org),
        REMEDIATION.create(target, &org),
    );
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "IT Incident Response",
            "nodes": [
                {"id": "incident", "type": "trigger", "config": {"inputs": {
                    "title": {"type": "string", "required": true},
                    "service": {"type": "string", "required": true},
                    "details": {"type": "string"}
                }}},
                {"id": "triage", "type": "agent", "name": "Triage", "config": {
                    "agent_id": triage,
                    "prompt": "Classify this incident's severity (critical, high or low) and category.\nTitle: {{ trigger.title }}\nService: {{ trigger.service }}\nDetails: {{ trigger.details }}",
                    "output_schema": triage_schema()
                }},
                {"id": "metrics", "type": "agent", "name": "Pull metrics and logs", "config": {
                    "agent_id": monitoring,
                    "prompt": "List the metrics and log queries to pull for a {{ steps.triage.output.severity }} {{ steps.triage.output.category }} incident on {{ trigger.service }}."
                }},
                {"id": "diagnose", "type": "agent", "name": "Diagnose", "config": {
                    "agent_id": diagnosis,
                    "prompt": "Suggest the most likely root cause of \"{{ trigger.title }}\" from this data:\n\n{{ previous_output }}",
                    "max_tokens": 700
                }},
                {"id": "playbook", "type": "agent", "name": "Playbook", "config": {
                    "agent_id": remediation,
                    "prompt": "Write a remediation playbook.\nIncident: {{ trigger.title }} ({{ steps.triage.output.severity }}, {{ steps.triage.output.category }})\nRoot cause: {{ previous_output }}"
                }},
                {"id": "result", "type": "output", "config": {"value": {
                    "playbook": "{{ previous_output }}",
                    "severity": "{{ steps.triage.output.severity }}",
                    "triage": "{{ steps.triage.output }}"
                }}}
            ],
            "edges": [
                {"source": "incident", "target": "triage"},
                {"source": "triage", "target": "metrics"},
                {"source": "metrics", "target": "diagnose"},
                {"source": "diagnose", "target": "playbook"},
                {"source": "playbook", "target": "result"}
            ]
        }),
    );
    let metrics = "Pull: checkout-db connection pool saturation, p99 query latency, and logs matching \"too many connections\" since 14:00 UTC.";
    let cause = "Deploy 2024.11.3 lowered the connection pool from 50 to 5; checkout-db connections are exhausted.";
    let playbook = "1. Roll back deploy 2024.11.3.\n2. Restore the pool size to 50.\n3. Watch the error rate for 15 minutes.\nRollback: redeploy 2024.11.3 with the pool size fixed.";
    // A fenced JSON answer, as models often give: the schema still parses it.
    TRIAGE.answers(
        Reply::text("```json\n{\"severity\": \"critical\", \"category\": \"database\"}\n```")
            .tokens(150, 12),
    );
    MONITORING.answers(Reply::text(metrics).tokens(70, 28));
    DIAGNOSIS.answers(Reply::text(cause).tokens(110, 20));
    REMEDIATION.answers(Reply::text(playbook).tokens(95, 40));

    let details =
        "Error rate jumped from 0.1% to 38% at 14:02 UTC after deploy 2024.11.3; p99 latency 9s.";
    let run = run_to_completion(
        target,
        &org,
        &workflow,
        json!({"title": "Checkout API returning 503s", "service": "checkout-api", "details": details}),
    );

    let sent = chat_requests();
    assert_request_count(&sent, 4);
    TRIAGE.assert_structured_request(
        &sent[0],
        &format!(
            "Classify this incident's severity (critical, high or low) and category.\nTitle: Checkout API returning 503s\nService: checkout-api\nDetails: {details}"
        ),
        &triage_schema(),
    );
    MONITORING.assert_request(
        &sent[1],
        "List the metrics and log queries to pull for a critical database incident on checkout-api.",
        None,
    );
    DIAGNOSIS.assert_request(
        &sent[2],
        &format!(
            "Suggest the most likely root cause of \"Checkout API returning 503s\" from this data:\n\n{metrics}"
        ),
        Some(700),
    );
    REMEDIATION.assert_request(
        &sent[3],
        &format!(
            "Write a remediation playbook.\nIncident: Checkout API returning 503s (critical, database)\nRoot cause: {cause}"
        ),
        None,
    );

    let triaged = json!({"category": "database", "severity": "critical"});
    assert_outputs(
        &run,
        &[
            ("triage", triaged.clone()),
            ("metrics", json!(metrics)),
            ("diagnose", json!(cause)),
            ("playbook", json!(playbook)),
        ],
    );
    assert!(run["output"]["triage"].is_object(), "{:#}", run["output"]);
    assert_eq!(
        run["output"],
        json!({"playbook": playbook, "severity": "critical", "triage": triaged})
    );
    assert_billing(
        &run,
        &[
            // claude-haiku-4-5: 150 × $1/M + 12 × $5/M = 150 + 60 = 210 µ$; × 1.2 = 252
            ("triage", 150, 12, 210, 252),
            // gemini-2.5-flash: 70 × $0.3/M + 28 × $2.5/M = 21 + 70 = 91 µ$; × 1.2 = 109.2 → 109
            ("metrics", 70, 28, 91, 109),
            // claude-sonnet-4: 110 × $3/M + 20 × $15/M = 330 + 300 = 630 µ$; × 1.2 = 756
            ("diagnose", 110, 20, 630, 756),
            // gpt-4.1-mini: 95 × $0.4/M + 40 × $1.6/M = 38 + 64 = 102 µ$; × 1.2 = 122.4 → 122
            ("playbook", 95, 40, 102, 122),
        ],
    );
}

// ---------------------------------------------------------------------------
// 004 §6.3: Legal Contract Review (extract → risk → compliance → summary)
// ---------------------------------------------------------------------------

const EXTRACTOR: AgentDef = AgentDef {
    name: "Contract Extractor",
    description: "extracts key terms and clauses from contracts",
    instructions: "Answer with JSON: term_months, liability_cap_eur and clauses.",
    provider: "gemini",
    model: "gemini-2.5-pro",
    temperature: None,
    max_tokens: Some(1000),
};

const RISK: AgentDef = AgentDef {
    name: "Risk Assessor",
    description: "identifies risk areas in contract terms",
    instructions: "Flag each concern as high, medium or low.",
    provider: "anthropic",
    model: "claude-3-7-sonnet",
    temperature: None,
    max_tokens: None,
};

const COMPLIANCE: AgentDef = AgentDef {
    name: "Compliance Checker",
    description: "checks contract terms against regulatory requirements",
    instructions: "Cite the regulation for each finding.",
    provider: "openai",
    model: "gpt-4o",
    temperature: Some(0.1),
    max_tokens: None,
};

const SUMMARISER: AgentDef = AgentDef {
    name: "Executive Summariser",
    description: "writes executive summaries with recommendations",
    instructions: "At most five sentences; end with a recommendation.",
    provider: "openai",
    model: "gpt-4.1",
    temperature: None,
    max_tokens: None,
};

#[test]
fn legal_contract_review_extracts_assesses_checks_and_summarises() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pipeline-legal");
    let (extractor, risk, compliance, summariser) = (
        EXTRACTOR.create(target, &org),
        RISK.create(target, &org),
        COMPLIANCE.create(target, &org),
        SUMMARISER.create(target, &org),
    );
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Legal Contract Review",
            "variables": {"jurisdiction": "EU"},
            "nodes": [
                {"id": "contract", "type": "trigger", "config": {"inputs": {
                    "text": {"type": "string", "required": true},
                    "parties": {"type": "array", "required": true},
                    "value_eur": {"type": "number", "required": true}
                }}},
                {"id": "extract", "type": "agent", "name": "Extract terms", "config": {
                    "agent_id": extractor,
                    "prompt": "Extract the key terms and clauses of this contract:\n\n{{ trigger.text }}",
                    "output_schema": contract_schema()
                }},
                {"id": "risk", "type": "agent", "name": "Assess risk", "config": {
                    "agent_id": risk,
                    "prompt": "Identify risk areas and flag concerns in these terms (contract value EUR {{ trigger.value_eur }}):\n\n{{ previous_output }}"
                }},
                {"id": "compliance", "type": "agent", "name": "Check compliance", "config": {
                    "agent_id": compliance,
                    "prompt": "Check these clauses against {{ variables.jurisdiction }} regulatory requirements:\n{{ steps.extract.output.clauses }}\n\nRisks already flagged:\n{{ previous_output }}"
                }},
                {"id": "summary", "type": "agent", "name": "Summarise", "config": {
                    "agent_id": summariser,
                    "prompt": "Write an executive summary with recommendations for the agreement between {{ trigger.parties[0] }} and {{ trigger.parties[1] }}:\nRisks: {{ steps.risk.output }}\nCompliance: {{ steps.compliance.output }}",
                    "max_tokens": 500
                }},
                {"id": "facts", "type": "transform", "name": "Key facts", "config": {"template": {
                    "cap_below_value": "{{ steps.extract.output.liability_cap_eur < trigger.value_eur }}",
                    "parties": "{{ trigger.parties }}",
                    "term_months": "{{ steps.extract.output.term_months }}",
                    "value_eur": "{{ trigger.value_eur }}"
                }}},
                {"id": "result", "type": "output", "config": {"value": {
                    "facts": "{{ previous_output }}",
                    "summary": "{{ steps.summary.output }}"
                }}}
            ],
            "edges": [
                {"source": "contract", "target": "extract"},
                {"source": "extract", "target": "risk"},
                {"source": "risk", "target": "compliance"},
                {"source": "compliance", "target": "summary"},
                {"source": "summary", "target": "facts"},
                {"source": "facts", "target": "result"}
            ]
        }),
    );
    let text = "Master Services Agreement between Acme GmbH and Globex Inc. Term: 24 months, renewing automatically. Liability is capped at EUR 50,000. Globex indemnifies Acme without limit. Customer data may be processed in the United States.";
    let risks = "High: the liability cap of EUR 50,000 is a fifth of the contract value.\nMedium: automatic renewal.";
    let findings =
        "GDPR Art. 44: processing in the United States needs standard contractual clauses.";
    let summary = "The agreement caps liability far below its value and moves data to the United States. Recommendation: raise the cap to the contract value and add standard contractual clauses before signing.";
    EXTRACTOR.answers(
        Reply::text(r#"{"term_months": 24, "liability_cap_eur": 50000, "clauses": ["automatic renewal", "unlimited indemnity by Globex", "data processing in the United States"]}"#)
            .tokens(160, 45),
    );
    RISK.answers(Reply::text(risks).tokens(120, 22));
    COMPLIANCE.answers(Reply::text(findings).tokens(100, 15));
    SUMMARISER.answers(Reply::text(summary).tokens(180, 48));

    let run = run_to_completion(
        target,
        &org,
        &workflow,
        json!({"text": text, "parties": ["Acme GmbH", "Globex Inc."], "value_eur": 250000}),
    );

    let clauses_text = r#"["automatic renewal","unlimited indemnity by Globex","data processing in the United States"]"#;
    let sent = chat_requests();
    assert_request_count(&sent, 4);
    EXTRACTOR.assert_structured_request(
        &sent[0],
        &format!("Extract the key terms and clauses of this contract:\n\n{text}"),
        &contract_schema(),
    );
    RISK.assert_request(
        &sent[1],
        &format!(
            "Identify risk areas and flag concerns in these terms (contract value EUR 250000):\n\n{{\"clauses\":{clauses_text},\"liability_cap_eur\":50000,\"term_months\":24}}"
        ),
        None,
    );
    COMPLIANCE.assert_request(
        &sent[2],
        &format!(
            "Check these clauses against EU regulatory requirements:\n{clauses_text}\n\nRisks already flagged:\n{risks}"
        ),
        None,
    );
    SUMMARISER.assert_request(
        &sent[3],
        &format!(
            "Write an executive summary with recommendations for the agreement between Acme GmbH and Globex Inc.:\nRisks: {risks}\nCompliance: {findings}"
        ),
        Some(500),
    );

    let facts = json!({
        "cap_below_value": true,
        "parties": ["Acme GmbH", "Globex Inc."],
        "term_months": 24,
        "value_eur": 250000
    });
    assert_outputs(
        &run,
        &[
            (
                "extract",
                json!({
                    "clauses": ["automatic renewal", "unlimited indemnity by Globex", "data processing in the United States"],
                    "liability_cap_eur": 50000,
                    "term_months": 24
                }),
            ),
            ("risk", json!(risks)),
            ("compliance", json!(findings)),
            ("summary", json!(summary)),
            ("facts", facts.clone()),
        ],
    );
    // Typed templates: a boolean expression, a list and numbers keep their types.
    let output = &run["output"];
    assert!(
        output["facts"]["cap_below_value"].is_boolean(),
        "{output:#}"
    );
    assert!(output["facts"]["parties"].is_array(), "{output:#}");
    assert!(output["facts"]["term_months"].is_u64(), "{output:#}");
    assert!(output["facts"]["value_eur"].is_u64(), "{output:#}");
    assert_eq!(*output, json!({"facts": facts, "summary": summary}));
    assert_billing(
        &run,
        &[
            // gemini-2.5-pro: 160 × $1.25/M + 45 × $10/M = 200 + 450 = 650 µ$; × 1.2 = 780
            ("extract", 160, 45, 650, 780),
            // claude-3-7-sonnet: 120 × $3/M + 22 × $15/M = 360 + 330 = 690 µ$; × 1.2 = 828
            ("risk", 120, 22, 690, 828),
            // gpt-4o: 100 × $2.5/M + 15 × $10/M = 250 + 150 = 400 µ$; × 1.2 = 480
            ("compliance", 100, 15, 400, 480),
            // gpt-4.1: 180 × $2/M + 48 × $8/M = 360 + 384 = 744 µ$; × 1.2 = 892.8 → 893
            ("summary", 180, 48, 744, 893),
        ],
    );
}

// ---------------------------------------------------------------------------
// 000: lead scoring with a branch on the structured score (>= 70)
// ---------------------------------------------------------------------------

const SCORER: AgentDef = AgentDef {
    name: "Lead Scoring Agent",
    description: "scores leads from 0 to 100",
    instructions: "Answer with JSON only: {\"score\": number, \"factors\": [string]}.",
    provider: "openai",
    model: "gpt-4o",
    temperature: Some(0.2),
    max_tokens: None,
};

const HIGH_VALUE: AgentDef = AgentDef {
    name: "High-Value Task Creator",
    description: "creates follow-up tasks for high-value leads",
    instructions: "Name the owner, the action and a due date.",
    provider: "anthropic",
    model: "claude-sonnet-4",
    temperature: None,
    max_tokens: Some(400),
};

const NURTURE: AgentDef = AgentDef {
    name: "Nurture Marketer",
    description: "enrols leads in nurture campaigns",
    instructions: "Pick one campaign and say why.",
    provider: "gemini",
    model: "gemini-2.0-flash",
    temperature: None,
    max_tokens: None,
};

#[test]
fn lead_scoring_routes_on_the_structured_score() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("pipeline-lead-scoring");
    let (scorer, high_value, nurture) = (
        SCORER.create(target, &org),
        HIGH_VALUE.create(target, &org),
        NURTURE.create(target, &org),
    );
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Lead scoring",
            "nodes": [
                {"id": "lead", "type": "trigger", "name": "lead.created", "config": {"inputs": {"lead": {"type": "object", "required": true}}}},
                {"id": "score_lead", "type": "agent", "name": "Score lead", "config": {
                    "agent_id": scorer,
                    "prompt": "Analyze this lead and score it from 0 to 100: {{ trigger.lead }}",
                    "output_schema": lead_schema()
                }},
                {"id": "qualified", "type": "condition", "config": {"expression": "steps.score_lead.output.score >= 70"}},
                {"id": "high_value", "type": "agent", "name": "Create High-Value Task", "config": {
                    "agent_id": high_value,
                    "prompt": "Create a high-value task for {{ trigger.lead.name }} ({{ trigger.lead.email }}): score {{ steps.score_lead.output.score }}, factors {{ steps.score_lead.output.factors }}."
                }},
                {"id": "nurture", "type": "agent", "name": "Nurture", "config": {
                    "agent_id": nurture,
                    "prompt": "Enrol {{ trigger.lead.name }} ({{ trigger.lead.email }}) in a nurture campaign: score {{ steps.score_lead.output.score }}, factors {{ steps.score_lead.output.factors }}."
                }},
                {"id": "result", "type": "output", "config": {"value": {
                    "lead": "{{ trigger.lead }}",
                    "next_step": "{{ previous_output }}",
                    "qualified": "{{ steps.qualified.output }}",
                    "score": "{{ steps.score_lead.output.score }}"
                }}}
            ],
            "edges": [
                {"source": "lead", "target": "score_lead"},
                {"source": "score_lead", "target": "qualified"},
                {"source": "qualified", "target": "high_value", "source_handle": "true"},
                {"source": "qualified", "target": "nurture", "source_handle": "false"},
                {"source": "high_value", "target": "result"},
                {"source": "nurture", "target": "result"}
            ]
        }),
    );

    // A hot lead: the reference's own figures (score 85, 1200 in / 400 out).
    let john =
        json!({"company": "Initech", "email": "john@initech.example", "id": "123", "name": "John"});
    let task = "Task created: Sarah (AE) calls John at Initech by Friday to schedule a demo and send pricing.";
    SCORER.answers(
        Reply::text(r#"{"score": 85, "factors": ["High engagement", "Budget confirmed"]}"#)
            .tokens(1200, 400),
    );
    HIGH_VALUE.answers(Reply::text(task).tokens(90, 20));
    let hot = run_to_completion(target, &org, &workflow, json!({"lead": john}));

    let sent = chat_requests();
    assert_request_count(&sent, 2);
    SCORER.assert_structured_request(
        &sent[0],
        r#"Analyze this lead and score it from 0 to 100: {"company":"Initech","email":"john@initech.example","id":"123","name":"John"}"#,
        &lead_schema(),
    );
    HIGH_VALUE.assert_request(
        &sent[1],
        r#"Create a high-value task for John (john@initech.example): score 85, factors ["High engagement","Budget confirmed"]."#,
        None,
    );
    assert_outputs(
        &hot,
        &[
            (
                "score_lead",
                json!({"score": 85, "factors": ["High engagement", "Budget confirmed"]}),
            ),
            ("qualified", json!(true)),
            ("high_value", json!(task)),
        ],
    );
    assert_eq!(step(&hot, "qualified")["outcome"], "true");
    assert_eq!(step(&hot, "nurture")["status"], "skipped", "{hot:#}");
    assert!(hot["output"]["lead"].is_object(), "{:#}", hot["output"]);
    assert!(hot["output"]["score"].is_u64(), "{:#}", hot["output"]);
    assert_eq!(
        hot["output"],
        json!({"lead": john, "next_step": task, "qualified": true, "score": 85})
    );
    assert_billing(
        &hot,
        &[
            // gpt-4o: 1200 × $2.5/M + 400 × $10/M = 3000 + 4000 = 7000 µ$; × 1.2 = 8400
            ("score_lead", 1200, 400, 7000, 8400),
            // claude-sonnet-4: 90 × $3/M + 20 × $15/M = 270 + 300 = 570 µ$; × 1.2 = 684
            ("high_value", 90, 20, 570, 684),
        ],
    );

    // A cold lead goes to the other branch.
    let bo = json!({"company": "Tiny Co", "email": "bo@tiny.example", "id": "124", "name": "Bo"});
    let enrolled = "Enrolled Bo in the 'Getting started' campaign: a small team, so revisit the budget next year.";
    SCORER.answers(
        Reply::text(r#"{"score": 40, "factors": ["Small team", "No budget this year"]}"#)
            .tokens(300, 30),
    );
    NURTURE.answers(Reply::text(enrolled).tokens(70, 18));
    let cold = run_to_completion(target, &org, &workflow, json!({"lead": bo}));

    let sent = chat_requests();
    assert_request_count(&sent, 4);
    SCORER.assert_structured_request(
        &sent[2],
        r#"Analyze this lead and score it from 0 to 100: {"company":"Tiny Co","email":"bo@tiny.example","id":"124","name":"Bo"}"#,
        &lead_schema(),
    );
    NURTURE.assert_request(
        &sent[3],
        r#"Enrol Bo (bo@tiny.example) in a nurture campaign: score 40, factors ["Small team","No budget this year"]."#,
        None,
    );
    assert_outputs(
        &cold,
        &[
            (
                "score_lead",
                json!({"score": 40, "factors": ["Small team", "No budget this year"]}),
            ),
            ("qualified", json!(false)),
            ("nurture", json!(enrolled)),
        ],
    );
    assert_eq!(step(&cold, "qualified")["outcome"], "false");
    assert_eq!(step(&cold, "high_value")["status"], "skipped", "{cold:#}");
    assert_eq!(
        cold["output"],
        json!({"lead": bo, "next_step": enrolled, "qualified": false, "score": 40})
    );
    assert_billing(
        &cold,
        &[
            // gpt-4o: 300 × $2.5/M + 30 × $10/M = 750 + 300 = 1050 µ$; × 1.2 = 1260
            ("score_lead", 300, 30, 1050, 1260),
            // gemini-2.0-flash: 70 × $0.1/M + 18 × $0.4/M = 7 + 7.2 = 14.2 → 14 µ$; × 1.2 = 16.8 → 17
            ("nurture", 70, 18, 14, 17),
        ],
    );
    assert_eq!(fake_llm().remaining(), 0, "every scripted answer was used");
}
