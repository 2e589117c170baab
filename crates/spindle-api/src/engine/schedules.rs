//! Due schedules, started by `POST /internal/tick`.
//!
//! A tick reads the enabled schedules whose `next_run_at` has passed (across
//! organisations, a bounded batch, earliest first) and claims each due time
//! with one `UPDATE … WHERE next_run_at = <the time read> RETURNING`: of two
//! ticks racing for it, exactly one moves it on and starts the run. The claim
//! comes first, so a due time starts at most one run; an instance that dies
//! between the claim and the run's insert loses that one run.
//!
//! A schedule moves on to its first occurrence strictly after the tick's
//! `now`: due times missed while no tick came (the scheduler was down) start
//! ONE run, for the earliest missed time, not one per missed time. A
//! schedule of an inactive workflow moves on without a run; one of a
//! deleted workflow is disabled.

use super::dispatch::internal_key;
use super::{check_inputs, runner};
use crate::auth::record_activity;
use crate::context::RequestContext;
use crate::timestamp;
use crate::workflows::schedules::{SCHEDULED_AT, Timing};
use serde_json::{Map, Value as Json, json};
use spindle_auth::{Caller, Role};
use spindle_definition::Definition;
use spindle_http::ApiError;
use spindle_store::{Db, OrgScoped, Value};

/// The tick's due query: enabled schedules whose time has come, earliest
/// first. `enabled = 1` lets SQLite use the partial index `schedules_due`.
const DUE_QUERY: &str = "SELECT id, org_id, workflow_id, cron, timezone, inputs, next_run_at \
     FROM schedules WHERE enabled = 1 AND next_run_at <= ?1 ORDER BY next_run_at LIMIT ?2";

/// A schedule whose due time has come, as the tick read it.
#[derive(Debug, Clone)]
struct Due {
    id: String,
    org_id: String,
    workflow_id: String,
    cron: String,
    timezone: String,
    inputs: Map<String, Json>,
    /// The due time read, which the claim must still find.
    due_at: i64,
}

impl Due {
    fn from_row(row: &[Value]) -> Self {
        let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
        let inputs = match crate::json_column(&row[5]) {
            Some(Json::Object(inputs)) => inputs,
            _ => Map::new(),
        };
        Self {
            id: text(0),
            org_id: text(1),
            workflow_id: text(2),
            cron: text(3),
            timezone: text(4),
            inputs,
            due_at: row[6].as_i64().unwrap_or_default(),
        }
    }
}

/// Starts a run for each schedule due at `now` (UTC ms), at most `limit`
/// schedules; returns how many runs it started. With runs disabled (no
/// `internal_key`) nothing is claimed and the schedules wait.
pub(crate) fn start_due(ctx: &RequestContext, now: i64, limit: i64) -> Result<usize, ApiError> {
    if internal_key(ctx).is_err() {
        return Ok(0);
    }
    // A cross-organisation read: the tick is the platform's, not a tenant's.
    let due = ctx
        .db()?
        .execute(DUE_QUERY, &[Value::Integer(now), Value::Integer(limit)])?;
    let mut started = 0;
    for row in &due.rows {
        let schedule = Due::from_row(row);
        match start_one(ctx, &schedule, now) {
            Ok(true) => started += 1,
            Ok(false) => {}
            Err(error) => eprintln!(
                "spindle: schedule {} due at {} did not start: {error}",
                schedule.id,
                timestamp(schedule.due_at)
            ),
        }
    }
    Ok(started)
}

/// Claims `due_at` of schedule `id` by moving it on to `next` (`None`: the
/// expression never comes due again, so the schedule is disabled). True for
/// the one caller whose update found `due_at` still there.
fn claim(
    db: &dyn Db,
    id: &str,
    due_at: i64,
    next: Option<i64>,
    now: i64,
) -> Result<bool, ApiError> {
    let claimed = db.execute(
        "UPDATE schedules SET next_run_at = ?1, enabled = (?1 IS NOT NULL), last_run_at = ?2, updated_at = ?3 \
         WHERE id = ?4 AND enabled = 1 AND next_run_at = ?2 RETURNING id",
        &[
            Value::from(next),
            Value::Integer(due_at),
            Value::Integer(now),
            Value::from(id),
        ],
    )?;
    Ok(!claimed.rows.is_empty())
}

/// Claims one due schedule and, when this call won the claim and the
/// workflow is live and active, starts its run. True when a run started.
fn start_one(ctx: &RequestContext, schedule: &Due, now: i64) -> Result<bool, ApiError> {
    // A stored expression that no longer parses, or never comes due again,
    // disables the schedule rather than being retried on every tick.
    let next = Timing::parse(&schedule.cron, &schedule.timezone)
        .ok()
        .and_then(|timing| timing.next_after(now));
    if !claim(ctx.db()?, &schedule.id, schedule.due_at, next, now)? {
        return Ok(false);
    }
    let org = OrgScoped::new(ctx.db()?, &schedule.org_id);
    let Some(row) = org
        .execute(
            "SELECT w.is_active, w.current_version, v.definition FROM workflows w JOIN workflow_versions v \
             ON v.workflow_id = w.id AND v.version = w.current_version \
             WHERE w.org_id = ?1 AND w.id = ?2 AND w.deleted_at IS NULL",
            &[Value::from(schedule.workflow_id.as_str())],
        )?
        .into_first()
    else {
        // The workflow is gone: stop scanning its schedule.
        org.execute(
            "UPDATE schedules SET enabled = 0, next_run_at = NULL WHERE org_id = ?1 AND id = ?2",
            &[Value::from(schedule.id.as_str())],
        )?;
        return Ok(false);
    };
    if row[0].as_i64() != Some(1) {
        return Ok(false);
    }
    let version = row[1].as_i64().unwrap_or(1);
    let definition: Definition = serde_json::from_str(row[2].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored definition is unreadable: {e}")))?;
    let scheduled_at = timestamp(schedule.due_at);
    let mut inputs = schedule.inputs.clone();
    inputs.insert(SCHEDULED_AT.into(), Json::String(scheduled_at.clone()));
    // The workflow may have changed its declared inputs since the PUT.
    check_inputs(&definition, &inputs)?;
    let caller = Caller {
        org_id: schedule.org_id.clone(),
        subject: format!("schedule:{}", schedule.id),
        role: Role::Member,
        api_key_id: None,
    };
    let start = runner::RunStart {
        workflow_id: &schedule.workflow_id,
        version,
        definition: &definition,
        inputs: Json::Object(inputs),
        trigger_kind: "schedule",
        idempotency: None,
        reuse: &[],
    };
    let id = runner::start_run(ctx, &caller, start)?;
    if let Err(error) = record_activity(
        ctx,
        ctx.db()?,
        &caller.org_id,
        &caller.subject,
        "workflow.started",
        ("execution", &id),
        &json!({"workflow_id": schedule.workflow_id, "trigger": "schedule",
                "schedule_id": schedule.id, SCHEDULED_AT: scheduled_at}),
    ) {
        eprintln!("spindle: scheduled run {id} started but was not logged: {error}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::now_ms;
    use crate::test_backends::TestBackends;
    use spindle_definition::parse_definition;
    use std::path::PathBuf;
    use std::sync::{Arc, Barrier};

    /// A database file that is removed with the test.
    struct Fixture {
        dir: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "spindle-schedules-{name}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let fixture = Self { dir };
            let ctx = fixture.context();
            let db = ctx.db().unwrap();
            db.execute(
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0)",
                &[],
            )
            .unwrap();
            fixture
        }

        fn context(&self) -> RequestContext {
            RequestContext::new(Box::new(
                TestBackends::file(self.dir.join("spindle.db"))
                    .variable("internal_key", "unit-test-internal-key-of-32-characters"),
            ))
        }

        /// A trigger → output workflow (runs inline, no provider) and its id.
        fn workflow(&self, active: bool, deleted: bool) -> String {
            let ctx = self.context();
            let id = ctx.new_id();
            let definition = parse_definition(&json!({
                "nodes": [
                    {"id": "start", "type": "trigger", "config": {}},
                    {"id": "done", "type": "output", "config": {"value": "{{ trigger.scheduled_at }}"}}
                ],
                "edges": [{"source": "start", "target": "done"}]
            }))
            .unwrap();
            let db = ctx.db().unwrap();
            db.execute(
                "INSERT INTO workflows (id, org_id, name, is_active, webhook_secret, created_at, updated_at, \
                 deleted_at) VALUES (?, 'o1', 'scheduled', ?, 'whsec_x', 0, 0, ?)",
                &[
                    Value::from(id.as_str()),
                    Value::Integer(i64::from(active)),
                    Value::from(deleted.then_some(1i64)),
                ],
            )
            .unwrap();
            db.execute(
                "INSERT INTO workflow_versions (org_id, workflow_id, version, definition, created_at) \
                 VALUES ('o1', ?, 1, ?, 0)",
                &[
                    Value::from(id.as_str()),
                    Value::Text(serde_json::to_string(&definition).unwrap()),
                ],
            )
            .unwrap();
            id
        }

        /// An enabled schedule of `workflow` due at `next_run_at`; its id.
        fn schedule(&self, workflow: &str, cron: &str, next_run_at: i64) -> String {
            let ctx = self.context();
            let id = ctx.new_id();
            ctx.db()
                .unwrap()
                .execute(
                    "INSERT INTO schedules (id, org_id, workflow_id, position, cron, timezone, inputs, enabled, \
                     next_run_at, created_at, updated_at) VALUES (?, 'o1', ?, 0, ?, 'UTC', '{\"topic\": \"tides\"}', \
                     1, ?, 0, 0)",
                    &[
                        Value::from(id.as_str()),
                        Value::from(workflow),
                        Value::from(cron),
                        Value::Integer(next_run_at),
                    ],
                )
                .unwrap();
            id
        }

        /// `(enabled, next_run_at, last_run_at)` of a schedule.
        fn state(&self, id: &str) -> (i64, Option<i64>, Option<i64>) {
            let ctx = self.context();
            let row = ctx
                .db()
                .unwrap()
                .execute(
                    "SELECT enabled, next_run_at, last_run_at FROM schedules WHERE id = ?",
                    &[Value::from(id)],
                )
                .unwrap()
                .into_first()
                .unwrap();
            (row[0].as_i64().unwrap(), row[1].as_i64(), row[2].as_i64())
        }

        /// `(trigger_kind, status, inputs)` of every run of `workflow`.
        fn runs(&self, workflow: &str) -> Vec<(String, String, Json)> {
            let ctx = self.context();
            ctx.db()
                .unwrap()
                .execute(
                    "SELECT trigger_kind, status, inputs FROM executions WHERE workflow_id = ? ORDER BY created_at",
                    &[Value::from(workflow)],
                )
                .unwrap()
                .rows
                .iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap().to_string(),
                        r[1].as_str().unwrap().to_string(),
                        serde_json::from_str(r[2].as_str().unwrap()).unwrap(),
                    )
                })
                .collect()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;
    const MINUTE: i64 = 60_000;

    #[test]
    fn two_ticks_at_the_same_now_start_a_schedule_once() {
        let fixture = Fixture::new("same-now");
        let workflow = fixture.workflow(true, false);
        let schedule = fixture.schedule(&workflow, "* * * * *", NOW - MINUTE);
        let (first, second) = (fixture.context(), fixture.context());
        let started = start_due(&first, NOW, 10).unwrap() + start_due(&second, NOW, 10).unwrap();
        assert_eq!(started, 1);
        let runs = fixture.runs(&workflow);
        assert_eq!(runs.len(), 1);
        let (kind, status, inputs) = &runs[0];
        assert_eq!(kind, "schedule");
        assert_eq!(status, "completed");
        assert_eq!(
            inputs,
            &json!({"topic": "tides", "scheduled_at": "2025-12-31T23:59:00.000Z"})
        );
        assert_eq!(
            fixture.state(&schedule),
            (1, Some(NOW + MINUTE), Some(NOW - MINUTE))
        );
    }

    #[test]
    fn of_two_claims_of_one_due_time_read_together_one_wins() {
        let fixture = Fixture::new("claims");
        let workflow = fixture.workflow(true, false);
        let schedule = fixture.schedule(&workflow, "* * * * *", NOW);
        let (first, second) = (fixture.context(), fixture.context());
        // Both ticks have read the same due row before either claims it.
        let read = |ctx: &RequestContext| {
            ctx.db()
                .unwrap()
                .execute(DUE_QUERY, &[Value::Integer(NOW), Value::Integer(10)])
                .unwrap()
                .rows
        };
        let (a, b) = (read(&first), read(&second));
        assert_eq!((a.len(), b.len()), (1, 1));
        let next = Some(NOW + MINUTE);
        let won_a = claim(first.db().unwrap(), &schedule, NOW, next, NOW).unwrap();
        let won_b = claim(second.db().unwrap(), &schedule, NOW, next, NOW).unwrap();
        assert!(won_a ^ won_b, "exactly one claim wins: {won_a} {won_b}");
        assert_eq!(fixture.state(&schedule), (1, next, Some(NOW)));
    }

    #[test]
    fn concurrent_ticks_start_each_due_schedule_once() {
        let fixture = Arc::new(Fixture::new("threads"));
        let workflow = fixture.workflow(true, false);
        for _ in 0..3 {
            fixture.schedule(&workflow, "*/5 * * * *", NOW - 2 * MINUTE);
        }
        // Migrated before the race, so the ticks race only for the claims.
        let ticks = 4;
        let barrier = Arc::new(Barrier::new(ticks));
        let handles: Vec<_> = (0..ticks)
            .map(|_| {
                let (fixture, barrier) = (fixture.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let ctx = fixture.context();
                    ctx.db().unwrap();
                    barrier.wait();
                    start_due(&ctx, NOW, 10).unwrap()
                })
            })
            .collect();
        let started: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(started, 3);
        assert_eq!(fixture.runs(&workflow).len(), 3);
    }

    #[test]
    fn missed_due_times_start_one_run_for_the_earliest() {
        let fixture = Fixture::new("missed");
        let workflow = fixture.workflow(true, false);
        // Due every minute, last due an hour ago: the scheduler was down.
        let schedule = fixture.schedule(&workflow, "* * * * *", NOW - 60 * MINUTE);
        let ctx = fixture.context();
        assert_eq!(start_due(&ctx, NOW + 30_000, 10).unwrap(), 1);
        assert_eq!(start_due(&ctx, NOW + 30_000, 10).unwrap(), 0);
        let runs = fixture.runs(&workflow);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].2["scheduled_at"], "2025-12-31T23:00:00.000Z");
        assert_eq!(
            fixture.state(&schedule),
            (1, Some(NOW + MINUTE), Some(NOW - 60 * MINUTE))
        );
        // The next due time starts the next run.
        assert_eq!(start_due(&ctx, NOW + MINUTE, 10).unwrap(), 1);
        assert_eq!(fixture.runs(&workflow).len(), 2);
    }

    #[test]
    fn inactive_workflows_move_on_and_deleted_ones_are_disabled() {
        let fixture = Fixture::new("inactive");
        let inactive = fixture.workflow(false, false);
        let deleted = fixture.workflow(true, true);
        let paused = fixture.schedule(&inactive, "* * * * *", NOW);
        let orphan = fixture.schedule(&deleted, "* * * * *", NOW);
        let ctx = fixture.context();
        assert_eq!(start_due(&ctx, NOW, 10).unwrap(), 0);
        assert!(fixture.runs(&inactive).is_empty());
        assert!(fixture.runs(&deleted).is_empty());
        assert_eq!(fixture.state(&paused), (1, Some(NOW + MINUTE), Some(NOW)));
        assert_eq!(fixture.state(&orphan), (0, None, Some(NOW)));
        // Neither is due again at the same time.
        assert_eq!(
            ctx.db()
                .unwrap()
                .execute(DUE_QUERY, &[Value::Integer(NOW), Value::Integer(10)])
                .unwrap()
                .rows
                .len(),
            0
        );
    }

    #[test]
    fn a_schedule_not_yet_due_or_disabled_is_left_alone() {
        let fixture = Fixture::new("not-due");
        let workflow = fixture.workflow(true, false);
        let later = fixture.schedule(&workflow, "* * * * *", NOW + 1);
        let off = fixture.schedule(&workflow, "0 * * * *", NOW - MINUTE);
        let ctx = fixture.context();
        ctx.db()
            .unwrap()
            .execute(
                "UPDATE schedules SET enabled = 0 WHERE id = ?",
                &[Value::from(off.as_str())],
            )
            .unwrap();
        assert_eq!(start_due(&ctx, NOW, 10).unwrap(), 0);
        assert_eq!(fixture.state(&later), (1, Some(NOW + 1), None));
        assert_eq!(fixture.state(&off), (0, Some(NOW - MINUTE), None));
    }

    #[test]
    fn without_an_internal_key_a_due_schedule_is_not_claimed() {
        let fixture = Fixture::new("no-key");
        let workflow = fixture.workflow(true, false);
        let schedule = fixture.schedule(&workflow, "* * * * *", NOW - MINUTE);
        // The same database, seen by an instance that has no internal_key.
        let keyless =
            RequestContext::new(Box::new(TestBackends::file(fixture.dir.join("spindle.db"))));
        assert_eq!(start_due(&keyless, NOW, 10).unwrap(), 0);
        assert!(fixture.runs(&workflow).is_empty());
        assert_eq!(fixture.state(&schedule), (1, Some(NOW - MINUTE), None));
        // The due time is still there for an instance that has the key.
        assert_eq!(start_due(&fixture.context(), NOW, 10).unwrap(), 1);
        assert_eq!(
            fixture.state(&schedule),
            (1, Some(NOW + MINUTE), Some(NOW - MINUTE))
        );
    }

    #[test]
    fn the_due_query_scans_only_the_partial_index() {
        let fixture = Fixture::new("plan");
        let ctx = fixture.context();
        let plan = ctx
            .db()
            .unwrap()
            .execute(
                &format!("EXPLAIN QUERY PLAN {DUE_QUERY}"),
                &[Value::Integer(NOW), Value::Integer(10)],
            )
            .unwrap();
        let details: Vec<&str> = plan.rows.iter().filter_map(|r| r[3].as_str()).collect();
        assert!(
            details
                .iter()
                .any(|d| d.contains("USING INDEX schedules_due (next_run_at<?)")),
            "{details:?}"
        );
    }

    /// README (Schedules): "The tick starts the schedules whose
    /// `next_run_at` has passed (all organisations, at most 100 per tick,
    /// earliest first; `schedules_started`)".
    #[test]
    fn a_tick_starts_at_most_100_due_schedules_earliest_first() {
        let fixture = Fixture::new("batch");
        let workflow = fixture.workflow(true, false);
        // 101 due schedules, a second apart, stored latest-due first: the
        // latest one is due a second before now.
        let latest = fixture.schedule(&workflow, "* * * * *", NOW - 1_000);
        let earlier: Vec<String> = (2..=101)
            .map(|seconds| fixture.schedule(&workflow, "* * * * *", NOW - seconds * 1_000))
            .collect();
        let ctx = fixture.context();
        let tick = crate::engine::run_tick(&ctx, 0, NOW).unwrap();
        assert_eq!(tick["schedules_started"], 100);
        assert_eq!(fixture.runs(&workflow).len(), 100);
        for id in &earlier {
            assert_eq!(fixture.state(id).1, Some(NOW + MINUTE), "{id}");
        }
        assert_eq!(fixture.state(&latest), (1, Some(NOW - 1_000), None));
        // The next tick starts the one left.
        let tick = crate::engine::run_tick(&ctx, 0, NOW).unwrap();
        assert_eq!(tick["schedules_started"], 1);
        assert_eq!(
            fixture.state(&latest),
            (1, Some(NOW + MINUTE), Some(NOW - 1_000))
        );
        assert_eq!(fixture.runs(&workflow).len(), 101);
    }
}
