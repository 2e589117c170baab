#![allow(clippy::all)]
use spin_sdk::http::{
    send, Fields, IncomingRequest, OutgoingResponse, Request, Response, ResponseOutparam,
};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value};
use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn header(req: &IncomingRequest, name: &str) -> Option<String> {
    req.headers()
        .get(&name.to_string())
        .into_iter()
        .next()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 0 && i + 2 <= b.len() - 1 {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(path_and_query: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some((_, q)) = path_and_query.split_once('?') {
        for kv in q.split('&') {
            if let Some((k, v)) = kv.split_once('=') {
                m.insert(k.to_string(), pct_decode(v));
            } else if !kv.is_empty() {
                m.insert(kv.to_string(), String::new());
            }
        }
    }
    m
}

async fn respond(out: ResponseOutparam, status: u16, body: String) {
    let headers =
        Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())]).unwrap();
    let resp = OutgoingResponse::new(headers);
    resp.set_status_code(status).unwrap();
    if let Err(e) = out.set_with_body(resp, body.into_bytes()).await {
        eprintln!("probe: set_with_body failed: {e}");
    }
}

/// Outbound GET; returns "status body" or "ERR <error>"
async fn outbound(url: &str) -> String {
    let req = Request::get(url).build();
    match send::<Request, Response>(req).await {
        Ok(r) => format!(
            "{} {}",
            r.status(),
            String::from_utf8_lossy(r.body()).trim_end()
        ),
        Err(e) => format!("ERR {e:?}"),
    }
}

fn kv() -> Store {
    Store::open("default").expect("kv open default")
}

fn db() -> Connection {
    Connection::open("default").expect("sqlite open default")
}

fn sql(conn: &Connection, stmt: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, String> {
    conn.execute(stmt, params)
        .map(|r| r.rows.into_iter().map(|row| row.values).collect())
        .map_err(|e| format!("{e:?}"))
}

fn busy_ms(ms: u64) -> u64 {
    // CPU-bound busy work, no sleeping
    let start = Instant::now();
    let mut x: u64 = 0;
    while start.elapsed().as_millis() < ms as u128 {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
    }
    x
}

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let path_info = header(&req, "spin-path-info").unwrap_or_default();
    let pq = req.path_with_query().unwrap_or_default();
    let q = query_map(&pq);
    let whoami = spin_sdk::variables::get("whoami").unwrap_or_else(|e| format!("<{e:?}>"));

    // Route-precedence / header probe components
    if whoami.starts_with("wf-") || path_info.starts_with("/headers") {
        let mut lines = vec![
            format!("component={whoami}"),
            format!("path_with_query={pq}"),
            format!(
                "authority()={:?} scheme()={:?} method()={:?}",
                req.authority(),
                req.scheme(),
                req.method()
            ),
        ];
        let mut hs: Vec<(String, String)> = req
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        hs.sort();
        for (k, v) in hs {
            lines.push(format!("{k}: {v}"));
        }
        return respond(out, 200, lines.join("\n") + "\n").await;
    }

    match path_info.as_str() {
        "/trivial" => respond(out, 200, "ok\n".into()).await,
        "/internal/ping" => {
            if let Some(from) = q.get("from") {
                kv().set(&format!("ping:{from}"), now_ms().to_string().as_bytes())
                    .unwrap();
            }
            respond(
                out,
                200,
                format!(
                    "pong component={whoami} host={:?} full_url={:?}\n",
                    header(&req, "host"),
                    header(&req, "spin-full-url")
                ),
            )
            .await
        }
        // a/b/c: outbound to arbitrary URL given in ?u=
        "/out" => {
            let u = q.get("u").cloned().unwrap_or("/internal/ping".into());
            let r = outbound(&u).await;
            respond(out, 200, format!("component={whoami} GET {u} -> {r}\n")).await
        }
        "/self-hdr" => {
            let req = Request::post("/headers/echo?x=1", b"body-123".to_vec())
                .header("x-spindle-dispatch", "tok123")
                .header("authorization", "Bearer abc")
                .header("content-type", "application/json")
                .build();
            let r = match send::<Request, Response>(req).await {
                Ok(r) => format!("{} {}", r.status(), String::from_utf8_lossy(r.body())),
                Err(e) => format!("ERR {e:?}"),
            };
            respond(out, 200, r).await
        }
        "/self-one" => {
            let r = outbound("/trivial").await;
            let ok = r.starts_with("200");
            respond(out, if ok { 200 } else { 502 }, format!("{r}\n")).await
        }
        "/var" => {
            let v = spin_sdk::variables::get("foo");
            respond(out, 200, format!("foo={v:?}\n")).await
        }
        // d: post-response work
        "/post-response" => {
            let id = q.get("id").cloned().unwrap_or("x".into());
            let secs = q.get("secs").cloned().unwrap_or("0".into());
            let busy: u64 = q.get("busy").and_then(|b| b.parse().ok()).unwrap_or(0);
            let t_set = now_ms();
            // Response: set outparam, write body, close body
            respond(out, 202, format!("accepted id={id} t_set={t_set}\n")).await;
            let t0 = now_ms();
            let store = kv();
            store
                .set(&format!("pr:{id}:start"), t0.to_string().as_bytes())
                .unwrap();
            let mut log = vec![format!("start={t0}")];
            if busy > 0 {
                let x = busy_ms(busy);
                log.push(format!("busy_done={} x={}", now_ms(), x % 10));
            }
            if secs != "0" {
                let r = outbound(&format!("http://127.0.0.1:8999/sleep?secs={secs}")).await;
                log.push(format!("slow_done={} r={r}", now_ms()));
            }
            let conn = db();
            let _ = sql(
                &conn,
                "CREATE TABLE IF NOT EXISTS pr (id TEXT, at INTEGER)",
                &[],
            );
            let sr = sql(
                &conn,
                "INSERT INTO pr (id, at) VALUES (?, ?)",
                &[Value::Text(id.clone()), Value::Integer(now_ms() as i64)],
            );
            log.push(format!("sqlite_insert={sr:?}"));
            let r = outbound(&format!("/internal/ping?from=pr-{id}")).await;
            log.push(format!("self_ping={r}"));
            let t1 = now_ms();
            log.push(format!("done={t1} elapsed_after_response_ms={}", t1 - t0));
            store
                .set(&format!("pr:{id}:done"), log.join(" | ").as_bytes())
                .unwrap();
            eprintln!("probe post-response id={id} finished: {}", log.join(" | "));
        }
        // f: key-value
        "/kv/test" => {
            let s = kv();
            let mut r = vec![];
            r.push(format!("set a={:?}", s.set("a", b"1")));
            r.push(format!("set b={:?}", s.set("b", b"2")));
            r.push(format!(
                "get a={:?}",
                s.get("a")
                    .map(|o| o.map(|v| String::from_utf8_lossy(&v).into_owned()))
            ));
            r.push(format!("get missing={:?}", s.get("nope")));
            r.push(format!("exists a={:?}", s.exists("a")));
            r.push(format!("delete a={:?}", s.delete("a")));
            r.push(format!("exists a after delete={:?}", s.exists("a")));
            r.push(format!("delete missing={:?}", s.delete("nope")));
            let mut keys = s.get_keys().unwrap_or_default();
            keys.sort();
            r.push(format!("get_keys={keys:?}"));
            r.push(format!(
                "open other label={:?}",
                Store::open("other").map(|_| ())
            ));
            respond(out, 200, r.join("\n") + "\n").await
        }
        "/kv/get" => {
            let k = q.get("key").cloned().unwrap_or_default();
            let v = kv()
                .get(&k)
                .unwrap()
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            respond(out, 200, format!("{k} => {v:?}\n")).await
        }
        // e: sqlite
        "/sql/setup" => {
            let c = db();
            let mut r = vec![];
            r.push(format!("{:?}", sql(&c, "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, status TEXT NOT NULL, owner TEXT)", &[])));
            r.push(format!("{:?}", sql(&c, "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, status TEXT NOT NULL, owner TEXT)", &[])));
            r.push(format!("{:?}", sql(&c, "DELETE FROM t", &[])));
            let n: usize = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(1);
            for i in 0..n {
                let _ = sql(
                    &c,
                    "INSERT INTO t (id, status) VALUES (?, 'queued')",
                    &[Value::Text(format!("job{i}"))],
                );
            }
            r.push(format!("{:?}", sql(&c, "SELECT count(*) FROM t", &[])));
            respond(out, 200, r.join("\n") + "\n").await
        }
        "/sql/claim" => {
            let id = q.get("id").cloned().unwrap_or("job0".into());
            let who = q.get("who").cloned().unwrap_or("?".into());
            let c = db();
            let r = sql(
                &c,
                "UPDATE t SET status='running', owner=? WHERE id=? AND status='queued' RETURNING id",
                &[Value::Text(who.clone()), Value::Text(id)],
            );
            match r {
                Ok(rows) if rows.len() == 1 => {
                    respond(out, 200, format!("WON {who} {rows:?}\n")).await
                }
                Ok(rows) => respond(out, 409, format!("LOST {who} rows={}\n", rows.len())).await,
                Err(e) => respond(out, 500, format!("ERR {who} {e}\n")).await,
            }
        }
        "/sql/state" => {
            let c = db();
            let r = sql(&c, "SELECT id, status, owner FROM t ORDER BY id", &[]);
            respond(out, 200, format!("{r:?}\n")).await
        }
        "/sql/tx" => {
            let c = db();
            let mut r = vec![];
            let _ = sql(&c, "CREATE TABLE IF NOT EXISTS txt (v INTEGER)", &[]);
            let _ = sql(&c, "DELETE FROM txt", &[]);
            // 1. multi-statement string in one execute
            r.push(format!(
                "multi-stmt execute: {:?}",
                sql(
                    &c,
                    "BEGIN IMMEDIATE; INSERT INTO txt (v) VALUES (1); COMMIT;",
                    &[]
                )
            ));
            r.push(format!(
                "  count after={:?}",
                sql(&c, "SELECT count(*) FROM txt", &[])
            ));
            // 2. across calls on one connection: BEGIN IMMEDIATE / INSERT / ROLLBACK
            r.push(format!(
                "BEGIN IMMEDIATE: {:?}",
                sql(&c, "BEGIN IMMEDIATE", &[])
            ));
            r.push(format!(
                "INSERT 2: {:?}",
                sql(&c, "INSERT INTO txt (v) VALUES (2)", &[])
            ));
            r.push(format!(
                "  count inside tx={:?}",
                sql(&c, "SELECT count(*) FROM txt", &[])
            ));
            // another connection sees?
            let c2 = db();
            r.push(format!(
                "  other conn count inside tx={:?}",
                sql(&c2, "SELECT count(*) FROM txt", &[])
            ));
            r.push(format!("ROLLBACK: {:?}", sql(&c, "ROLLBACK", &[])));
            r.push(format!(
                "  count after rollback={:?}",
                sql(&c, "SELECT count(*) FROM txt", &[])
            ));
            // 3. across calls: BEGIN IMMEDIATE / INSERT / COMMIT
            r.push(format!(
                "BEGIN IMMEDIATE: {:?}",
                sql(&c, "BEGIN IMMEDIATE", &[])
            ));
            r.push(format!(
                "INSERT 3: {:?}",
                sql(&c, "INSERT INTO txt (v) VALUES (3)", &[])
            ));
            r.push(format!("COMMIT: {:?}", sql(&c, "COMMIT", &[])));
            r.push(format!(
                "  count after commit={:?}",
                sql(&c, "SELECT v FROM txt ORDER BY v", &[])
            ));
            // 4. leave a transaction open (no commit) and see whether the next request sees the row
            if q.contains_key("leave_open") {
                r.push(format!(
                    "BEGIN (left open): {:?}",
                    sql(&c, "BEGIN IMMEDIATE", &[])
                ));
                r.push(format!(
                    "INSERT 4: {:?}",
                    sql(&c, "INSERT INTO txt (v) VALUES (4)", &[])
                ));
            }
            respond(out, 200, r.join("\n") + "\n").await
        }
        "/sql/multi" => {
            let c = db();
            let mut r = vec![];
            let _ = sql(&c, "CREATE TABLE IF NOT EXISTS m (v INTEGER)", &[]);
            let _ = sql(&c, "DELETE FROM m", &[]);
            r.push(format!("execute('INSERT 10; INSERT 11; INSERT 12'): {:?}", sql(&c, "INSERT INTO m (v) VALUES (10); INSERT INTO m (v) VALUES (11); INSERT INTO m (v) VALUES (12);", &[])));
            r.push(format!(
                "  rows after={:?}",
                sql(&c, "SELECT v FROM m ORDER BY v", &[])
            ));
            r.push(format!(
                "execute('SELECT 1; garbage'): {:?}",
                sql(&c, "SELECT 1; this is not sql", &[])
            ));
            r.push(format!(
                "execute('BEGIN IMMEDIATE; INSERT 20; COMMIT'): {:?}",
                sql(
                    &c,
                    "BEGIN IMMEDIATE; INSERT INTO m (v) VALUES (20); COMMIT;",
                    &[]
                )
            ));
            r.push(format!("  then plain COMMIT: {:?}", sql(&c, "COMMIT", &[])));
            r.push(format!(
                "  rows after={:?}",
                sql(&c, "SELECT v FROM m ORDER BY v", &[])
            ));
            respond(out, 200, r.join("\n") + "\n").await
        }
        "/sql/txcount" => {
            let c = db();
            respond(
                out,
                200,
                format!("{:?}\n", sql(&c, "SELECT v FROM txt ORDER BY v", &[])),
            )
            .await
        }
        other => {
            respond(
                out,
                404,
                format!("probe: no route for path_info={other:?} (component {whoami})\n"),
            )
            .await
        }
    }
}
