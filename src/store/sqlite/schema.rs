//! The SQLite schema and its migrations (`PRAGMA user_version`).

use super::*;

/// Schema changes in order; each runs once, in its own transaction, and is recorded in
/// `schema_version`. Append new ones; never edit one that has shipped.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
    (5, SCHEMA_V5),
    (6, SCHEMA_V6),
    (7, SCHEMA_V7),
    (8, SCHEMA_V8),
    (9, SCHEMA_V9),
];

/// The condition of the two state indexes (`SCHEMA_V9`). SQLite uses a partial index only for a
/// query whose WHERE clause holds this term itself — it does not infer it from
/// `state = 'received'` — so every query by a state other than delivered repeats it.
pub(super) const NOT_DELIVERED: &str = "state <> 'delivered'";

pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")?;
    let version: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; INSERT INTO schema_version (version) VALUES ({v}); COMMIT;"
        ))?;
    }
    Ok(())
}

/// The state indexes hold every message but the delivered: a message leaves them when it is
/// delivered instead of moving to the far end of a tree that grows with the store, so a
/// delivery changes only the small, hot pages of the in-flight and the failed (−14% of the log's
/// pages a commit in a replay of the writer's statements; about −10% of the writer's CPU a
/// message in the engine: docs/performance.md). Delivered messages are found by route and id
/// (`messages_route_id`), and counted as all of a route's messages less the others.
pub(super) const SCHEMA_V9: &str = "
        DROP INDEX messages_route_state;
        DROP INDEX messages_state;
        CREATE INDEX messages_route_state ON messages (route, state, id) WHERE state <> 'delivered';
        CREATE INDEX messages_state ON messages (state, id) WHERE state <> 'delivered'";

/// Two indexes a single engine does not need, each written on every message: claims of
/// deliveries are one process's on SQLite (found at start through `deliveries_pending`, since
/// only pending deliveries are claimed), and retention by age reads `messages_route_id` up to
/// the cutoff's first id (a message is updated no earlier than it arrived). Without them a
/// delivered message changes four fewer index entries (docs/performance.md).
pub(super) const SCHEMA_V8: &str = "
        DROP INDEX deliveries_owner;
        DROP INDEX messages_route_updated";

/// Aggregate groups (the `aggregate` step): one row per group from its first member until it
/// is emitted as a message. `open_key` is the key while the group takes members and NULL once
/// complete, so that a route has one open group per key (a unique index ignores NULLs) and
/// the next member of a completed group's key opens a new one.
pub(super) const SCHEMA_V7: &str = "
        CREATE TABLE aggregates (
            group_id     TEXT PRIMARY KEY,   -- also the id of the message it becomes
            route        TEXT NOT NULL,
            key          TEXT NOT NULL,
            open_key     TEXT,
            members      INTEGER NOT NULL,
            bytes        INTEGER NOT NULL,
            opened_at    INTEGER NOT NULL,
            timeout_at   INTEGER,            -- unix ms: opened_at + the step's timeout
            due_at       INTEGER,            -- open: when it times out; complete: since when
            completed_by TEXT,
            owner        TEXT,               -- the node combining it, once complete
            lease_until  INTEGER
        );
        CREATE UNIQUE INDEX aggregates_open ON aggregates (route, open_key);
        CREATE INDEX aggregates_due ON aggregates (route, due_at)";

/// Pending deliveries only, in the two orders their queries read them: a parallel
/// destination's claims by due time (`deliveries_due`), a FIFO destination's head by id
/// (`deliveries_pending`: without it, each FIFO delivery sorted the destination's whole queue —
/// 64 ms apiece with 100,000 pending). A delivery leaves both when it ends, so they hold the
/// backlog and nothing else.
/// Places kept in FIFO lines by messages whose steps have not run (`Line::Kept`): a FIFO head
/// looks for one before it. Only waiting rows are in it, so other deliveries pay nothing.
/// Inbound positions (a database reader's watermark), written with the messages that reach
/// them; one row per route and name, never pruned with the messages.
pub(super) const SCHEMA_V6: &str = "
        CREATE TABLE positions (
            route TEXT NOT NULL,
            name  TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (route, name)
        )";

pub(super) const SCHEMA_V5: &str = "
        CREATE INDEX deliveries_waiting ON deliveries (route, destination, id) WHERE state = 'waiting'";

pub(super) const SCHEMA_V4: &str = "
        DROP INDEX deliveries_due;
        CREATE INDEX deliveries_due ON deliveries (route, destination, next_attempt_at, id)
            WHERE state = 'pending';
        CREATE INDEX deliveries_pending ON deliveries (route, destination, id) WHERE state = 'pending'";

/// A route's newest messages, and a route's messages in a time range (ids sort by arrival):
/// `messages list --route` and the console's search on a large store. Never changes after
/// the insert (route and id are fixed), so it costs one index entry per message.
pub(super) const SCHEMA_V3: &str = "CREATE INDEX messages_route_id ON messages (route, id)";

/// Claims (see the module docs of `store`): who holds a message or delivery, and until when.
pub(super) const SCHEMA_V2: &str = "
        ALTER TABLE messages ADD COLUMN owner TEXT;
        ALTER TABLE messages ADD COLUMN lease_until INTEGER;
        ALTER TABLE deliveries ADD COLUMN owner TEXT;
        ALTER TABLE deliveries ADD COLUMN lease_until INTEGER;
        CREATE INDEX messages_owner ON messages (owner) WHERE owner IS NOT NULL;
        CREATE INDEX deliveries_owner ON deliveries (owner) WHERE owner IS NOT NULL;
        CREATE TABLE destination_leases (
            route       TEXT NOT NULL,
            destination TEXT NOT NULL,
            owner       TEXT NOT NULL,
            lease_until INTEGER NOT NULL,
            PRIMARY KEY (route, destination)
        )";

pub(super) const SCHEMA_V1: &str = "
        CREATE TABLE messages (
            id              TEXT PRIMARY KEY,   -- UUIDv7: sorts by arrival
            route           TEXT NOT NULL,
            route_version   TEXT NOT NULL,
            state           TEXT NOT NULL,
            received_at     INTEGER NOT NULL,   -- unix ms
            updated_at      INTEGER NOT NULL,
            headers         TEXT NOT NULL,      -- JSON object, as received
            body            BLOB,               -- as received
            out_headers     TEXT,               -- after the steps
            out_body        BLOB,
            error           TEXT,
            parent_id       TEXT,               -- the message this one was split from
            resume_step     INTEGER NOT NULL DEFAULT 0,
            attempts        INTEGER NOT NULL DEFAULT 0, -- runs of the steps that were retried
            next_attempt_at INTEGER             -- set: the scheduler runs the steps then
        );
        CREATE INDEX messages_route_state ON messages (route, state, id);
        CREATE INDEX messages_scheduled ON messages (route, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX messages_state ON messages (state, id);
        CREATE INDEX messages_route_updated ON messages (route, updated_at);
        CREATE INDEX messages_parent ON messages (parent_id) WHERE parent_id IS NOT NULL;
        CREATE TABLE deliveries (
            id              INTEGER PRIMARY KEY,
            message_id      TEXT NOT NULL,
            route           TEXT NOT NULL,
            destination     TEXT NOT NULL,
            kind            TEXT NOT NULL DEFAULT 'main', -- main, dead_letter, wire_tap, replaced (a main one before a replay)
            payload         TEXT NOT NULL DEFAULT 'out',  -- out: after the steps; in: as received
            state           TEXT NOT NULL,    -- pending, delivered, dead
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            last_error      TEXT,
            updated_at      INTEGER NOT NULL
        );
        CREATE INDEX deliveries_due ON deliveries (route, destination, state, next_attempt_at, id);
        CREATE INDEX deliveries_message ON deliveries (message_id);
        CREATE TABLE message_index (
            name        TEXT NOT NULL,
            value       TEXT NOT NULL,
            message_id  TEXT NOT NULL
        );
        CREATE INDEX message_index_lookup ON message_index (name, value);
        CREATE INDEX message_index_message ON message_index (message_id);
        CREATE TABLE transitions (
            id          INTEGER PRIMARY KEY,
            message_id  TEXT NOT NULL,
            at          INTEGER NOT NULL,
            event       TEXT NOT NULL,        -- received, step, attempt, state
            name        TEXT,                 -- the step or destination
            outcome     TEXT NOT NULL,
            duration_us INTEGER,
            detail      TEXT
        );
        CREATE INDEX transitions_message ON transitions (message_id)";
