-- The app's own tick (crates/spindle-api/src/engine/heartbeat.rs): one row,
-- leased by the invocation that drives the tick, so at most one chain of
-- heartbeat invocations runs across every instance of the app.
CREATE TABLE heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- Which chain holds the lease (an id), '' when none ever did.
    holder TEXT NOT NULL,
    -- Until when (UTC ms); a lapsed lease may be taken by the next kick.
    expires_at INTEGER NOT NULL
);

INSERT INTO heartbeat (id, holder, expires_at) VALUES (1, '', 0);
