//! Execution logs: what happened in a run, in order. The runner writes an
//! entry with each state change it describes ([`record`], in the same
//! transaction); clients read them as pages (`GET …/logs`) or follow them
//! live as Server-Sent Events (`GET …/events`).

use super::status::RunStatus;
use crate::auth::authenticate;
use crate::context::RequestContext;
use crate::listing::keyset_limit;
use crate::{fetch_one, json_column, now_ms, timestamp};
use serde_json::{Value as Json, json};
use spindle_auth::Role;
use spindle_http::{ApiError, ApiRequest, ApiResponse, BodyStream, ChunkSink, ErrorDetail, Params};
use spindle_store::{Db, OrgScoped, Value};
use std::fmt::Write as _;

/// The default and the largest page of `GET …/logs`.
/// How long one stream stays open: under the ~30 s that hosted Spin
/// platforms allow a request. The client reconnects with `Last-Event-ID`.
const STREAM_FOR_MS: i64 = 25_000;
/// How often an open stream looks for new entries.
const POLL_MS: u64 = 250;
/// Entries a stream reads per query.
const STREAM_BATCH: i64 = 200;
/// After this much silence the stream writes a comment: a write is the only
/// way to notice that the client has gone, and proxies keep a busy line open.
const HEARTBEAT_MS: i64 = 5_000;
/// The `retry:` hint: how soon an EventSource reconnects after the stream ends.
const RECONNECT_MS: u64 = 1_000;

/// How serious a log entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Normal progress.
    Info,
    /// Something failed but the run goes on (a retry, `on_error: continue`).
    Warn,
    /// A failure that ends the step or the run.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// What a log entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogEvent {
    /// The run was stored and began.
    RunStarted,
    /// A failed or cancelled run was resumed.
    RunRetried,
    /// A step's result was stored.
    StepCompleted,
    /// A step failed (error) or failed and was let through (warn).
    StepFailed,
    /// A step failed transiently and was queued to run again.
    StepRetrying,
    /// A step was queued for later: the organisation's provider limits are spent for now.
    StepDeferred,
    /// Every node is done or skipped.
    RunCompleted,
    /// A node's failure failed the run.
    RunFailed,
    /// A user cancelled the run.
    RunCancelled,
}

impl LogEvent {
    /// The event's name, as stored and as the stream's `event:` field.
    fn as_str(self) -> &'static str {
        match self {
            Self::RunStarted => "run.started",
            Self::RunRetried => "run.retried",
            Self::StepCompleted => "step.completed",
            Self::StepFailed => "step.failed",
            Self::StepRetrying => "step.retrying",
            Self::StepDeferred => "step.deferred",
            Self::RunCompleted => "run.completed",
            Self::RunFailed => "run.failed",
            Self::RunCancelled => "run.cancelled",
        }
    }

    fn level(self) -> Level {
        match self {
            Self::StepFailed | Self::RunFailed => Level::Error,
            Self::StepRetrying | Self::RunCancelled => Level::Warn,
            _ => Level::Info,
        }
    }
}

/// One entry to record: an event, the node it concerns, a message for
/// people and data for programs.
pub(crate) struct Entry<'a> {
    event: LogEvent,
    level: Level,
    node_id: Option<&'a str>,
    message: String,
    data: Json,
}

impl<'a> Entry<'a> {
    /// An entry of `event` at its usual level, with no node and empty data.
    pub(crate) fn new(event: LogEvent, message: impl Into<String>) -> Self {
        Self {
            event,
            level: event.level(),
            node_id: None,
            message: message.into(),
            data: json!({}),
        }
    }

    /// The node the entry concerns.
    pub(crate) fn node(mut self, node_id: &'a str) -> Self {
        self.node_id = Some(node_id);
        self
    }

    /// Another level than the event's usual one.
    pub(crate) fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// Details for programs (an error, an outcome, a retry time).
    pub(crate) fn data(mut self, data: Json) -> Self {
        self.data = data;
        self
    }
}

/// The entry of a stored step result: completed, or failed with `error` (an
/// error when the failure fails the step, a warning when its node's
/// `on_error` lets the run go on).
pub(crate) fn step_finished<'a>(
    node_id: &'a str,
    error: Option<&Json>,
    fails_step: bool,
    outcome: Option<&str>,
) -> Entry<'a> {
    let Some(error) = error else {
        let entry = Entry::new(LogEvent::StepCompleted, format!("{node_id} completed"));
        let data = outcome.map_or_else(|| json!({}), |o| json!({"outcome": o}));
        return entry.node(node_id).data(data);
    };
    let reason = error["message"].as_str().unwrap_or("unknown error");
    let mut entry = Entry::new(LogEvent::StepFailed, format!("{node_id} failed: {reason}"))
        .node(node_id)
        .data(json!({"error": error, "outcome": outcome}));
    if !fails_step {
        entry = entry.level(Level::Warn);
    }
    entry
}

/// Appends `entry` to the log of run `execution_id`. Call it inside the
/// transaction of the change it describes, so an entry exists exactly when
/// its change does.
pub(crate) fn record(
    db: &dyn Db,
    org_id: &str,
    execution_id: &str,
    entry: Entry<'_>,
) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO execution_logs (org_id, execution_id, at, level, event, node_id, message, data) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Value::from(org_id),
            Value::from(execution_id),
            Value::Integer(now_ms()),
            Value::from(entry.level.as_str()),
            Value::from(entry.event.as_str()),
            Value::from(entry.node_id),
            Value::Text(entry.message),
            Value::Text(entry.data.to_string()),
        ],
    )?;
    Ok(())
}

/// `GET /api/v1/executions/:id/logs?after=&limit=` (viewer): the run's
/// entries in order, after entry `after`; `next_after` is set when a full
/// page came back (there may be more).
pub(super) fn list(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let id = params.get("id").unwrap_or_default();
    let (after, limit) = page(request)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    run_status(&org, id)?;
    let entries = entries_after(&org, id, after, limit)?;
    let next = if entries.len() as i64 == limit {
        entries.last().map(|e| e["id"].clone())
    } else {
        None
    };
    Ok(ApiResponse::json(
        200,
        &json!({"data": entries, "next_after": next}),
    ))
}

/// `GET /api/v1/executions/:id/events` (viewer): the run's entries as
/// Server-Sent Events, as they are written, after `Last-Event-ID` (or
/// `?after=`). Ends with a `complete` event once the run has ended and all
/// is sent, or after [`STREAM_FOR_MS`] without one (the client reconnects).
pub(super) fn stream(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let id = params.get("id").unwrap_or_default().to_string();
    let after = resume_after(
        request.header("last-event-id"),
        request.query_param("after"),
    )?;
    run_status(&OrgScoped::new(ctx.db()?, &caller.org_id), &id)?;
    let org_id = caller.org_id;
    let produce = move |ctx: &RequestContext, write: &mut ChunkSink<'_>| {
        if let Err(error) = follow(ctx, &org_id, &id, after, STREAM_FOR_MS, write) {
            // The head is already out, so this cannot become an error
            // response: the stream ends and the client resumes where it was.
            eprintln!("spindle: the event stream of execution {id} failed: {error}");
        }
    };
    let mut response = ApiResponse::streaming("text/event-stream", BodyStream::new(produce));
    response.set_header("cache-control", "no-cache");
    // Reverse proxies such as nginx would otherwise hold events back.
    response.set_header("x-accel-buffering", "no");
    Ok(response)
}

/// Writes the run's entries after `after` as they appear, until the run has
/// ended (then `complete`), `open_for_ms` is up, or the client has gone.
fn follow(
    ctx: &RequestContext,
    org_id: &str,
    execution_id: &str,
    mut after: i64,
    open_for_ms: i64,
    write: &mut ChunkSink<'_>,
) -> Result<(), ApiError> {
    let org = OrgScoped::new(ctx.db()?, org_id);
    let started = now_ms();
    let mut last_write = started;
    // Sent first, so the client also learns at once that the stream is open.
    if !write(format!("retry: {RECONNECT_MS}\n\n").as_bytes()) {
        return Ok(());
    }
    loop {
        // The status before the entries: the entry that ends a run commits
        // with its status, so once the status says "ended" the query below
        // sees that entry too.
        let status = run_status(&org, execution_id)?;
        let entries = entries_after(&org, execution_id, after, STREAM_BATCH)?;
        for entry in &entries {
            let id = entry["id"].as_i64().unwrap_or(after);
            let event = entry["event"].as_str().unwrap_or("log");
            if !write(sse_event(Some(id), event, &entry.to_string()).as_bytes()) {
                return Ok(());
            }
            after = id;
            last_write = now_ms();
        }
        let caught_up = (entries.len() as i64) < STREAM_BATCH;
        if caught_up && status.is_terminal() {
            let data = json!({"execution_id": execution_id, "status": status.as_str()});
            write(sse_event(None, "complete", &data.to_string()).as_bytes());
            return Ok(());
        }
        let now = now_ms();
        if now - started >= open_for_ms {
            return Ok(());
        }
        if caught_up {
            if now - last_write >= HEARTBEAT_MS {
                if !write(b": keep-alive\n\n") {
                    return Ok(());
                }
                last_write = now;
            }
            ctx.sleep_ms(POLL_MS);
        }
    }
}

/// The run's status; the same 404 as `GET /executions/:id` for a run that
/// does not exist or is another organisation's.
fn run_status(org: &OrgScoped, execution_id: &str) -> Result<RunStatus, ApiError> {
    let row = fetch_one(
        org,
        "SELECT status FROM executions WHERE org_id = ?1 AND id = ?2",
        &[Value::from(execution_id)],
        || format!("execution {execution_id}"),
    )?;
    row[0].as_str().and_then(RunStatus::parse).ok_or_else(|| {
        ApiError::Internal(format!("execution {execution_id} has an unknown status"))
    })
}

/// Up to `limit` entries of the run after entry `after`, in order, as the API shows them.
fn entries_after(
    org: &OrgScoped,
    execution_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Json>, ApiError> {
    let rows = org.execute(
        "SELECT id, at, level, event, node_id, message, data FROM execution_logs \
         WHERE org_id = ?1 AND execution_id = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
        &[
            Value::from(execution_id),
            Value::Integer(after),
            Value::Integer(limit),
        ],
    )?;
    Ok(rows
        .rows
        .iter()
        .map(|row| {
            json!({
                "id": row[0].as_i64(),
                "at": row[1].as_i64().map(timestamp),
                "level": row[2].as_str(),
                "event": row[3].as_str(),
                "node_id": row[4].as_str(),
                "message": row[5].as_str(),
                "data": json_column(&row[6]).unwrap_or_else(|| json!({})),
            })
        })
        .collect())
}

/// `after` (an entry id, default 0) and `limit` (1 to [`crate::listing::KEYSET_MAX_LIMIT`], default
/// [`crate::listing::KEYSET_DEFAULT_LIMIT`]); 400 naming each bad one.
fn page(request: &ApiRequest) -> Result<(i64, i64), ApiError> {
    let mut problems = Vec::new();
    let after = match request.query_param("after") {
        None => 0,
        Some(text) => entry_id(text).unwrap_or_else(|| {
            problems.push(ErrorDetail::new(
                "query.after",
                "must be an entry id (an integer of 0 or more)",
            ));
            0
        }),
    };
    let limit = keyset_limit(request, &mut problems);
    if problems.is_empty() {
        Ok((after, limit))
    } else {
        Err(ApiError::BadRequest {
            message: "invalid query parameters".into(),
            details: problems,
        })
    }
}

/// Where a stream starts: after the `Last-Event-ID` header's entry (what an
/// EventSource sends when it reconnects), else after `?after=`, else at the
/// beginning. An empty header starts over, as SSE resets an empty id.
fn resume_after(last_event_id: Option<&str>, after: Option<&str>) -> Result<i64, ApiError> {
    let (text, path) = match (last_event_id, after) {
        (Some(header), _) => (header.trim(), "header.last-event-id"),
        (None, Some(query)) => (query, "query.after"),
        (None, None) => return Ok(0),
    };
    if text.is_empty() && path == "header.last-event-id" {
        return Ok(0);
    }
    entry_id(text).ok_or_else(|| ApiError::BadRequest {
        message: format!("invalid event id {text:?}"),
        details: vec![ErrorDetail::new(
            path,
            "must be an entry id (an integer of 0 or more)",
        )],
    })
}

/// An entry id: decimal digits only (no sign, no spaces) that fit an i64.
fn entry_id(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One Server-Sent Event. A raw line break would end the `data:` field, so
/// each line of `data` goes in a `data:` line of its own (the client joins
/// them with `\n`); JSON serialised compactly has none.
fn sse_event(id: Option<i64>, event: &str, data: &str) -> String {
    let mut frame = String::new();
    if let Some(id) = id {
        let _ = writeln!(frame, "id: {id}");
    }
    let _ = writeln!(frame, "event: {event}");
    for line in data.replace("\r\n", "\n").replace('\r', "\n").split('\n') {
        let _ = writeln!(frame, "data: {line}");
    }
    frame.push('\n');
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;

    #[test]
    fn an_event_has_its_id_name_and_data_then_a_blank_line() {
        assert_eq!(
            sse_event(Some(42), "step.completed", r#"{"a":1}"#),
            "id: 42\nevent: step.completed\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            sse_event(None, "complete", "{}"),
            "event: complete\ndata: {}\n\n"
        );
    }

    #[test]
    fn json_data_stays_on_one_line_even_with_newlines_in_strings() {
        let entry = json!({"message": "line one\nline two\r\n", "data": {"nested": [1, 2]}});
        let frame = sse_event(Some(7), "step.failed", &entry.to_string());
        let data: Vec<&str> = frame.lines().filter(|l| l.starts_with("data:")).collect();
        assert_eq!(data.len(), 1, "{frame}");
        let parsed: Json = serde_json::from_str(data[0].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(parsed, entry);
    }

    #[test]
    fn raw_line_breaks_become_one_data_line_each() {
        assert_eq!(
            sse_event(Some(1), "note", "a\nb\r\nc\rd"),
            "id: 1\nevent: note\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn last_event_id_wins_over_after_and_bad_ids_are_400() {
        assert_eq!(resume_after(None, None).unwrap(), 0);
        assert_eq!(resume_after(Some("12"), None).unwrap(), 12);
        assert_eq!(resume_after(Some(" 12 "), Some("3")).unwrap(), 12);
        assert_eq!(resume_after(None, Some("3")).unwrap(), 3);
        assert_eq!(resume_after(Some(""), Some("3")).unwrap(), 0);
        for bad in ["abc", "-1", "+1", "1.5", "99999999999999999999", "0x10"] {
            let error = resume_after(Some(bad), None).unwrap_err();
            assert_eq!(error.status(), 400, "{bad}");
            let ApiError::BadRequest { details, .. } = error else {
                panic!("a bad request");
            };
            assert_eq!(details[0].path, "header.last-event-id");
        }
        let ApiError::BadRequest { details, .. } = resume_after(None, Some("x")).unwrap_err()
        else {
            panic!("a bad request");
        };
        assert_eq!(details[0].path, "query.after");
    }

    #[test]
    fn a_step_result_is_completed_or_failed_at_the_level_its_on_error_gives() {
        let done = step_finished("a", None, false, Some("true"));
        assert_eq!(
            (done.event, done.level),
            (LogEvent::StepCompleted, Level::Info)
        );
        assert_eq!(done.data, json!({"outcome": "true"}));
        let error = json!({"code": "http_status", "message": "x answered 404"});
        let failed = step_finished("a", Some(&error), true, None);
        assert_eq!(
            (failed.event, failed.level),
            (LogEvent::StepFailed, Level::Error)
        );
        assert_eq!(failed.message, "a failed: x answered 404");
        assert_eq!(failed.data["error"], error);
        let let_through = step_finished("a", Some(&error), false, Some("error"));
        assert_eq!(
            (let_through.event, let_through.level),
            (LogEvent::StepFailed, Level::Warn)
        );
        assert_eq!(let_through.node_id, Some("a"));
    }

    /// A context with run `e1` of org `o1` in `status` and three entries.
    fn run_with_entries(status: &str) -> RequestContext {
        let ctx = RequestContext::new(Box::new(TestBackends::memory()));
        let db = ctx.db().unwrap();
        for insert in [
            "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0)",
            "INSERT INTO workflows (id, org_id, name, webhook_secret, created_at, updated_at) \
             VALUES ('w1', 'o1', 'flow', 'whsec_x', 0, 0)",
        ] {
            db.execute(insert, &[]).unwrap();
        }
        db.execute(
            "INSERT INTO executions (id, org_id, workflow_id, workflow_version, status, trigger_kind, \
             created_at, updated_at) VALUES ('e1', 'o1', 'w1', 1, ?, 'api', 0, 0)",
            &[Value::from(status)],
        )
        .unwrap();
        record(db, "o1", "e1", Entry::new(LogEvent::RunStarted, "started")).unwrap();
        let failure = Entry::new(LogEvent::StepFailed, "draft failed")
            .node("draft")
            .data(json!({"error": {"code": "x", "message": "two\nlines"}}));
        record(db, "o1", "e1", failure).unwrap();
        record(db, "o1", "e1", Entry::new(LogEvent::RunFailed, "failed")).unwrap();
        ctx
    }

    fn follow_all(ctx: &RequestContext, after: i64, open_for: usize) -> Vec<String> {
        let mut chunks = Vec::new();
        follow(ctx, "o1", "e1", after, STREAM_FOR_MS, &mut |chunk| {
            chunks.push(String::from_utf8_lossy(chunk).into_owned());
            chunks.len() < open_for
        })
        .unwrap();
        chunks
    }

    #[test]
    fn a_finished_run_streams_its_entries_in_order_then_complete() {
        let ctx = run_with_entries("failed");
        let chunks = follow_all(&ctx, 0, usize::MAX);
        assert_eq!(chunks[0], "retry: 1000\n\n");
        assert!(chunks[1].starts_with("id: 1\nevent: run.started\ndata: {"));
        assert!(chunks[2].starts_with("id: 2\nevent: step.failed\n"));
        let data: Json = serde_json::from_str(
            chunks[2]
                .lines()
                .nth(2)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(data["level"], "error");
        assert_eq!(data["node_id"], "draft");
        assert_eq!(data["data"]["error"]["message"], "two\nlines");
        assert!(chunks[3].starts_with("id: 3\nevent: run.failed\n"));
        assert_eq!(
            chunks[4],
            "event: complete\ndata: {\"execution_id\":\"e1\",\"status\":\"failed\"}\n\n"
        );
        assert_eq!(chunks.len(), 5);
    }

    #[test]
    fn a_stream_resumes_after_the_given_entry_and_stops_when_the_client_goes() {
        let ctx = run_with_entries("failed");
        let resumed = follow_all(&ctx, 2, usize::MAX);
        assert_eq!(resumed.len(), 3, "{resumed:?}");
        assert!(resumed[1].starts_with("id: 3\n"));
        // The client goes after the first entry: nothing more is written.
        assert_eq!(follow_all(&ctx, 0, 2).len(), 2);
    }

    #[test]
    fn a_stream_of_a_run_still_going_ends_when_its_time_is_up_without_complete() {
        let ctx = run_with_entries("running");
        let mut chunks = Vec::new();
        follow(&ctx, "o1", "e1", 0, 200, &mut |chunk| {
            chunks.push(String::from_utf8_lossy(chunk).into_owned());
            true
        })
        .unwrap();
        assert_eq!(chunks.len(), 4, "retry, then the three entries: {chunks:?}");
        assert!(chunks[3].starts_with("id: 3\n"), "{chunks:?}");
        assert!(chunks.iter().all(|c| !c.contains("event: complete")));
    }

    #[test]
    fn another_organisations_entries_are_not_listed() {
        let ctx = run_with_entries("running");
        let org = OrgScoped::new(ctx.db().unwrap(), "o2");
        assert_eq!(run_status(&org, "e1").unwrap_err().status(), 404);
        assert!(entries_after(&org, "e1", 0, 10).unwrap().is_empty());
        let ours = OrgScoped::new(ctx.db().unwrap(), "o1");
        let page = entries_after(&ours, "e1", 1, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["event"], "step.failed");
    }
}
