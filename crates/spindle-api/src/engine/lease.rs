//! A claimed step's lease, kept while the step works: a live step renews it
//! every third of `step_lease_ms` while it waits on a provider or a server
//! (or sleeps before a retry), so the tick never hands a live step to a
//! second invocation, while a dead instance's lease lapses within one lease.

use super::runner::lease_ms;
use crate::context::RequestContext;
use spindle_http::ApiError;
use spindle_store::{Value, now_ms};

/// Runs `work`, the step `step_id` claimed under `lease`, renewing the lease
/// every third of its length while `work` waits on the host.
pub(super) fn keeping<T>(
    ctx: &RequestContext,
    step_id: &str,
    lease: &str,
    work: impl FnOnce() -> T,
) -> T {
    let length_ms = lease_ms(ctx);
    let every_ms = u64::try_from(length_ms / 3).unwrap_or(0);
    let (step_id, lease) = (step_id.to_string(), lease.to_string());
    let renew_lease = move |ctx: &RequestContext| {
        if let Err(problem) = renew(ctx, &step_id, &lease, now_ms() + length_ms) {
            // The lease may lapse: the tick then runs the step again, and
            // only the invocation still holding the lease stores a result.
            eprintln!("spindle: the lease of step {step_id} was not renewed: {problem}");
        }
    };
    ctx.keeping_alive(every_ms, renew_lease, work)
}

/// Moves the expiry of step `step_id`'s lease to `expires_at`, if the step
/// is still running under `lease`; false when another invocation took it.
fn renew(
    ctx: &RequestContext,
    step_id: &str,
    lease: &str,
    expires_at: i64,
) -> Result<bool, ApiError> {
    let renewed = ctx.db()?.execute(
        "UPDATE steps SET lease_expires_at = ? WHERE id = ? AND lease_token = ? \
         AND status = 'running' RETURNING id",
        &[
            Value::Integer(expires_at),
            Value::from(step_id),
            Value::from(lease),
        ],
    )?;
    Ok(!renewed.rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;

    fn lease_of(ctx: &RequestContext, step_id: &str) -> Option<i64> {
        let rows = ctx
            .db()
            .unwrap()
            .execute(
                "SELECT lease_expires_at FROM steps WHERE id = ?",
                &[Value::from(step_id)],
            )
            .unwrap();
        rows.rows[0][0].as_i64()
    }

    #[test]
    fn only_the_running_holder_of_a_lease_renews_it() {
        let ctx = RequestContext::new(Box::new(TestBackends::memory()));
        let db = ctx.db().unwrap();
        for insert in [
            "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o', 'one', 0, 0)",
            "INSERT INTO workflows (id, org_id, name, webhook_secret, created_at, updated_at) \
             VALUES ('w', 'o', 'flow', 'whsec_x', 0, 0)",
            "INSERT INTO executions (id, org_id, workflow_id, workflow_version, status, trigger_kind, \
             created_at, updated_at) VALUES ('e', 'o', 'w', 1, 'running', 'api', 0, 0)",
        ] {
            db.execute(insert, &[]).unwrap();
        }
        for (id, status, token) in [("s1", "running", "mine"), ("s2", "completed", "mine")] {
            db.execute(
                "INSERT INTO steps (id, org_id, execution_id, node_id, status, lease_token, \
                 lease_expires_at, created_at) VALUES (?, 'o', 'e', ?, ?, ?, 100, 0)",
                &[
                    Value::from(id),
                    Value::from(id),
                    Value::from(status),
                    Value::from(token),
                ],
            )
            .unwrap();
        }
        assert!(!renew(&ctx, "s1", "theirs", 500).unwrap());
        assert_eq!(lease_of(&ctx, "s1"), Some(100));
        assert!(!renew(&ctx, "s2", "mine", 500).unwrap());
        assert_eq!(lease_of(&ctx, "s2"), Some(100));
        assert!(renew(&ctx, "s1", "mine", 500).unwrap());
        assert_eq!(lease_of(&ctx, "s1"), Some(500));
    }

    #[test]
    fn a_step_lease_lasts_15_seconds_unless_set() {
        let ctx = RequestContext::new(Box::new(TestBackends::memory()));
        assert_eq!(lease_ms(&ctx), 15_000);
        let custom = TestBackends::memory().variable("step_lease_ms", "900");
        assert_eq!(lease_ms(&RequestContext::new(Box::new(custom))), 900);
    }
}
