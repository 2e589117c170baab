//! Workflow schedules: cron expressions read in an IANA time zone.
//! `PUT /api/v1/workflows/:id/schedules` replaces a workflow's set and
//! `GET` lists it; the tick starts the due ones (`engine::schedules`).
//!
//! Expressions have 5 fields (minute, hour, day of month, month, day of
//! week) or 6 with a leading seconds field, and are evaluated by `croner` in
//! the schedule's time zone (`spindle-tz`: the IANA database's current
//! rules). Across daylight-saving changes croner follows Vixie cron: a
//! wall-clock time that does not exist (clocks spring forward) runs a
//! fixed-time schedule (`30 2 * * *`) once, at the first instant after the
//! gap, while wildcard and step fields (`*/15 * * * *`) simply have no
//! occurrences inside the gap; a wall-clock time that happens twice (clocks
//! fall back) runs a fixed-time schedule once, at its first occurrence, and
//! wildcard or step schedules in both passes.

use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::engine::check_inputs;
use crate::{fetch_one, json_column, now_ms, timestamp};
use chrono::DateTime;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde_json::{Map, Value as Json, json};
use spindle_auth::Role;
use spindle_definition::Definition;
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Params};
use spindle_store::{OrgScoped, Value, in_transaction};
use spindle_tz::Zone;

/// Most schedules one workflow may carry.
pub(crate) const MAX_SCHEDULES: usize = 20;
/// Longest cron expression accepted.
const MAX_CRON_CHARS: usize = 200;
/// Largest `inputs` object, serialised.
const MAX_INPUTS_BYTES: usize = 64 * 1024;
/// The input every scheduled run gets: its due time, RFC 3339.
pub(crate) const SCHEDULED_AT: &str = "scheduled_at";
/// The fields a schedule is made of.
const SCHEDULE_FIELDS: &[&str] = &["cron", "timezone", "inputs", "enabled"];
/// Fields a `GET` shows that a `PUT` accepts back and ignores.
const READ_ONLY_FIELDS: &[&str] = &[
    "id",
    "workflow_id",
    "next_run_at",
    "last_run_at",
    "created_at",
    "updated_at",
];

/// When a schedule is due: a cron expression read in a time zone.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    cron: Cron,
    zone: Zone,
}

impl Timing {
    /// Parses both parts; each problem is `(field, what is wrong)`.
    pub(crate) fn parse(cron: &str, timezone: &str) -> Result<Self, Vec<(&'static str, String)>> {
        let cron = parse_cron(cron).map_err(|p| ("cron", p));
        let zone = parse_timezone(timezone).map_err(|p| ("timezone", p));
        match (cron, zone) {
            (Ok(cron), Ok(zone)) => Ok(Self { cron, zone }),
            (cron, zone) => Err([cron.err(), zone.err()].into_iter().flatten().collect()),
        }
    }

    /// The first due time strictly after `after_ms` (UTC ms); `None` when
    /// the expression never matches again (croner searches up to year 5000).
    pub(crate) fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut from = DateTime::from_timestamp_millis(after_ms)?.with_timezone(&self.zone);
        // croner compares whole seconds; step on until past `after_ms`.
        for _ in 0..3 {
            let next = self
                .cron
                .find_next_occurrence(&from, false)
                .ok()?
                .timestamp_millis();
            if next > after_ms {
                return Some(next);
            }
            from = DateTime::from_timestamp_millis(next)?.with_timezone(&self.zone);
        }
        None
    }
}

/// A cron expression: 5 fields, or 6 with a leading seconds field.
fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if !text.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "has {fields} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("is not a valid cron expression: {e}"))
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`).
fn parse_timezone(text: &str) -> Result<Zone, String> {
    Zone::named(text).ok_or_else(|| {
        format!("unknown time zone {text:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\"")
    })
}

/// One schedule of a `PUT` body, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScheduleSpec {
    /// The expression as given, trimmed.
    pub(crate) cron: String,
    /// The IANA time zone.
    pub(crate) timezone: String,
    /// The run's inputs.
    pub(crate) inputs: Map<String, Json>,
    /// Whether the tick starts it.
    pub(crate) enabled: bool,
    /// The first due time after the request, when enabled.
    pub(crate) next_run_at: Option<i64>,
}

/// Reads a `PUT` body: `400` for unknown fields, `422` naming every problem
/// with its path (`schedules[1].timezone`). Inputs are checked against the
/// trigger's declared inputs like a run's; due times are counted from `now`.
pub(crate) fn parse_schedules(
    body: &Map<String, Json>,
    definition: &Definition,
    now: i64,
) -> Result<Vec<ScheduleSpec>, ApiError> {
    let invalid = |details: Vec<ErrorDetail>| ApiError::Validation {
        message: "the schedules are invalid".into(),
        details,
    };
    let entries = match body.get("schedules") {
        Some(Json::Array(entries)) => entries,
        None | Some(Json::Null) => {
            return Err(invalid(vec![ErrorDetail::new(
                "schedules",
                "is required: an array of schedules (empty to remove them all)",
            )]));
        }
        Some(_) => {
            return Err(invalid(vec![ErrorDetail::new(
                "schedules",
                "must be an array",
            )]));
        }
    };
    if entries.len() > MAX_SCHEDULES {
        return Err(invalid(vec![ErrorDetail::new(
            "schedules",
            format!("at most {MAX_SCHEDULES} schedules per workflow"),
        )]));
    }
    let unknown: Vec<ErrorDetail> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| entry.as_object().map(|object| (i, object)))
        .flat_map(|(i, object)| {
            object
                .keys()
                .filter(|k| {
                    !SCHEDULE_FIELDS.contains(&k.as_str())
                        && !READ_ONLY_FIELDS.contains(&k.as_str())
                })
                .map(move |k| ErrorDetail::new(format!("schedules[{i}].{k}"), "unknown field"))
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::BadRequest {
            message: format!(
                "a schedule has unknown fields; accepted fields: {}",
                SCHEDULE_FIELDS.join(", ")
            ),
            details: unknown,
        });
    }
    let mut problems = Vec::new();
    let mut specs: Vec<ScheduleSpec> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = |field: &str| format!("schedules[{i}].{field}");
        let Some(object) = entry.as_object() else {
            problems.push(ErrorDetail::new(
                format!("schedules[{i}]"),
                "must be an object",
            ));
            continue;
        };
        let before = problems.len();
        let cron = match object.get("cron") {
            Some(Json::String(cron))
                if (1..=MAX_CRON_CHARS).contains(&cron.trim().chars().count()) =>
            {
                cron.trim().to_string()
            }
            _ => {
                problems.push(ErrorDetail::new(
                    at("cron"),
                    format!("a cron expression of 1 to {MAX_CRON_CHARS} characters is required"),
                ));
                String::new()
            }
        };
        let timezone = match object.get("timezone") {
            None | Some(Json::Null) => "UTC".to_string(),
            Some(Json::String(zone)) => zone.clone(),
            Some(_) => {
                problems.push(ErrorDetail::new(
                    at("timezone"),
                    "must be a string: an IANA time zone name",
                ));
                "UTC".to_string()
            }
        };
        let inputs = match object.get("inputs") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(inputs)) => inputs.clone(),
            Some(_) => {
                problems.push(ErrorDetail::new(at("inputs"), "must be a JSON object"));
                Map::new()
            }
        };
        let enabled = match object.get("enabled") {
            None | Some(Json::Null) => true,
            Some(Json::Bool(enabled)) => *enabled,
            Some(_) => {
                problems.push(ErrorDetail::new(at("enabled"), "must be true or false"));
                true
            }
        };
        if inputs.contains_key(SCHEDULED_AT) {
            problems.push(ErrorDetail::new(
                at(&format!("inputs.{SCHEDULED_AT}")),
                "is set by the schedule on each run (its due time)",
            ));
        }
        if Json::Object(inputs.clone()).to_string().len() > MAX_INPUTS_BYTES {
            problems.push(ErrorDetail::new(
                at("inputs"),
                format!("is larger than {MAX_INPUTS_BYTES} bytes"),
            ));
        } else if let Err(ApiError::Validation { details, .. }) = check_inputs(definition, &inputs)
        {
            problems.extend(
                details
                    .into_iter()
                    .map(|d| ErrorDetail::new(format!("schedules[{i}].{}", d.path), d.problem)),
            );
        }
        let mut next_run_at = None;
        if !cron.is_empty() {
            match Timing::parse(&cron, &timezone) {
                Ok(timing) => match timing.next_after(now) {
                    Some(next) => next_run_at = enabled.then_some(next),
                    None => problems.push(ErrorDetail::new(at("cron"), "never comes due")),
                },
                Err(found) => problems.extend(
                    found
                        .into_iter()
                        .map(|(field, problem)| ErrorDetail::new(at(field), problem)),
                ),
            }
        } else if let Err(problem) = parse_timezone(&timezone) {
            problems.push(ErrorDetail::new(at("timezone"), problem));
        }
        if problems.len() > before {
            continue;
        }
        let spec = ScheduleSpec {
            cron,
            timezone,
            inputs,
            enabled,
            next_run_at,
        };
        if let Some(j) = specs.iter().position(|s| {
            (&s.cron, &s.timezone, &s.inputs) == (&spec.cron, &spec.timezone, &spec.inputs)
        }) {
            problems.push(ErrorDetail::new(
                format!("schedules[{i}]"),
                format!("repeats schedules[{j}]: the same cron, time zone and inputs"),
            ));
            continue;
        }
        specs.push(spec);
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(invalid(problems))
    }
}

/// The live workflow's current definition, or 404.
fn current_definition(org: &OrgScoped, workflow_id: &str) -> Result<Definition, ApiError> {
    let row = fetch_one(
        org,
        "SELECT v.definition FROM workflows w JOIN workflow_versions v \
         ON v.workflow_id = w.id AND v.version = w.current_version \
         WHERE w.org_id = ?1 AND w.id = ?2 AND w.deleted_at IS NULL",
        &[Value::from(workflow_id)],
        || format!("workflow {workflow_id}"),
    )?;
    serde_json::from_str(row[0].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored definition is unreadable: {e}")))
}

/// `PUT /api/v1/workflows/:id/schedules` (member) `{schedules: [{cron,
/// timezone?, inputs?, enabled?}]}`: replaces the workflow's schedules in one
/// transaction and answers them with their `next_run_at`.
pub(super) fn replace(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    // Due schedules start on the tick: make sure the app's own one runs.
    crate::engine::kick_heartbeat(ctx);
    let workflow_id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let definition = current_definition(&org, workflow_id)?;
    if request.body.is_empty() {
        return Err(ApiError::bad_request(
            "expected {\"schedules\": [{\"cron\", \"timezone\"?, \"inputs\"?, \"enabled\"?}]}",
        ));
    }
    let body = request.json_object(&["schedules"])?;
    let now = now_ms();
    let specs = parse_schedules(&body, &definition, now)?;
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        current_definition(&org, workflow_id)?;
        org.execute(
            "DELETE FROM schedules WHERE org_id = ?1 AND workflow_id = ?2",
            &[Value::from(workflow_id)],
        )?;
        for (position, spec) in specs.iter().enumerate() {
            db.execute(
                "INSERT INTO schedules (id, org_id, workflow_id, position, cron, timezone, inputs, enabled, \
                 next_run_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                &[
                    Value::Text(ctx.new_id()),
                    Value::from(caller.org_id.as_str()),
                    Value::from(workflow_id),
                    Value::Integer(i64::try_from(position).unwrap_or_default()),
                    Value::from(spec.cron.as_str()),
                    Value::from(spec.timezone.as_str()),
                    Value::Text(Json::Object(spec.inputs.clone()).to_string()),
                    Value::Integer(i64::from(spec.enabled)),
                    Value::from(spec.next_run_at),
                    Value::Integer(now),
                ],
            )?;
        }
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "workflow.schedules_replaced",
            ("workflow", workflow_id),
            &json!({"schedules": specs.len()}),
        )
    })?;
    Ok(ApiResponse::json(200, &listing(&org, workflow_id)?))
}

/// `GET /api/v1/workflows/:id/schedules` (viewer): the workflow's schedules
/// in the order they were given, with `next_run_at` and `last_run_at`.
pub(super) fn list(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let workflow_id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    fetch_one(
        &org,
        "SELECT id FROM workflows WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        &[Value::from(workflow_id)],
        || format!("workflow {workflow_id}"),
    )?;
    Ok(ApiResponse::json(200, &listing(&org, workflow_id)?))
}

/// `{workflow_id, data: [schedule]}`, in position order.
fn listing(org: &OrgScoped, workflow_id: &str) -> Result<Json, ApiError> {
    let rows = org.execute(
        "SELECT id, cron, timezone, inputs, enabled, next_run_at, last_run_at, created_at, updated_at \
         FROM schedules WHERE org_id = ?1 AND workflow_id = ?2 ORDER BY position",
        &[Value::from(workflow_id)],
    )?;
    let data: Vec<Json> = rows
        .rows
        .iter()
        .map(|row| {
            json!({
                "id": row[0].as_str(),
                "workflow_id": workflow_id,
                "cron": row[1].as_str(),
                "timezone": row[2].as_str(),
                "inputs": json_column(&row[3]).unwrap_or_else(|| json!({})),
                "enabled": row[4].as_i64() == Some(1),
                "next_run_at": row[5].as_i64().map(timestamp),
                "last_run_at": row[6].as_i64().map(timestamp),
                "created_at": row[7].as_i64().map(timestamp),
                "updated_at": row[8].as_i64().map(timestamp),
            })
        })
        .collect();
    Ok(json!({"workflow_id": workflow_id, "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_definition::parse_definition;

    /// UTC ms of an RFC 3339 time.
    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    fn next(cron: &str, zone: &str, after: &str) -> String {
        let timing = Timing::parse(cron, zone).unwrap();
        timestamp(timing.next_after(ms(after)).expect("a next occurrence"))
    }

    fn definition(inputs: Json) -> Definition {
        parse_definition(&json!({
            "nodes": [
                {"id": "start", "type": "trigger", "config": {"inputs": inputs}},
                {"id": "done", "type": "output", "config": {"value": "{{ trigger }}"}}
            ],
            "edges": [{"source": "start", "target": "done"}]
        }))
        .unwrap()
    }

    fn problems(body: Json, inputs: Json) -> Vec<(String, String)> {
        match parse_schedules(
            body.as_object().unwrap(),
            &definition(inputs),
            ms("2026-01-01T00:00:00Z"),
        ) {
            Err(ApiError::Validation { details, .. })
            | Err(ApiError::BadRequest { details, .. }) => {
                details.into_iter().map(|d| (d.path, d.problem)).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn paths(body: Json) -> Vec<String> {
        problems(body, json!({}))
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn the_next_occurrence_is_read_in_the_time_zone() {
        // Berlin is UTC+1 in winter and UTC+2 in summer.
        assert_eq!(
            next("0 9 * * *", "Europe/Berlin", "2026-01-15T12:00:00Z"),
            "2026-01-16T08:00:00.000Z"
        );
        assert_eq!(
            next("0 9 * * *", "Europe/Berlin", "2026-07-15T12:00:00Z"),
            "2026-07-16T07:00:00.000Z"
        );
        assert_eq!(
            next("0 9 * * *", "UTC", "2026-07-15T12:00:00Z"),
            "2026-07-16T09:00:00.000Z"
        );
        assert_eq!(
            next("0 9 * * MON", "America/New_York", "2026-07-15T12:00:00Z"),
            "2026-07-20T13:00:00.000Z"
        );
    }

    #[test]
    fn day_names_last_day_nth_weekday_and_nicknames_are_understood() {
        // 2026-07-17 is a Friday: the next weekday morning is Monday the 20th.
        assert_eq!(
            next("0 9 * * MON-FRI", "UTC", "2026-07-17T12:00:00Z"),
            "2026-07-20T09:00:00.000Z"
        );
        // February 2026 has 28 days.
        assert_eq!(
            next("0 9 L * *", "UTC", "2026-02-10T00:00:00Z"),
            "2026-02-28T09:00:00.000Z"
        );
        // July 2026 starts on a Wednesday: its Mondays are the 6th and the 13th.
        assert_eq!(
            next("0 9 * * MON#2", "UTC", "2026-07-01T00:00:00Z"),
            "2026-07-13T09:00:00.000Z"
        );
        assert_eq!(
            next("@daily", "UTC", "2026-07-15T12:00:00Z"),
            "2026-07-16T00:00:00.000Z"
        );
    }

    #[test]
    fn the_next_occurrence_is_strictly_after_the_given_time() {
        assert_eq!(
            next("*/10 * * * * *", "UTC", "2026-01-01T12:00:10Z"),
            "2026-01-01T12:00:20.000Z"
        );
        assert_eq!(
            next("*/10 * * * * *", "UTC", "2026-01-01T12:00:09.999Z"),
            "2026-01-01T12:00:10.000Z"
        );
        assert_eq!(
            next("*/10 * * * * *", "UTC", "2026-01-01T12:00:10.001Z"),
            "2026-01-01T12:00:20.000Z"
        );
        assert_eq!(
            next("0 * * * *", "UTC", "2026-01-01T12:00:00Z"),
            "2026-01-01T13:00:00.000Z"
        );
    }

    #[test]
    fn a_time_that_does_not_exist_runs_once_just_after_the_gap() {
        // 2026-03-29 02:00 CET jumps to 03:00 CEST in Berlin (01:00 UTC).
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z"),
            "2026-03-29T01:00:00.000Z"
        );
        // The day after, 02:30 exists again (CEST, UTC+2).
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00Z"),
            "2026-03-30T00:30:00.000Z"
        );
        // Step schedules have no occurrences inside the gap.
        assert_eq!(
            next("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:50:00Z"),
            "2026-03-29T01:00:00.000Z"
        );
    }

    #[test]
    fn a_time_that_happens_twice_runs_a_fixed_schedule_once() {
        // 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:30 is 00:30 and 01:30 UTC.
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z"),
            "2026-10-25T00:30:00.000Z"
        );
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00Z"),
            "2026-10-26T01:30:00.000Z"
        );
        // A step schedule runs in both passes of the repeated hour.
        assert_eq!(
            next("*/30 * * * *", "Europe/Berlin", "2026-10-25T00:30:00Z"),
            "2026-10-25T01:00:00.000Z"
        );
        assert_eq!(
            next("*/30 * * * *", "Europe/Berlin", "2026-10-25T01:00:00Z"),
            "2026-10-25T01:30:00.000Z"
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        for bad in [
            "61 * * * *",
            "* * *",
            "* * * * * * *",
            "x * * * *",
            "0 0 32 * *",
        ] {
            let Err(found) = Timing::parse(bad, "UTC") else {
                panic!("{bad} was accepted");
            };
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            assert_eq!(found[0].0, "cron");
        }
        let Err(found) = Timing::parse("nope", "Mars/Olympus") else {
            panic!("accepted");
        };
        assert_eq!(
            found.iter().map(|f| f.0).collect::<Vec<_>>(),
            ["cron", "timezone"]
        );
        assert!(found[1].1.contains("Mars/Olympus"), "{found:?}");
        assert!(Timing::parse("@daily", "Asia/Tokyo").is_ok());
    }

    #[test]
    fn a_body_is_read_with_defaults_and_next_run_times() {
        let body = json!({"schedules": [
            {"cron": " 0 9 * * MON-FRI ", "timezone": "Europe/Berlin", "inputs": {"topic": "news"}},
            {"cron": "*/5 * * * *", "enabled": false, "id": "ignored", "next_run_at": "ignored"}
        ]});
        let specs = parse_schedules(
            body.as_object().unwrap(),
            &definition(json!({"topic": {"type": "string"}})),
            ms("2026-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].cron, "0 9 * * MON-FRI");
        assert_eq!(specs[0].timezone, "Europe/Berlin");
        assert_eq!(specs[0].inputs["topic"], "news");
        assert!(specs[0].enabled);
        // 2026-01-01 is a Thursday.
        assert_eq!(specs[0].next_run_at, Some(ms("2026-01-01T08:00:00Z")));
        assert_eq!(specs[1].timezone, "UTC");
        assert!(!specs[1].enabled);
        assert_eq!(specs[1].next_run_at, None);
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let found = problems(
            json!({"schedules": [
                {"cron": "61 * * * *", "timezone": "Mars/Olympus"},
                {"cron": 5, "timezone": 1, "inputs": [], "enabled": "yes"},
                "daily",
                {"cron": "0 0 * * *", "inputs": {"count": "three", "scheduled_at": "x"}},
                {"cron": "0 0 30 2 *"}
            ]}),
            json!({"topic": {"type": "string", "required": true}, "count": {"type": "number"}}),
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "schedules[0].inputs.topic",
                "schedules[0].cron",
                "schedules[0].timezone",
                "schedules[1].cron",
                "schedules[1].timezone",
                "schedules[1].inputs",
                "schedules[1].enabled",
                "schedules[1].inputs.topic",
                "schedules[2]",
                "schedules[3].inputs.scheduled_at",
                "schedules[3].inputs.count",
                "schedules[3].inputs.topic",
                "schedules[4].inputs.topic",
                "schedules[4].cron",
            ],
            "{found:?}"
        );
    }

    #[test]
    fn shapes_limits_duplicates_and_unknown_fields() {
        assert_eq!(paths(json!({})), ["schedules"]);
        assert_eq!(
            paths(json!({"schedules": {"cron": "* * * * *"}})),
            ["schedules"]
        );
        let many: Vec<Json> = (0..=MAX_SCHEDULES)
            .map(|i| json!({"cron": format!("{i} * * * *")}))
            .collect();
        assert_eq!(paths(json!({"schedules": many})), ["schedules"]);
        assert_eq!(
            paths(
                json!({"schedules": [{"cron": "0 * * * *"}, {"cron": "0 * * * *", "timezone": "UTC"}]})
            ),
            ["schedules[1]"]
        );
        let unknown = parse_schedules(
            json!({"schedules": [{"cron": "0 * * * *", "every": "day"}]})
                .as_object()
                .unwrap(),
            &definition(json!({})),
            0,
        );
        let Err(ApiError::BadRequest { details, .. }) = unknown else {
            panic!("expected 400, got {unknown:?}");
        };
        assert_eq!(details[0].path, "schedules[0].every");
        assert_eq!(
            parse_schedules(
                json!({"schedules": []}).as_object().unwrap(),
                &definition(json!({})),
                0
            )
            .unwrap(),
            []
        );
    }
}
