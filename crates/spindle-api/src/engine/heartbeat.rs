//! The app's own tick. Spin's HTTP trigger has no timers, so time-based
//! work (delays, retry backoff, wait timeouts, leases of dead instances,
//! schedules, event retries) moves only when something calls the tick. While
//! the app has such work, a chain of heartbeat invocations calls it from
//! inside the app: each link answers its self request at once, then runs the
//! tick every `tick_interval_ms` for [`LINK_MS`] and hands over to the next
//! link by a self request (a host may cut long requests short: Fermyon
//! Cloud's limit is 30 s). When nothing time-based is left the chain ends,
//! and the next request that creates such work starts it again ([`kick`]).
//!
//! One row of `heartbeat`, leased like a step, keeps it to one chain across
//! every instance: a link renews the lease before each tick, a kick takes it
//! only once it has lapsed, so a chain whose instance died is replaced
//! [`LEASE_MS`] after its last renewal by the next kick.
//!
//! Off with `self_tick = "false"` (then an external scheduler must call
//! `POST /internal/tick`), and on hosts that refuse self requests (Spin's
//! `block_networks`), where the first link is never dispatched.

use super::dispatch::{dispatch, internal_key, verify};
use crate::context::RequestContext;
use serde_json::json;
use spindle_http::{ApiError, ApiRequest, ApiResponse, Params};
use spindle_store::{Db, Value, now_ms};

/// The route a link is dispatched to.
pub const PATH: &str = "/internal/heartbeat";
/// How long one link keeps ticking before it hands over to the next.
pub const LINK_MS: i64 = 20_000;
/// How long a renewed lease lasts past the link's next tick.
pub const LEASE_MS: i64 = 5_000;
/// The tick's period when `tick_interval_ms` is not set.
const DEFAULT_INTERVAL_MS: i64 = 1_000;
/// The header naming the chain a link belongs to.
const HOLDER_HEADER: &str = "x-spindle-heartbeat";

/// Whether the app ticks itself: the `self_tick` variable, on unless it is
/// `false`, `off` or `0`.
fn enabled(ctx: &RequestContext) -> bool {
    !ctx.variable("self_tick").is_some_and(|v| {
        let v = v.trim();
        ["false", "off", "0"]
            .iter()
            .any(|off| v.eq_ignore_ascii_case(off))
    })
}

/// The tick's period: `tick_interval_ms` (at least 100 ms), else 1 s.
fn interval_ms(ctx: &RequestContext) -> i64 {
    ctx.variable("tick_interval_ms")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map_or(DEFAULT_INTERVAL_MS, |ms| ms.max(100))
}

/// After the response, starts a heartbeat chain unless one is live. Called
/// by the routes that create time-based work or follow it (starting, signalling,
/// retrying and reading runs; setting schedules). A live chain costs one read.
pub fn kick(ctx: &RequestContext) {
    if !enabled(ctx) || internal_key(ctx).is_err() {
        return;
    }
    ctx.defer(|ctx| {
        if let Err(error) = start_chain(ctx) {
            eprintln!("spindle: the heartbeat did not start: {error}");
        }
    });
}

fn start_chain(ctx: &RequestContext) -> Result<(), ApiError> {
    let db = ctx.db()?;
    let now = now_ms();
    // A read first: most kicks find a live chain, and a read takes no write lock.
    let lease = db.execute("SELECT expires_at FROM heartbeat WHERE id = 1", &[])?;
    if lease.rows.first().and_then(|r| r[0].as_i64()).unwrap_or(0) >= now {
        return Ok(());
    }
    let holder = ctx.new_id();
    let taken = db.execute(
        "UPDATE heartbeat SET holder = ?, expires_at = ? WHERE id = 1 AND expires_at < ? RETURNING id",
        &[
            Value::Text(holder.clone()),
            Value::Integer(now + LEASE_MS),
            Value::Integer(now),
        ],
    )?;
    if taken.rows.is_empty() {
        return Ok(()); // another kick won
    }
    hand_over(ctx, db, &holder)
}

/// Dispatches the chain's next link; gives the lease up when that fails, so
/// that a later kick may try again.
fn hand_over(ctx: &RequestContext, db: &dyn Db, holder: &str) -> Result<(), ApiError> {
    let now = now_ms();
    let subject = subject(holder);
    // The lease, not the hop count, bounds this chain: it runs as long as there
    // is work, so every link starts from zero hops.
    let sent = dispatch(ctx, PATH, &subject, 0, &[(HOLDER_HEADER, holder)], now);
    if let Err(error) = sent {
        release(db, holder)?;
        return Err(ApiError::Unavailable(format!(
            "the heartbeat's self request failed: {error}"
        )));
    }
    Ok(())
}

fn subject(holder: &str) -> String {
    format!("heartbeat:{holder}")
}

/// `POST /internal/heartbeat` (dispatch token for `heartbeat:<holder>`):
/// answers `202`, then runs one link of the chain.
pub fn beat(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let holder = request
        .header(HOLDER_HEADER)
        .unwrap_or_default()
        .to_string();
    verify(ctx, request, &subject(&holder), now_ms())?;
    let link = holder.clone();
    ctx.defer(move |ctx| {
        if let Err(error) = run_link(ctx, &link) {
            eprintln!("spindle: a heartbeat link stopped: {error}");
        }
    });
    Ok(ApiResponse::json(202, &json!({"holder": holder})))
}

fn run_link(ctx: &RequestContext, holder: &str) -> Result<(), ApiError> {
    let db = ctx.db()?;
    let interval = interval_ms(ctx);
    let started = now_ms();
    loop {
        let now = now_ms();
        if !renew(db, holder, now + interval + LEASE_MS)? {
            return Ok(()); // the lease lapsed and another chain took over
        }
        // A busy database fails one tick; the next one catches up.
        if let Err(error) = super::run_tick(ctx, 0, now) {
            eprintln!("spindle: a heartbeat tick failed: {error}");
        }
        if !has_timed_work(db)? {
            return release(db, holder);
        }
        if now_ms() - started >= LINK_MS {
            return hand_over(ctx, db, holder);
        }
        ctx.sleep_ms(u64::try_from(interval).unwrap_or(1_000));
    }
}

fn renew(db: &dyn Db, holder: &str, until: i64) -> Result<bool, ApiError> {
    let renewed = db.execute(
        "UPDATE heartbeat SET expires_at = ? WHERE id = 1 AND holder = ? RETURNING id",
        &[Value::Integer(until), Value::Text(holder.to_string())],
    )?;
    Ok(!renewed.rows.is_empty())
}

fn release(db: &dyn Db, holder: &str) -> Result<(), ApiError> {
    db.execute(
        "UPDATE heartbeat SET expires_at = 0 WHERE id = 1 AND holder = ?",
        &[Value::Text(holder.to_string())],
    )?;
    Ok(())
}

/// Whether anything may still need the tick: a running run, an enabled
/// schedule, an event waiting for delivery, a live budget reservation. Read
/// across organisations: the heartbeat is the platform's.
fn has_timed_work(db: &dyn Db) -> Result<bool, ApiError> {
    let found = db.execute(
        "SELECT EXISTS (SELECT 1 FROM executions WHERE status = 'running') \
         OR EXISTS (SELECT 1 FROM schedules WHERE enabled = 1) \
         OR EXISTS (SELECT 1 FROM event_outbox WHERE status = 'pending') \
         OR EXISTS (SELECT 1 FROM budget_reservations)",
        &[],
    )?;
    Ok(found.rows.first().and_then(|r| r[0].as_i64()) == Some(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;

    fn context(variables: &[(&'static str, &str)]) -> RequestContext {
        let backends = variables
            .iter()
            .fold(TestBackends::memory(), |b, &(name, value)| {
                b.variable(name, value)
            });
        RequestContext::new(Box::new(backends))
    }

    #[test]
    fn the_heartbeat_is_on_unless_switched_off() {
        assert!(enabled(&context(&[])));
        for off in ["false", "OFF", " 0 "] {
            assert!(!enabled(&context(&[("self_tick", off)])), "{off}");
        }
        assert!(enabled(&context(&[("self_tick", "true")])));
    }

    #[test]
    fn the_interval_defaults_to_a_second_and_is_at_least_100_ms() {
        assert_eq!(interval_ms(&context(&[])), 1_000);
        assert_eq!(interval_ms(&context(&[("tick_interval_ms", "5")])), 100);
        assert_eq!(interval_ms(&context(&[("tick_interval_ms", "250")])), 250);
        assert_eq!(interval_ms(&context(&[("tick_interval_ms", "x")])), 1_000);
    }

    #[test]
    fn only_the_holder_renews_and_a_released_lease_can_be_taken() {
        let ctx = context(&[]);
        let db = ctx.db().unwrap();
        let now = now_ms();
        db.execute(
            "UPDATE heartbeat SET holder = 'a', expires_at = ? WHERE id = 1",
            &[Value::Integer(now + LEASE_MS)],
        )
        .unwrap();
        assert!(renew(db, "a", now + 2 * LEASE_MS).unwrap());
        assert!(!renew(db, "b", now + 2 * LEASE_MS).unwrap());
        release(db, "b").unwrap();
        let lease = db.execute("SELECT expires_at FROM heartbeat", &[]).unwrap();
        assert_eq!(lease.rows[0][0].as_i64(), Some(now + 2 * LEASE_MS));
        release(db, "a").unwrap();
        let lease = db.execute("SELECT expires_at FROM heartbeat", &[]).unwrap();
        assert_eq!(lease.rows[0][0].as_i64(), Some(0));
    }

    #[test]
    fn an_idle_app_has_no_timed_work() {
        let ctx = context(&[]);
        assert!(!has_timed_work(ctx.db().unwrap()).unwrap());
    }
}
