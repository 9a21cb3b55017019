//! The PostgreSQL schema and its migrations, run under an advisory lock so that nodes
//! starting together migrate once.

use super::*;

pub(super) async fn migrate(db: &Db) -> PgResult<()> {
    // Under the lock too: nodes starting together on a new database would otherwise race on
    // CREATE TABLE IF NOT EXISTS, which PostgreSQL answers with a unique violation in pg_type.
    db.client.batch_execute("BEGIN").await?;
    let made = async {
        db.client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        // Every node but the first would otherwise log PostgreSQL's NOTICE "relation
        // already exists, skipping".
        db.client
            .batch_execute(
                "SET LOCAL client_min_messages = warning;
                 CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
            )
            .await
    };
    match made.await {
        Ok(()) => db.client.batch_execute("COMMIT").await?,
        Err(e) => {
            let _ = db.client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    for (v, sql) in MIGRATIONS {
        db.client.batch_execute("BEGIN").await?;
        let step = async {
            db.client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            let current: i64 = db
                .client
                .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
                .await?
                .get(0);
            if current < *v {
                db.client.batch_execute(sql).await?;
                db.client
                    .execute("INSERT INTO schema_version (version) VALUES ($1)", &[v])
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        match step.await {
            Ok(()) => db.client.batch_execute("COMMIT").await?,
            Err(e) => {
                let _ = db.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Aggregate groups (the `aggregate` step): one row per group from its first member until it
/// is emitted as a message. `open_key` is the key while the group takes members and NULL once
/// complete, so that a route has one open group per key (a unique index ignores NULLs) and
/// the next member of a completed group's key opens a new one.
pub(super) const SCHEMA_V6: &str = "
    CREATE TABLE aggregates (
        group_id     UUID PRIMARY KEY,   -- also the id of the message it becomes
        route        TEXT NOT NULL,
        key          TEXT NOT NULL,
        open_key     TEXT,
        members      BIGINT NOT NULL,
        bytes        BIGINT NOT NULL,
        opened_at    BIGINT NOT NULL,
        timeout_at   BIGINT,             -- unix ms: opened_at + the step's timeout
        due_at       BIGINT,             -- open: when it times out; complete: since when
        completed_by TEXT,
        owner        TEXT,               -- the node combining it, once complete
        lease_until  BIGINT
    );
    CREATE UNIQUE INDEX aggregates_open ON aggregates (route, open_key);
    CREATE INDEX aggregates_due ON aggregates (route, due_at)";

/// Inbound positions (a database reader's watermark), written with the messages that reach
/// them; one row per route and name, never pruned with the messages.
pub(super) const SCHEMA_V5: &str = "
    CREATE TABLE positions (
        route TEXT NOT NULL,
        name  TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (route, name)
    )";

/// Places kept in FIFO lines by messages whose steps have not run (`Line::Kept`): a FIFO head
/// looks for one before it. Only waiting rows are in it, so other deliveries pay nothing.
pub(super) const SCHEMA_V4: &str = "
    CREATE INDEX deliveries_waiting ON deliveries (route, destination, id) WHERE state = 'waiting'";

/// Pending deliveries only, in the two orders their queries read them: a parallel
/// destination's claims by due time (`deliveries_due`), a FIFO destination's head by id
/// (`deliveries_pending`: without it, each FIFO delivery sorted the destination's whole
/// queue). A delivery leaves both when it ends, so they hold the backlog and nothing else.
pub(super) const SCHEMA_V3: &str = "
    DROP INDEX deliveries_due;
    CREATE INDEX deliveries_due ON deliveries (route, destination, next_attempt_at, id)
        WHERE state = 'pending';
    CREATE INDEX deliveries_pending ON deliveries (route, destination, id) WHERE state = 'pending'";

/// A route's newest messages, and a route's messages in a time range (ids sort by arrival):
/// `messages list --route` and the console's search on a large store. Never changes after
/// the insert (route and id are fixed), so it costs one index entry per message.
pub(super) const SCHEMA_V2: &str = "CREATE INDEX messages_route_id ON messages (route, id)";

pub(super) const SCHEMA_V1: &str = "
    CREATE TABLE messages (
        id              UUID PRIMARY KEY,   -- UUIDv7: sorts by arrival
        route           TEXT NOT NULL,
        route_version   TEXT NOT NULL,
        state           TEXT NOT NULL,
        received_at     BIGINT NOT NULL,    -- unix ms
        updated_at      BIGINT NOT NULL,
        headers         TEXT NOT NULL,      -- JSON object, as received
        body            BYTEA,
        out_headers     TEXT,
        out_body        BYTEA,
        error           TEXT,
        parent_id       UUID,
        resume_step     INTEGER NOT NULL DEFAULT 0,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT,
        owner           TEXT,               -- the node processing it, while received
        lease_until     BIGINT
    );
    CREATE INDEX messages_route_state ON messages (route, state, id);
    CREATE INDEX messages_scheduled ON messages (route, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
    CREATE INDEX messages_state ON messages (state, id);
    CREATE INDEX messages_route_updated ON messages (route, updated_at);
    CREATE INDEX messages_parent ON messages (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX messages_owner ON messages (owner) WHERE owner IS NOT NULL;
    CREATE TABLE deliveries (
        id              BIGSERIAL PRIMARY KEY,
        message_id      UUID NOT NULL,
        route           TEXT NOT NULL,
        destination     TEXT NOT NULL,
        kind            TEXT NOT NULL DEFAULT 'main',
        payload         TEXT NOT NULL DEFAULT 'out',
        state           TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        last_error      TEXT,
        updated_at      BIGINT NOT NULL,
        owner           TEXT,               -- the node sending it, while claimed
        lease_until     BIGINT
    );
    CREATE INDEX deliveries_due ON deliveries (route, destination, state, next_attempt_at, id);
    CREATE INDEX deliveries_message ON deliveries (message_id);
    CREATE INDEX deliveries_owner ON deliveries (owner) WHERE owner IS NOT NULL;
    CREATE TABLE destination_leases (
        route       TEXT NOT NULL,
        destination TEXT NOT NULL,
        owner       TEXT NOT NULL,
        lease_until BIGINT NOT NULL,
        PRIMARY KEY (route, destination)
    );
    CREATE TABLE message_index (
        name        TEXT NOT NULL,
        value       TEXT NOT NULL,
        message_id  UUID NOT NULL
    );
    CREATE INDEX message_index_lookup ON message_index (name, value);
    CREATE INDEX message_index_message ON message_index (message_id);
    CREATE TABLE transitions (
        id          BIGSERIAL PRIMARY KEY,
        message_id  UUID NOT NULL,
        at          BIGINT NOT NULL,
        event       TEXT NOT NULL,
        name        TEXT,
        outcome     TEXT NOT NULL,
        duration_us BIGINT,
        detail      TEXT
    );
    CREATE INDEX transitions_message ON transitions (message_id);
";
