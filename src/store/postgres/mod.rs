//! The PostgreSQL store: several engines (nodes) sharing one database.
//!
//! Writes go through writer tasks (four per node by default), each owning a connection. A
//! writer takes every job waiting in its queue, runs each in its own savepoint, commits them
//! in one transaction and only then answers each caller — group commit, as in the SQLite
//! store. Reads share one more connection (tokio-postgres pipelines concurrent queries on it).
//!
//! Work is claimed with `FOR UPDATE SKIP LOCKED`: two nodes asking at once get different rows
//! and never wait for each other. A claim carries the node's name and a lease that the node
//! renews; when a node dies its leases run out and the others take its work over (see
//! `docs/store.md`). A FIFO destination is delivered to by one node at a time, the holder of
//! its row in `destination_leases`.

use super::plan::{self, Change, Line};
use super::*;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

mod changes;
mod maintenance;
mod operations;
mod processing;
mod schema;

use changes::*;
use schema::*;

/// Jobs a single transaction may hold. Each job runs in a savepoint (a subtransaction), and
/// PostgreSQL slows every session's snapshots once one transaction has more than 64 of them
/// ("subtransaction overflow"), so a batch stays under that.
const MAX_BATCH: usize = 60;

/// Schema changes in order; each runs once, in its own transaction, under an advisory lock so
/// that nodes starting together do not race. Append new ones; never edit one that has shipped.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
    (5, SCHEMA_V5),
    (6, SCHEMA_V6),
];
/// Any constant will do: it names the migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x5357_4954_4348; // "SWITCH"
/// Held by every transaction from its first new delivery to its commit, so that delivery ids
/// — the order a FIFO destination delivers in — follow the order of the commits across
/// nodes: without it, a lower id taken by a transaction that commits later is found after a
/// higher one was already delivered. One lock for all destinations, so two transactions can
/// never take two of them in opposite orders. Keyed inserts take it too (see
/// `first_with_keys`).
const DELIVERY_ORDER_LOCK: i64 = 0x5357_4946_4946; // "SWIFIF"

/// Writer connections per node (`SWITCHYARD_PG_WRITERS`, default 4). Each commits its own
/// groups; several in parallel hide the network round trips of each other's statements.
fn writer_count() -> usize {
    std::env::var("SWITCHYARD_PG_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4usize)
        .clamp(1, 16)
}

/// A connection with its prepared statements.
struct Db {
    client: Client,
    statements: std::sync::Mutex<HashMap<String, Statement>>,
}

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// Drives a connection until it ends; the next use of its client reconnects.
async fn watch<F: Future<Output = PgResult<()>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %describe(&e), "PostgreSQL connection lost; reconnecting on next use");
    }
}
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// How connections are made: in the clear, or with TLS that verifies the server's
/// certificate and name (`sslmode=require`, `verify-ca` or `verify-full` in the URL).
#[derive(Clone)]
enum Tls {
    Off,
    On(tokio_postgres_rustls::MakeRustlsConnect),
}

/// Where and how to connect.
#[derive(Clone)]
struct Target {
    config: tokio_postgres::Config,
    tls: Tls,
}

/// Takes out of `url` what libpq understands and tokio-postgres does not: `sslrootcert=FILE`
/// (returned), and the verifying `sslmode`s, which become `require` (this store always
/// verifies the server when it uses TLS).
fn libpq_options(url: &str) -> (String, Option<std::path::PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut root = None;
    // The other options pass through exactly as written (their encoding is tokio-postgres').
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let decoded: Vec<(String, String)> = form_urlencoded::parse(pair.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        match decoded.first().map(|(k, v)| (k.as_str(), v.as_str())) {
            Some(("sslrootcert", path)) => root = Some(std::path::PathBuf::from(path)),
            Some(("sslmode", "verify-ca" | "verify-full")) => kept.push("sslmode=require"),
            _ => kept.push(pair),
        }
    }
    if kept.is_empty() {
        (base.to_string(), root)
    } else {
        (format!("{base}?{}", kept.join("&")), root)
    }
}

impl Db {
    async fn connect(target: &Target) -> PgResult<Arc<Db>> {
        let client = match &target.tls {
            Tls::Off => {
                let (client, connection) = target.config.connect(NoTls).await?;
                tokio::spawn(watch(connection));
                client
            }
            Tls::On(tls) => {
                let (client, connection) = target.config.connect(tls.clone()).await?;
                tokio::spawn(watch(connection));
                client
            }
        };
        Ok(Arc::new(Db {
            client,
            statements: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Prepares `sql` once per connection.
    async fn prepare(&self, sql: &str) -> PgResult<Statement> {
        if let Some(s) = self
            .statements
            .lock()
            .ok()
            .and_then(|m| m.get(sql).cloned())
        {
            return Ok(s);
        }
        let s = self.client.prepare(sql).await?;
        if let Ok(mut m) = self.statements.lock() {
            m.insert(sql.to_string(), s.clone());
        }
        Ok(s)
    }

    async fn query(&self, sql: &str, params: Params<'_>) -> PgResult<Vec<Row>> {
        let s = self.prepare(sql).await?;
        self.client.query(&s, params).await
    }

    async fn query_one(&self, sql: &str, params: Params<'_>) -> PgResult<Row> {
        let s = self.prepare(sql).await?;
        self.client.query_one(&s, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> PgResult<Option<Row>> {
        let s = self.prepare(sql).await?;
        self.client.query_opt(&s, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> PgResult<u64> {
        let s = self.prepare(sql).await?;
        self.client.execute(&s, params).await
    }
}

/// Independent statements of one job, sent together: tokio-postgres pipelines requests that
/// are in flight at once, so they cost one round trip instead of one each.
type Pipeline<'a> = Vec<Pin<Box<dyn Future<Output = PgResult<()>> + Send + 'a>>>;

async fn pipelined(work: Pipeline<'_>) -> PgResult<()> {
    futures_util::future::try_join_all(work).await.map(drop)
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type JobFuture = Pin<Box<dyn Future<Output = (bool, Completion)> + Send>>;
/// A write: given the writer's connection (or why there is none), runs inside the batch's
/// transaction and returns whether it succeeded and how to answer its caller once the
/// commit is known.
type Job = Box<dyn FnOnce(Result<Arc<Db>, String>) -> JobFuture + Send>;

pub struct PgStore {
    target: Target,
    jobs: std::sync::Mutex<Option<Vec<mpsc::Sender<Job>>>>,
    next_writer: std::sync::atomic::AtomicUsize,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    reader: Mutex<Option<Arc<Db>>>,
    claims: Claims,
    held: HeldLeases,
    in_hand: InHand,
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError(describe(&e))
}

/// The server's own words ("database \"x\" does not exist") or the cause below the client's
/// summary ("error connecting to server: Connection refused"): more than "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "PostgreSQL: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        );
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn closed() -> StoreError {
    StoreError("the store is closed (the engine is shutting down)".into())
}

/// A client connection to `url` with the store's URL options and TLS (`sslmode`,
/// `sslrootcert`), named `application_name` in `pg_stat_activity` unless the URL names it:
/// the `database` adapters connect to other systems' PostgreSQL the same way.
pub(crate) async fn open_client(url: &str, application_name: &str) -> Result<Client, String> {
    let (pg_url, root) = libpq_options(url);
    let mut config: tokio_postgres::Config = pg_url.parse().map_err(|e| {
        format!(
            "bad PostgreSQL URL {}: {}; expected postgres://user@host:5432/database",
            redacted(url),
            describe(&e)
        )
    })?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    let tls = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        let tls = crate::tls::client_config(root.as_deref())
            .map_err(|e| format!("PostgreSQL TLS: {e:#}"))?;
        Tls::On(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
    } else {
        Tls::Off
    };
    let db = Db::connect(&Target { config, tls }).await.map_err(|e| {
        format!(
            "cannot connect to PostgreSQL at {}: {}",
            redacted(url),
            describe(&e)
        )
    })?;
    Arc::try_unwrap(db)
        .map(|db| db.client)
        .map_err(|_| "the new connection is shared".to_string())
}

/// The server's words for an error (see [`describe`]), for the `database` adapters.
pub(crate) fn describe_error(e: &tokio_postgres::Error) -> String {
    describe(e)
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), applies the schema and starts the
    /// writer. Several nodes may connect to one database; each needs its own `claims.node`.
    pub async fn connect(url: &str, claims: Claims) -> StoreResult<PgStore> {
        let (pg_url, root) = libpq_options(url);
        let mut config: tokio_postgres::Config = pg_url.parse().map_err(|e| {
            StoreError(format!(
                "bad PostgreSQL URL {}: {}; expected postgres://user@host:5432/database",
                redacted(url),
                describe(&e)
            ))
        })?;
        // So that a DBA sees which node a connection belongs to (pg_stat_activity).
        if config.get_application_name().is_none() {
            config.application_name(format!("switchyard {}", claims.node));
        }
        let tls = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = crate::tls::client_config(root.as_deref())
                .map_err(|e| StoreError(format!("PostgreSQL TLS: {e:#}")))?;
            Tls::On(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        } else {
            Tls::Off
        };
        let target = Target { config, tls };
        let db = Db::connect(&target).await.map_err(|e| {
            StoreError(format!(
                "cannot connect to PostgreSQL at {}: {}; is the server running and the database created?",
                redacted(url),
                describe(&e)
            ))
        })?;
        migrate(&db).await.map_err(|e| {
            StoreError(format!(
                "cannot apply the store schema in {}: {}",
                redacted(url),
                describe(&e)
            ))
        })?;
        // A node restarting under its name takes back what its earlier run claimed: that run
        // is gone (node names are unique among running engines; see docs/store.md).
        db.client
            .execute(
                "UPDATE messages SET owner = NULL, lease_until = NULL WHERE owner = $1",
                &[&claims.node],
            )
            .await
            .map_err(pg_err)?;
        db.client
            .execute(
                "UPDATE deliveries SET owner = NULL, lease_until = NULL WHERE owner = $1",
                &[&claims.node],
            )
            .await
            .map_err(pg_err)?;
        db.client
            .execute(
                "DELETE FROM destination_leases WHERE owner = $1",
                &[&claims.node],
            )
            .await
            .map_err(pg_err)?;
        let mut senders = Vec::new();
        let mut writers = Vec::new();
        let mut first = Some(db);
        for _ in 0..writer_count() {
            let db = match first.take() {
                Some(db) => db,
                None => Db::connect(&target).await.map_err(pg_err)?,
            };
            let (tx, rx) = mpsc::channel::<Job>(4096);
            writers.push(tokio::spawn(write_loop(target.clone(), db, rx)));
            senders.push(tx);
        }
        Ok(PgStore {
            target,
            jobs: std::sync::Mutex::new(Some(senders)),
            next_writer: std::sync::atomic::AtomicUsize::new(0),
            writers: Mutex::new(writers),
            reader: Mutex::new(None),
            claims,
            held: HeldLeases::default(),
            in_hand: InHand::default(),
        })
    }

    fn claim_args(&self) -> (String, i64) {
        (
            self.claims.node.clone(),
            self.claims.lease.as_millis() as i64,
        )
    }

    async fn write<R, F, Fut>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(Arc<Db>) -> Fut + Send + 'static,
        Fut: Future<Output = PgResult<R>> + Send + 'static,
    {
        let jobs = {
            let senders = self.jobs.lock().map_err(|_| closed())?;
            let senders = senders.as_ref().ok_or_else(closed)?;
            let n = self
                .next_writer
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            senders[n % senders.len()].clone()
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db: Result<Arc<Db>, String>| -> JobFuture {
            Box::pin(async move {
                let result = match db {
                    Ok(db) => f(db).await.map_err(pg_err),
                    Err(e) => Err(StoreError(e)),
                };
                let ok = result.is_ok();
                let completion = Box::new(move |commit: Result<(), String>| {
                    let out = match (result, commit) {
                        (Err(e), _) => Err(e),
                        (Ok(_), Err(e)) => Err(StoreError(format!("commit failed: {e}"))),
                        (Ok(r), Ok(())) => Ok(r),
                    };
                    let _ = tx.send(out);
                }) as Completion;
                (ok, completion)
            })
        });
        jobs.send(job).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// The shared read connection, reconnected when it was lost.
    async fn reader(&self) -> StoreResult<Arc<Db>> {
        let mut reader = self.reader.lock().await;
        if let Some(db) = reader.as_ref().filter(|db| !db.client.is_closed()) {
            return Ok(db.clone());
        }
        let db = Db::connect(&self.target)
            .await
            .map_err(|e| StoreError(format!("cannot connect to PostgreSQL: {e}")))?;
        *reader = Some(db.clone());
        Ok(db)
    }
}

async fn write_loop(target: Target, first_db: Arc<Db>, mut rx: mpsc::Receiver<Job>) {
    let mut db = Some(first_db);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if db.as_ref().is_none_or(|d| d.client.is_closed()) {
            db = Db::connect(&target).await.ok();
        }
        let Some(conn) = db.clone() else {
            for job in batch {
                let (_, completion) = job(Err("cannot connect to PostgreSQL".into())).await;
                completion(Err("no connection".into()));
            }
            continue;
        };
        if let Err(e) = conn.client.batch_execute("BEGIN").await {
            let msg = format!("cannot begin a transaction: {e}");
            for job in batch {
                let (_, completion) = job(Err(msg.clone())).await;
                completion(Err(msg.clone()));
            }
            continue;
        }
        // Each job in its own savepoint, so that one failing job does not undo the others.
        // The savepoint commands travel with the job's first statement (tokio-postgres
        // pipelines requests in the order they are first polled): no round trip of their own.
        let mut completions = Vec::with_capacity(batch.len());
        let mut open_savepoint = false;
        for job in batch {
            let mark = if open_savepoint {
                "RELEASE job; SAVEPOINT job"
            } else {
                "SAVEPOINT job"
            };
            let (marked, (ok, completion)) =
                tokio::join!(conn.client.batch_execute(mark), job(Ok(conn.clone())));
            // The job tells its caller why it failed; here it only needs undoing.
            if marked.is_err() || !ok {
                let _ = conn
                    .client
                    .batch_execute("ROLLBACK TO job; RELEASE job")
                    .await;
                open_savepoint = false;
            } else {
                open_savepoint = true;
            }
            completions.push(completion);
        }
        let commit = conn
            .client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| e.to_string());
        if commit.is_err() {
            let _ = conn.client.batch_execute("ROLLBACK").await;
        }
        for c in completions {
            c(commit.clone());
        }
    }
}

/// What a claim returns of each message (the `UPDATE ... FROM c` needs them qualified).
const PENDING_COLUMNS: &str = "messages.id, messages.route, messages.headers, messages.body,
    messages.received_at, messages.resume_step, messages.attempts";

fn pending_row(r: &Row) -> Pending {
    Pending {
        msg: Message {
            id: r.get(0),
            route: r.get(1),
            headers: parse_headers(r.get(2)),
            body: Bytes::from(r.get::<_, Option<Vec<u8>>>(3).unwrap_or_default()),
            received_at: from_millis(r.get(4)),
        },
        resume_step: r.get::<_, i32>(5).max(0) as usize,
        attempts: r.get::<_, i32>(6).max(0) as u32,
    }
}

/// Delivery columns of `d` (a deliveries row set) joined with its message `m`.
const DELIVERY_COLUMNS: &str =
    "d.id, d.attempts, d.kind, d.next_attempt_at, m.id, m.received_at, m.error,
        CASE d.payload WHEN 'in' THEN m.headers ELSE m.out_headers END,
        CASE d.payload WHEN 'in' THEN m.body ELSE m.out_body END";

fn delivery_row(r: &Row, route: &str, destination: &str) -> Delivery {
    let kind: String = r.get(2);
    Delivery {
        id: r.get(0),
        destination: destination.to_string(),
        kind: DeliveryKind::parse(&kind),
        attempts: r.get::<_, i32>(1).max(0) as u32,
        next_attempt_at: from_millis(r.get(3)),
        error: r.get(6),
        message: Message {
            id: r.get(4),
            route: route.to_string(),
            headers: parse_headers(r.get(7)),
            body: Bytes::from(r.get::<_, Option<Vec<u8>>>(8).unwrap_or_default()),
            received_at: from_millis(r.get(5)),
        },
    }
}

const STORED_COLUMNS: &str =
    "id, route, route_version, state, headers, error, received_at, parent_id";

fn stored_row(r: &Row) -> StoredMessage {
    let state: String = r.get(3);
    StoredMessage {
        id: r.get(0),
        route: r.get(1),
        route_version: r.get(2),
        state: MessageState::parse(&state).unwrap_or(MessageState::Failed),
        headers: parse_headers(r.get(4)),
        error: r.get(5),
        received_at: from_millis(r.get(6)),
        parent: r.get(7),
    }
}

const FINISHED: &str = "state IN ('delivered','failed','filtered','unrouted','split','dead','duplicate','aggregated')
    AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id AND d.state = 'pending')";

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn libpq_tls_options_are_taken_out_and_the_rest_kept_as_written() {
        let (url, root) = super::libpq_options(
            "postgres://u@db/x?options=-c%20search_path%3Ds&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            url,
            "postgres://u@db/x?options=-c%20search_path%3Ds&sslmode=require"
        );
        assert_eq!(root, Some(std::path::PathBuf::from("/etc/ca.pem")));
        let (url, root) = super::libpq_options("postgres://u@db/x");
        assert_eq!((url.as_str(), root), ("postgres://u@db/x", None));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/switchyard"),
            "postgres://app:***@db:5432/switchyard"
        );
        assert_eq!(
            redacted("postgres://app@db/switchyard"),
            "postgres://app@db/switchyard"
        );
    }
}
