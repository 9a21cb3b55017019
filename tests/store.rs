//! The store conformance suite: the same tests against both backends, on real databases.
//!
//! SQLite runs always (a file in a temporary directory). PostgreSQL runs when
//! `SWITCHYARD_TEST_POSTGRES` holds a server URL (`.ci/run` sets it to the local server and
//! fails when that server cannot be reached); each test gets a schema of its own.

mod common;

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use switchyard::config::values::{ByteSize, Duration as D};
use switchyard::message::{Headers, Message};
use switchyard::store::postgres::PgStore;
use switchyard::store::sqlite::SqliteStore;
use switchyard::store::*;
use uuid::Uuid;

/// How many of `route`'s messages are in `state`.
async fn in_state(store: &dyn Store, route: &str, state: MessageState) -> u64 {
    let counts = store
        .count_in_state(&[route.to_string()], state)
        .await
        .unwrap();
    counts[0].1
}

/// A message's record, if it exists (what `messages show` reads).
async fn record(store: &dyn Store, id: Uuid) -> Option<StoredMessage> {
    store.details(id).await.unwrap().map(|d| d.message)
}

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

/// Node names and a short lease, so that take-overs happen within a test.
fn claims(node: &str, lease: Duration) -> Claims {
    Claims {
        node: node.into(),
        lease,
    }
}

const LEASE: Duration = Duration::from_secs(30);

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    /// A fresh schema on the server named by `SWITCHYARD_TEST_POSTGRES`, or `None` (and a
    /// note) when it is not set.
    async fn postgres() -> Option<Backend> {
        let base = common::postgres::test_server("PostgreSQL conformance")?;
        let (url, _client) = common::postgres::fresh_schema(&base, "t").await;
        Some(Backend::Postgres(url))
    }

    /// The engine's store: SQLite takes the file's lock.
    async fn open(&self, node: &str, lease: Duration) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Arc::new(
                SqliteStore::open_with(&dir.path().join("s.db"), claims(node, lease)).unwrap(),
            ),
            Backend::Postgres(url) => {
                Arc::new(PgStore::connect(url, claims(node, lease)).await.unwrap())
            }
        }
    }

    /// Another node on the same store (SQLite: beside the engine, as only tests do).
    async fn other_node(&self, node: &str, lease: Duration) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Arc::new(
                SqliteStore::open_shared_with(&dir.path().join("s.db"), claims(node, lease))
                    .unwrap(),
            ),
            Backend::Postgres(url) => {
                Arc::new(PgStore::connect(url, claims(node, lease)).await.unwrap())
            }
        }
    }

    fn is_sqlite(&self) -> bool {
        matches!(self, Backend::Sqlite(_))
    }
}

fn insert(route: &str, body: &str) -> (Message, Insert) {
    let msg = Message::new(route, Bytes::from(body.to_string()));
    let ins = Insert {
        msg: msg.clone(),
        route_version: "v1".into(),
        state: MessageState::Received,
        error: None,
        parent: None,
        resume_step: 0,
        scheduled: false,
        wire_taps: Vec::new(),
        fifo: Vec::new(),
        index: vec![("order".into(), "17".into())],
        position: None,
    };
    (msg, ins)
}

/// A sender's message id as the one key of a keyed insert.
fn sender((name, value): (String, String)) -> Vec<Key> {
    vec![Key::sender(name, value)]
}

fn step() -> StepRecord {
    StepRecord {
        step: "steps[0].xml_to_json".into(),
        ok: true,
        duration: Duration::from_micros(5),
        detail: None,
    }
}

fn attempt(d: &Delivery, number: u32, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        delivery: d.id,
        message: d.message.id,
        destination: "x".into(),
        number,
        duration: Duration::from_millis(1),
        outcome,
        receipt: None,
    }
}

/// Claims up to `limit` due deliveries of a destination: a delivery worker's write with no
/// attempts to record.
async fn claim_due(
    store: &Arc<dyn Store>,
    route: &str,
    destination: &str,
    now: SystemTime,
    limit: usize,
) -> StoreResult<Vec<Delivery>> {
    let claim = Claim {
        route: route.into(),
        destination: destination.into(),
        now,
        limit,
        max_bytes: u64::MAX,
    };
    Ok(store.record_and_claim(Vec::new(), Some(claim)).await?.due)
}

/// Claims the destination's one due delivery and records it delivered on the first attempt.
async fn deliver_the_one_due(store: &Arc<dyn Store>, route: &str, destination: &str) {
    let due = claim_due(store, route, destination, SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "{route}/{destination}");
    store
        .record_attempt(attempt(&due[0], 1, AttemptOutcome::Delivered))
        .await
        .unwrap();
}

fn routed(destinations: &[&str]) -> Processed {
    Processed::Routed {
        headers: Headers::new(),
        body: Bytes::from_static(b"{}"),
        destinations: destinations.iter().map(|d| d.to_string()).collect(),
        held: Vec::new(),
    }
}

fn ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

// ---- the suite ----

async fn inserts_commit_and_resume_after_restart(b: &Backend) {
    let store = b.open("a", LEASE).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let s = store.clone();
        tasks.spawn(async move { s.insert(vec![insert("r", &format!("m{i}")).1]).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    // Stored by this node, so its own: nothing to claim while it runs.
    assert!(store.claim_received("r", 1000).await.unwrap().is_empty());
    store.close().await.unwrap();
    assert!(store.insert(vec![insert("r", "late").1]).await.is_err());

    // After a restart, everything unfinished resumes, oldest first, once.
    let reopened = b.open("a", LEASE).await;
    assert_eq!(in_state(&*reopened, "r", MessageState::Received).await, 500);
    let page = reopened.claim_received("r", 1000).await.unwrap();
    assert_eq!(page.len(), 500);
    assert!(
        page.windows(2).all(|w| w[0].msg.id < w[1].msg.id),
        "oldest first"
    );
    assert!(reopened.claim_received("r", 1000).await.unwrap().is_empty());
    // A message handed back (a route version stopped with it queued) is claimable again.
    reopened.release(vec![page[7].msg.id]).await.unwrap();
    let again = reopened.claim_received("r", 10).await.unwrap();
    assert_eq!(
        again.iter().map(|p| p.msg.id).collect::<Vec<_>>(),
        [page[7].msg.id]
    );
    reopened.close().await.unwrap();
}

async fn lifecycle_transitions_and_idempotent_steps(b: &Backend) {
    let store = b.open("a", LEASE).await;
    let (m, mut ins) = insert("r", "<a/>");
    ins.wire_taps = vec!["wire_tap[0]".into()];
    store.insert(vec![ins]).await.unwrap();
    let s = store
        .finish_steps(m.id, vec![step()], routed(&["to[0]", "to[1]"]))
        .await
        .unwrap();
    assert_eq!(s, Some(MessageState::Delivering));
    // A second pass over the same message records nothing and creates no deliveries.
    assert_eq!(
        store
            .finish_steps(m.id, vec![step()], routed(&["to[0]", "to[1]"]))
            .await
            .unwrap(),
        None
    );

    let now = SystemTime::now();
    let d0 = claim_due(&store, "r", "to[0]", now, 10).await.unwrap();
    let d1 = claim_due(&store, "r", "to[1]", now, 10).await.unwrap();
    assert_eq!((d0.len(), d1.len()), (1, 1));
    assert_eq!(&d0[0].message.body[..], b"{}");
    // The wire tap carries the message as received.
    let tap = claim_due(&store, "r", "wire_tap[0]", now, 10)
        .await
        .unwrap();
    assert_eq!(&tap[0].message.body[..], b"<a/>");
    assert_eq!(tap[0].kind, DeliveryKind::WireTap);

    let later = now + Duration::from_secs(60);
    let retry = AttemptOutcome::Retry {
        error: "disk full".into(),
        next_attempt_at: later,
    };
    assert_eq!(
        store
            .record_attempt(attempt(&d0[0], 1, retry))
            .await
            .unwrap(),
        None
    );
    assert!(claim_due(&store, "r", "to[0]", now, 10)
        .await
        .unwrap()
        .is_empty());
    let oldest = store.oldest_pending("r", "to[0]").await.unwrap().unwrap();
    assert_eq!(ms(oldest.next_attempt_at), ms(later));
    assert_eq!(
        ms(store.next_due("r", "to[0]").await.unwrap().unwrap()),
        ms(later)
    );

    // A wire tap's outcome never decides the message's state.
    assert_eq!(
        store
            .record_attempt(attempt(&tap[0], 1, AttemptOutcome::Delivered))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .record_attempt(attempt(&d1[0], 1, AttemptOutcome::Delivered))
            .await
            .unwrap(),
        None,
        "to[0] is still open"
    );
    let dead = AttemptOutcome::Dead {
        error: "gave up".into(),
        dead_letter: Some("dead_letter".into()),
    };
    assert_eq!(
        store
            .record_attempt(attempt(&d0[0], 2, dead))
            .await
            .unwrap(),
        Some(MessageState::Dead)
    );
    assert_eq!(
        record(&*store, m.id).await.unwrap().state,
        MessageState::Dead
    );
    // The dead delivery went to the dead-letter destination, with the processed body.
    let dl = claim_due(&store, "r", "dead_letter", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (&dl[0].message.body[..], dl[0].kind),
        (&b"{}"[..], DeliveryKind::DeadLetter)
    );
    // Every change is a recorded transition, in order.
    let details = store.details(m.id).await.unwrap().unwrap();
    let events: Vec<String> = details
        .transitions
        .iter()
        .map(|t| format!("{}:{}", t.event, t.outcome))
        .collect();
    assert_eq!(
        events,
        [
            "received:received",
            "step:ok",
            "state:delivering",
            "attempt:retry",
            "attempt:delivered",
            "attempt:delivered",
            "attempt:dead",
            "state:dead"
        ]
    );
    assert_eq!(details.deliveries.len(), 4);
    store.close().await.unwrap();
}

async fn failures_filters_retries_and_splits(b: &Backend) {
    let store = b.open("a", LEASE).await;
    let (failed, a) = insert("r", "bad");
    let (filtered, b2) = insert("r", "dull");
    let (retried, c) = insert("r", "flaky");
    let (parent, d) = insert("r", "a\nb");
    store.insert(vec![a, b2, c, d]).await.unwrap();

    let s = store
        .finish_steps(
            failed.id,
            vec![],
            Processed::Failed {
                error: "nope".into(),
                dead_letter: Some("dead_letter".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Some(MessageState::Failed));
    let dl = claim_due(&store, "r", "dead_letter", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(
        (&dl[0].message.body[..], dl[0].error.as_deref()),
        (&b"bad"[..], Some("nope"))
    );
    let s = store
        .finish_steps(
            filtered.id,
            vec![],
            Processed::Filtered {
                reason: "test order".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Some(MessageState::Filtered));
    let soon = SystemTime::now() + Duration::from_millis(300);
    let s = store
        .finish_steps(
            retried.id,
            vec![],
            Processed::Retry {
                error: "busy".into(),
                next_attempt_at: soon,
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Some(MessageState::Received));
    store.close().await.unwrap();

    // After a restart: scheduled messages are not resumed as fresh ones, and are taken once
    // when due.
    let store = b.open("a", LEASE).await;
    let fresh = store.claim_received("r", 10).await.unwrap();
    assert_eq!(
        fresh.iter().map(|p| p.msg.id).collect::<Vec<_>>(),
        vec![parent.id]
    );
    assert!(store
        .take_scheduled("r", SystemTime::now(), 10)
        .await
        .unwrap()
        .is_empty());
    let due = store
        .take_scheduled("r", soon + Duration::from_millis(1), 10)
        .await
        .unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 1));
    assert!(store
        .take_scheduled("r", soon + Duration::from_secs(1), 10)
        .await
        .unwrap()
        .is_empty());

    let children: Vec<Insert> = ["a", "b"]
        .iter()
        .map(|body| {
            let (_, mut ins) = insert("r", body);
            ins.parent = Some(parent.id);
            ins.resume_step = 1;
            ins.scheduled = true;
            ins
        })
        .collect();
    let s = store
        .finish_steps(parent.id, vec![], Processed::Split { children })
        .await
        .unwrap();
    assert_eq!(s, Some(MessageState::Split));
    let kids = store
        .take_scheduled("r", SystemTime::now() + Duration::from_millis(5), 10)
        .await
        .unwrap();
    assert_eq!(kids.len(), 2);
    assert!(kids.iter().all(|k| k.resume_step == 1));
    let kid = record(&*store, kids[0].msg.id).await.unwrap();
    assert_eq!(kid.parent, Some(parent.id));
    store.close().await.unwrap();
}

async fn retention_by_age_count_and_size(b: &Backend) {
    let store = b.open("a", LEASE).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (m, ins) = insert("r", &"x".repeat(1000 + i));
        store.insert(vec![ins]).await.unwrap();
        let done = Processed::Unrouted {
            headers: Headers::new(),
            body: Bytes::from(vec![b'y'; 1000]),
        };
        store.finish_steps(m.id, vec![], done).await.unwrap();
        ids.push(m.id);
    }
    let (pending, ins) = insert("r", "still working");
    store.insert(vec![ins]).await.unwrap();
    // By size: 10 finished messages of about 2 KB each, kept under 9 KB: the oldest go.
    let by_size = Retention {
        max_bytes: Some(ByteSize(9000)),
        ..Retention::default()
    };
    let p = store.prune("r", &by_size, 100).await.unwrap();
    assert_eq!(p.deleted, 6);
    assert!(record(&*store, ids[0]).await.is_none());
    assert!(record(&*store, ids[9]).await.is_some());
    // By count.
    let by_count = Retention {
        max_messages: Some(2),
        ..Retention::default()
    };
    assert_eq!(store.prune("r", &by_count, 100).await.unwrap().deleted, 2);
    // Bodies only.
    let bodies = Retention {
        body_max_age: Some(D::from_millis(0)),
        ..Retention::default()
    };
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(store.prune("r", &bodies, 100).await.unwrap().bodies, 2);
    assert!(store
        .details(ids[9])
        .await
        .unwrap()
        .unwrap()
        .body
        .is_empty());
    // By age: everything finished goes; the unfinished message stays.
    let by_age = Retention {
        max_age: Some(D::from_millis(0)),
        ..Retention::default()
    };
    assert_eq!(store.prune("r", &by_age, 100).await.unwrap().deleted, 2);
    assert!(record(&*store, pending.id).await.is_some());
    if b.is_sqlite() {
        // The file hands freed pages back (PostgreSQL's autovacuum does this by itself).
        assert!(store.reclaim(1000).await.unwrap() > 0);
    }
    store.close().await.unwrap();
}

async fn search_details_and_replay(b: &Backend) {
    let store = b.open("a", LEASE).await;
    let (m, ins) = insert("orders", "<order id=\"ACME-1\"/>");
    let (other, mut ins2) = insert("orders", "<order id=\"OTHER\"/>");
    ins2.index = vec![("order".into(), "99".into())];
    store.insert(vec![ins, ins2]).await.unwrap();
    store
        .finish_steps(m.id, vec![step()], routed(&["to[0]"]))
        .await
        .unwrap();
    let search = |text: Option<&str>, field: Option<(&str, &str)>| Search {
        route: Some("orders".into()),
        text: text.map(str::to_string),
        field: field.map(|(n, v)| (n.to_string(), v.to_string())),
        limit: 10,
        ..Search::default()
    };
    let found = store.search(&search(Some("ACME-1"), None)).await.unwrap();
    assert_eq!(found.iter().map(|s| s.id).collect::<Vec<_>>(), [m.id]);
    let found = store
        .search(&search(None, Some(("order", "99"))))
        .await
        .unwrap();
    assert_eq!(found.iter().map(|s| s.id).collect::<Vec<_>>(), [other.id]);
    let by_state = store
        .search(&Search {
            state: Some(MessageState::Delivering),
            limit: 10,
            ..Search::default()
        })
        .await
        .unwrap();
    assert_eq!(by_state.len(), 1);

    deliver_the_one_due(&store, "orders", "to[0]").await;
    assert_eq!(
        record(&*store, m.id).await.unwrap().state,
        MessageState::Delivered
    );
    // Re-delivery to one destination, then a full reprocess.
    let said = store.replay(m.id, Some("to[0]")).await.unwrap();
    assert!(said.contains("pending again"), "{said}");
    assert_eq!(
        claim_due(&store, "orders", "to[0]", SystemTime::now(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let said = store.replay(m.id, None).await.unwrap();
    assert!(said.contains("run through the route again"), "{said}");
    let again = store
        .take_scheduled("orders", SystemTime::now() + Duration::from_millis(5), 10)
        .await
        .unwrap();
    assert_eq!(again.iter().map(|p| p.msg.id).collect::<Vec<_>>(), [m.id]);
    let e = store.replay(uuid::Uuid::now_v7(), None).await.unwrap_err();
    assert!(e.to_string().contains("no message"), "{e}");
    let pending = store.queues().await.unwrap();
    assert!(
        pending.is_empty(),
        "the replaced delivery is not pending: {pending:?}"
    );
    // Its steps run again and the new delivery succeeds: the message is delivered, and the
    // earlier delivery (ended dead by the replay) stays as history without counting.
    store
        .finish_steps(m.id, vec![step()], routed(&["to[0]"]))
        .await
        .unwrap();
    deliver_the_one_due(&store, "orders", "to[0]").await;
    assert_eq!(
        record(&*store, m.id).await.unwrap().state,
        MessageState::Delivered
    );
    let kinds: Vec<(String, String)> = store
        .details(m.id)
        .await
        .unwrap()
        .unwrap()
        .deliveries
        .iter()
        .map(|d| (d.kind.clone(), d.state.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("replaced".to_string(), "dead".to_string()),
            ("main".to_string(), "delivered".to_string())
        ]
    );
    // Sending it to that destination again sends the new delivery only.
    store.replay(m.id, Some("to[0]")).await.unwrap();
    assert_eq!(
        claim_due(&store, "orders", "to[0]", SystemTime::now(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    store.close().await.unwrap();
}

async fn claims_are_exclusive_and_taken_over_after_the_lease(b: &Backend) {
    let lease = Duration::from_millis(1500);
    let a = b.open("node-a", lease).await;
    let other = b.other_node("node-b", lease).await;
    let (m1, i1) = insert("r", "one");
    let (m2, i2) = insert("r", "two");
    a.insert(vec![i1, i2]).await.unwrap();
    a.finish_steps(m1.id, vec![step()], routed(&["to[0]"]))
        .await
        .unwrap();

    // What node A holds, node B does not get: the message in hand, the claimed delivery.
    assert!(other.claim_received("r", 10).await.unwrap().is_empty());
    let now = SystemTime::now();
    assert_eq!(claim_due(&a, "r", "to[0]", now, 10).await.unwrap().len(), 1);
    assert!(claim_due(&other, "r", "to[0]", now, 10)
        .await
        .unwrap()
        .is_empty());
    // While A renews its leases, nothing changes hands.
    for _ in 0..4 {
        tokio::time::sleep(lease / 3).await;
        a.renew_leases().await.unwrap();
    }
    assert!(other.claim_received("r", 10).await.unwrap().is_empty());
    assert!(claim_due(&other, "r", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap()
        .is_empty());
    // The next claimable time of a claimed delivery is its lease's end.
    let next = other.next_due("r", "to[0]").await.unwrap().unwrap();
    assert!(next > SystemTime::now(), "claimed: not claimable yet");

    // A stops renewing (it died): after the lease, B takes its work over.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = other.claim_received("r", 10).await.unwrap();
    assert_eq!(taken.iter().map(|p| p.msg.id).collect::<Vec<_>>(), [m2.id]);
    let deliveries = claim_due(&other, "r", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(
        deliveries.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        [m1.id]
    );
    // A, back from the dead, cannot record what B now holds; B can.
    assert_eq!(
        a.finish_steps(m2.id, vec![step()], routed(&["to[0]"]))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        other
            .finish_steps(m2.id, vec![step()], routed(&["to[0]"]))
            .await
            .unwrap(),
        Some(MessageState::Delivering)
    );
    other.close().await.unwrap();
    a.close().await.unwrap();
}

async fn concurrent_claims_never_overlap(b: &Backend) {
    let a = b.open("node-a", LEASE).await;
    let nodes: Vec<Arc<dyn Store>> = vec![
        a.clone(),
        b.other_node("node-b", LEASE).await,
        b.other_node("node-c", LEASE).await,
    ];
    let mut ids = Vec::new();
    for i in 0..300 {
        let (m, ins) = insert("r", &format!("m{i}"));
        a.insert(vec![ins]).await.unwrap();
        a.finish_steps(m.id, vec![], routed(&["to[0]"]))
            .await
            .unwrap();
        ids.push(m.id);
    }
    // Three nodes claim at once, in small batches, until nothing is left.
    let mut tasks = tokio::task::JoinSet::new();
    for node in nodes.clone() {
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = claim_due(&node, "r", "to[0]", SystemTime::now(), 16)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|d| d.message.id));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all, expected, "every delivery claimed exactly once");
    for n in nodes {
        n.close().await.unwrap();
    }
}

async fn fifo_destination_is_held_by_one_node(b: &Backend) {
    let lease = Duration::from_millis(1000);
    let a = b.open("node-a", lease).await;
    let other = b.other_node("node-b", lease).await;
    for i in 0..3 {
        let (m, ins) = insert("r", &format!("m{i}"));
        a.insert(vec![ins]).await.unwrap();
        a.finish_steps(m.id, vec![], routed(&["to[0]"]))
            .await
            .unwrap();
    }
    let head = a.oldest_pending("r", "to[0]").await.unwrap().unwrap();
    assert!(
        other.oldest_pending("r", "to[0]").await.unwrap().is_none(),
        "node A holds the FIFO destination"
    );
    a.record_attempt(attempt(&head, 1, AttemptOutcome::Delivered))
        .await
        .unwrap();
    let next = a.oldest_pending("r", "to[0]").await.unwrap().unwrap();
    assert!(next.message.id > head.message.id, "in order");
    // Node A dies; after its lease, B holds the destination and goes on in order.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = other.oldest_pending("r", "to[0]").await.unwrap().unwrap();
    assert_eq!(taken.id, next.id);
    assert!(a.oldest_pending("r", "to[0]").await.unwrap().is_none());
    other.close().await.unwrap();
    a.close().await.unwrap();
}

/// A message stored before its steps ran keeps its place in the route's FIFO lines: a later
/// message whose steps finished first (on any node) waits behind it, and a message that goes
/// elsewhere after all gives its place up.
async fn a_fifo_place_is_kept_while_the_steps_run(b: &Backend) {
    let a = b.open("node-a", LEASE).await;
    let other = b.other_node("node-b", LEASE).await;
    let keeping = |body: &str| {
        let (m, mut ins) = insert("rf", body);
        ins.fifo = vec!["to[0]".into()];
        (m, ins)
    };
    // First: stored at once, its steps slow. Second: filtered in the end. Third: processed
    // before its commit, on the other node.
    let (slow, ins) = keeping("slow");
    a.insert(vec![ins]).await.unwrap();
    let (filtered, ins) = keeping("filtered");
    a.insert(vec![ins]).await.unwrap();
    let (quick, ins) = keeping("quick");
    other
        .insert_processed(ins, vec![step()], routed(&["to[0]"]), vec![])
        .await
        .unwrap();
    assert!(
        a.oldest_pending("rf", "to[0]").await.unwrap().is_none(),
        "the quick message waits behind the place the slow one keeps"
    );
    a.finish_steps(slow.id, vec![step()], routed(&["to[0]"]))
        .await
        .unwrap();
    let head = a.oldest_pending("rf", "to[0]").await.unwrap().unwrap();
    assert_eq!(head.message.id, slow.id, "in its place, first");
    a.record_attempt(attempt(&head, 1, AttemptOutcome::Delivered))
        .await
        .unwrap();
    assert!(a.oldest_pending("rf", "to[0]").await.unwrap().is_none());
    a.finish_steps(
        filtered.id,
        vec![],
        Processed::Filtered {
            reason: "not for us".into(),
        },
    )
    .await
    .unwrap();
    let next = a.oldest_pending("rf", "to[0]").await.unwrap().unwrap();
    assert_eq!(
        next.message.id, quick.id,
        "the filtered message left the line"
    );
    other.close().await.unwrap();
    a.close().await.unwrap();
}

async fn a_failing_write_does_not_undo_the_others(b: &Backend) {
    let store = b.open("a", LEASE).await;
    let (first, ins) = insert("r", "first");
    store.insert(vec![ins.clone()]).await.unwrap();
    // Many writes at once share transactions; one of them fails (the id is taken).
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for i in 0..100 {
        let s = store.clone();
        if i == 50 {
            let dup = ins.clone();
            tasks.spawn(async move { (true, s.insert(vec![dup]).await) });
        } else {
            let (m, other) = insert("r", &format!("m{i}"));
            ids.push(m.id);
            tasks.spawn(async move { (false, s.insert(vec![other]).await) });
        }
    }
    while let Some(r) = tasks.join_next().await {
        let (dup, result) = r.unwrap();
        assert_eq!(result.is_err(), dup, "{result:?}");
    }
    for id in ids.iter().chain([&first.id]) {
        assert!(record(&*store, *id).await.is_some(), "{id} lost");
    }
    assert_eq!(in_state(&*store, "r", MessageState::Received).await, 100);
    store.close().await.unwrap();
}

async fn named_leases_pass_to_another_node_when_not_renewed(b: &Backend) {
    let lease = Duration::from_millis(1000);
    let a = b.open("node-a", lease).await;
    let other = b.other_node("node-b", lease).await;
    assert!(a.hold("files", INBOUND_LEASE).await.unwrap());
    assert!(!other.hold("files", INBOUND_LEASE).await.unwrap());
    // Holding it again renews it.
    tokio::time::sleep(lease / 2).await;
    assert!(a.hold("files", INBOUND_LEASE).await.unwrap());
    tokio::time::sleep(lease / 2 + Duration::from_millis(100)).await;
    assert!(
        !other.hold("files", INBOUND_LEASE).await.unwrap(),
        "renewed by hold"
    );
    // The node's general renewal does not keep an inbound lease: only the running inbound does.
    a.renew_leases().await.unwrap();
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    a.renew_leases().await.unwrap();
    assert!(other.hold("files", INBOUND_LEASE).await.unwrap());
    assert!(!a.hold("files", INBOUND_LEASE).await.unwrap());
    other.close().await.unwrap();
    a.close().await.unwrap();
}

/// A new message's delivery held for this node in its one write (handed to the destination's
/// worker in memory): pending, reported with its id, claimed by nobody while this node renews
/// its lease, recorded like a claimed one — and due again for any node once released, or once
/// the lease runs out unrenewed.
async fn held_deliveries_are_claimed_by_nobody_else(b: &Backend) {
    let lease = Duration::from_millis(1500);
    let a = b.open("node-a", lease).await;
    let other = b.other_node("node-b", lease).await;
    let held_insert = |body: &str| {
        let (m, ins) = insert("rh", body);
        let mut result = routed(&["to[0]", "to[1]"]);
        if let Processed::Routed { held, .. } = &mut result {
            held.push("to[0]".into());
        }
        (m, ins, result)
    };
    let (m, ins, result) = held_insert("one");
    let stored = a
        .insert_processed(ins, vec![step()], result, vec![])
        .await
        .unwrap();
    let Stored::Processed(MessageState::Delivering, held) = stored else {
        panic!("{stored:?}");
    };
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].0, "to[0]");
    // The other destination's delivery is claimed as always; the held one by nobody.
    let now = SystemTime::now();
    assert!(claim_due(&a, "rh", "to[0]", now, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(claim_due(&other, "rh", "to[0]", now, 10)
        .await
        .unwrap()
        .is_empty());
    let to1 = claim_due(&other, "rh", "to[1]", now, 10).await.unwrap();
    assert_eq!(to1.len(), 1);
    let details = a.details(m.id).await.unwrap().unwrap();
    assert!(details.deliveries.iter().all(|d| d.state == "pending"));
    // While node A renews, the held delivery stays its own.
    for _ in 0..4 {
        tokio::time::sleep(lease / 3).await;
        a.renew_leases().await.unwrap();
    }
    assert!(claim_due(&other, "rh", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap()
        .is_empty());
    // Recorded by its id like any claimed delivery: the message ends with its last one.
    let sent = |id: i64, destination: &str| Attempt {
        delivery: id,
        message: m.id,
        destination: destination.into(),
        number: 1,
        duration: Duration::from_millis(1),
        outcome: AttemptOutcome::Delivered,
        receipt: None,
    };
    assert_eq!(
        a.record_attempt(sent(held[0].1, "to[0]")).await.unwrap(),
        None
    );
    assert_eq!(
        other
            .record_attempt(sent(to1[0].id, "to[1]"))
            .await
            .unwrap(),
        Some(MessageState::Delivered)
    );

    // Released (the worker stopped before sending it): due at once, for any node.
    let (_, ins, result) = held_insert("two");
    let Stored::Processed(_, held) = a
        .insert_processed(ins, vec![step()], result, vec![])
        .await
        .unwrap()
    else {
        panic!("stored as a duplicate");
    };
    a.release_deliveries(vec![held[0].1]).await.unwrap();
    let again = claim_due(&other, "rh", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [held[0].1]);
    other
        .record_attempt(attempt(&again[0], 1, AttemptOutcome::Delivered))
        .await
        .unwrap();

    // Never handed over and never renewed (the node died after the commit): taken over
    // after the lease.
    let (m3, ins, result) = held_insert("three");
    a.insert_processed(ins, vec![step()], result, vec![])
        .await
        .unwrap();
    assert!(claim_due(&other, "rh", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = claim_due(&other, "rh", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        [m3.id]
    );
    other.close().await.unwrap();
    a.close().await.unwrap();
}

async fn released_deliveries_are_due_again_for_any_node(b: &Backend) {
    let a = b.open("node-a", LEASE).await;
    let other = b.other_node("node-b", LEASE).await;
    let (m, ins) = insert("r", "one");
    a.insert(vec![ins]).await.unwrap();
    a.finish_steps(m.id, vec![], routed(&["to[0]"]))
        .await
        .unwrap();
    let claimed = claim_due(&a, "r", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claim_due(&other, "r", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap()
        .is_empty());
    // Node A could not record its attempt and gives the delivery back.
    a.release_deliveries(vec![claimed[0].id]).await.unwrap();
    let again = claim_due(&other, "r", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|d| d.id).collect::<Vec<_>>(),
        [claimed[0].id]
    );
    other.close().await.unwrap();
    a.close().await.unwrap();
}

/// A claim stops at `max_bytes` of bodies, so that a batch of large messages is not loaded at
/// once; the first delivery is claimed however large, and the rest stay due.
async fn claims_stop_at_their_byte_bound(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    for _ in 0..5 {
        let (m, ins) = insert("rb", "in");
        store.insert(vec![ins]).await.unwrap();
        let out = Processed::Routed {
            headers: Headers::new(),
            body: Bytes::from(vec![b'x'; 1000]),
            destinations: vec!["to[0]".into()],
            held: Vec::new(),
        };
        store.finish_steps(m.id, vec![], out).await.unwrap();
    }
    let claim = |max_bytes| Claim {
        route: "rb".into(),
        destination: "to[0]".into(),
        now: SystemTime::now(),
        limit: 10,
        max_bytes,
    };
    let due = |claim| {
        let store = store.clone();
        async move {
            store
                .record_and_claim(Vec::new(), Some(claim))
                .await
                .unwrap()
                .due
        }
    };
    // 0, 1000 and 2000 bytes before them: under 2,500; the fourth would start at 3,000.
    let first = due(claim(2500)).await;
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|d| d.message.body.len() == 1000));
    assert_eq!(
        due(claim(1)).await.len(),
        1,
        "the first comes whatever its size"
    );
    assert_eq!(due(claim(u64::MAX)).await.len(), 1, "the last one is left");
    store.close().await.unwrap();
}

/// A delivery worker's one write per batch: the attempts it made and the claim of its next
/// batch, together.
async fn attempts_and_the_next_claim_are_one_write(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    let other = b.other_node("node-b", LEASE).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (m, ins) = insert("rc", &format!("m{i}"));
        let state = store
            .insert_processed(ins, vec![step()], routed(&["to[0]"]), vec![])
            .await
            .unwrap();
        assert_eq!(state, Stored::Processed(MessageState::Delivering, vec![]));
        ids.push(m.id);
    }
    let first = claim_due(&store, "rc", "to[0]", SystemTime::now(), 2)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let attempts = vec![
        attempt(&first[0], 1, AttemptOutcome::Delivered),
        attempt(
            &first[1],
            1,
            AttemptOutcome::Retry {
                error: "503 from the far side".into(),
                next_attempt_at: SystemTime::now() + Duration::from_secs(3600),
            },
        ),
    ];
    let claim = Claim {
        route: "rc".into(),
        destination: "to[0]".into(),
        now: SystemTime::now(),
        limit: 10,
        max_bytes: u64::MAX,
    };
    let recorded = store
        .record_and_claim(attempts, Some(claim.clone()))
        .await
        .unwrap();
    assert_eq!(recorded.ended, [Some(MessageState::Delivered), None]);
    // The three not yet claimed, oldest first; the retried one is not due for an hour.
    let due: Vec<Uuid> = recorded.due.iter().map(|d| d.message.id).collect();
    assert_eq!(due, ids[2..]);
    // Claimed in that write: nobody else gets them, and nothing is left to claim.
    assert!(claim_due(&other, "rc", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap()
        .is_empty());
    let state = |id| {
        let store = store.clone();
        async move { record(&*store, id).await.unwrap().state }
    };
    assert_eq!(state(ids[0]).await, MessageState::Delivered);
    assert_eq!(state(ids[1]).await, MessageState::Delivering);
    let details = store.details(ids[1]).await.unwrap().unwrap();
    assert_eq!(details.deliveries[0].attempts, 1);
    assert_eq!(
        details.deliveries[0].last_error.as_deref(),
        Some("503 from the far side")
    );
    // Recording alone, with nothing to claim, is the same write without the claim.
    let last: Vec<Attempt> = recorded
        .due
        .iter()
        .map(|d| attempt(d, 1, AttemptOutcome::Delivered))
        .collect();
    let recorded = store.record_and_claim(last, None).await.unwrap();
    assert_eq!(recorded.ended, [Some(MessageState::Delivered); 3]);
    assert!(recorded.due.is_empty());
    // Both main deliveries of one message end in one write, one of them dead: the message
    // ends once, dead, at the later attempt; its error says which destination gave up, and
    // its history has both attempts before its end.
    let (m, ins) = insert("rc2", "both");
    store
        .insert_processed(ins, vec![step()], routed(&["to[0]", "to[1]"]), vec![])
        .await
        .unwrap();
    let now = SystemTime::now();
    let (a, z) = (
        claim_due(&store, "rc2", "to[0]", now, 10).await.unwrap(),
        claim_due(&store, "rc2", "to[1]", now, 10).await.unwrap(),
    );
    let mut dead = attempt(
        &z[0],
        1,
        AttemptOutcome::Dead {
            error: "410 gone".into(),
            dead_letter: None,
        },
    );
    dead.destination = "to[1]".into();
    let recorded = store
        .record_and_claim(
            vec![attempt(&a[0], 1, AttemptOutcome::Delivered), dead],
            None,
        )
        .await
        .unwrap();
    assert_eq!(recorded.ended, [None, Some(MessageState::Dead)]);
    let details = store.details(m.id).await.unwrap().unwrap();
    assert_eq!(details.message.state, MessageState::Dead);
    assert_eq!(details.message.error.as_deref(), Some("to[1]: 410 gone"));
    let history: Vec<(&str, &str)> = details
        .transitions
        .iter()
        .map(|t| (t.event.as_str(), t.outcome.as_str()))
        .collect();
    assert_eq!(
        history[history.len() - 3..],
        [
            ("attempt", "delivered"),
            ("attempt", "dead"),
            ("state", "dead")
        ],
        "{history:?}"
    );
    other.close().await.unwrap();
    store.close().await.unwrap();
}

async fn keyed_inserts_record_a_redelivery_as_duplicate(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    let key = || ("broker_message_id".to_string(), "m-1".to_string());
    let keyed = |route: &str| {
        let (m, mut ins) = insert(route, "payload");
        ins.index.push(key());
        ins.wire_taps.push("wire_tap[0]".into());
        (m, ins)
    };
    let (first, ins) = keyed("r");
    assert_eq!(store.insert_once(ins, sender(key())).await.unwrap(), None);
    let (again, ins) = keyed("r");
    assert_eq!(
        store.insert_once(ins, sender(key())).await.unwrap(),
        Some(first.id),
        "the redelivery names the first"
    );
    // Another route may see the same broker id: its own message.
    let (other, ins) = keyed("s");
    assert_eq!(store.insert_once(ins, sender(key())).await.unwrap(), None);
    let dup = record(&*store, again.id).await.unwrap();
    assert_eq!(dup.state, MessageState::Duplicate);
    assert!(
        dup.error
            .as_deref()
            .unwrap()
            .contains(&first.id.to_string()),
        "{:?}",
        dup.error
    );
    // Only the first is waiting for its steps; the duplicate has no wire tap either.
    let pending = store.queues().await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|q| (q.route.as_str(), q.depth))
            .collect::<Vec<_>>(),
        [("r", 1), ("s", 1)]
    );
    assert_eq!(
        record(&*store, other.id).await.unwrap().state,
        MessageState::Received
    );
    // Searchable by the key, both copies.
    let found = store
        .search(&Search {
            field: Some(key()),
            route: Some("r".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    // A duplicate is finished: retention removes it like any other.
    assert_eq!(in_state(&*store, "r", MessageState::Duplicate).await, 1);
    store.close().await.unwrap();
}

async fn search_by_time_range_state_and_route_newest_first(b: &Backend) {
    let store = b.open("a", LEASE).await;
    let stored = |route: &'static str, n: usize| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let (m, ins) = insert(route, &format!("{route} {i}"));
                store.insert(vec![ins]).await.unwrap();
                ids.push(m.id);
            }
            ids
        }
    };
    let pause = || tokio::time::sleep(Duration::from_millis(20));
    stored("a", 2).await;
    pause().await;
    let from = SystemTime::now();
    pause().await;
    let middle_a = stored("a", 3).await;
    let middle_b = stored("b", 1).await;
    pause().await;
    let to = SystemTime::now();
    pause().await;
    stored("a", 2).await;
    let ids = |found: Vec<StoredMessage>| found.iter().map(|m| m.id).collect::<Vec<_>>();
    let window = Search {
        since: Some(from),
        until: Some(to),
        limit: 10,
        ..Default::default()
    };
    // Newest first, only what arrived inside the window, of every route.
    let mut expected: Vec<Uuid> = middle_a.iter().chain(&middle_b).copied().collect();
    expected.reverse();
    assert_eq!(ids(store.search(&window).await.unwrap()), expected);
    // One route's, and a page of two.
    let mut one_route = Search {
        route: Some("a".into()),
        ..window.clone()
    };
    let mut newest_a = middle_a.clone();
    newest_a.reverse();
    assert_eq!(ids(store.search(&one_route).await.unwrap()), newest_a);
    one_route.limit = 2;
    assert_eq!(ids(store.search(&one_route).await.unwrap()), newest_a[..2]);
    // State and route together; a state nothing is in.
    let failed = Search {
        route: Some("a".into()),
        state: Some(MessageState::Failed),
        limit: 10,
        ..Default::default()
    };
    assert!(store.search(&failed).await.unwrap().is_empty());
    let received = Search {
        state: Some(MessageState::Received),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.search(&received).await.unwrap().len(), 8);
    store.close().await.unwrap();
}

async fn processed_inserts_commit_message_and_outcome_together(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    // Routed: delivering, its delivery due at once with the steps' output.
    let (routed_msg, ins) = insert("r", "in");
    let stored = store
        .insert_processed(ins, vec![step()], routed(&["to[0]"]), vec![])
        .await
        .unwrap();
    assert_eq!(stored, Stored::Processed(MessageState::Delivering, vec![]));
    let due = claim_due(&store, "r", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].message.id, routed_msg.id);
    assert_eq!(&due[0].message.body[..], b"{}");
    let details = store.details(routed_msg.id).await.unwrap().unwrap();
    let events: Vec<(String, String)> = details
        .transitions
        .iter()
        .map(|t| (t.event.clone(), t.outcome.clone()))
        .collect();
    assert_eq!(
        events,
        [
            ("received".into(), "received".into()),
            ("step".into(), "ok".into()),
            ("state".into(), "delivering".into())
        ]
    );
    assert_eq!(&details.body[..], b"in");
    // Nobody claims it for the steps: they ran.
    assert!(store.claim_received("r", 10).await.unwrap().is_empty());

    // Failed with a dead letter: the copy as received is due.
    let (failed, ins) = insert("r", "bad");
    let stored = store
        .insert_processed(
            ins,
            vec![step()],
            Processed::Failed {
                error: "steps[0]: no".into(),
                dead_letter: Some("dead_letter".into()),
            },
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, Stored::Processed(MessageState::Failed, vec![]));
    let dl = claim_due(&store, "r", "dead_letter", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].message.id, failed.id);
    assert_eq!(&dl[0].message.body[..], b"bad");

    // Retried: still received, scheduled for later, not claimable before.
    let (retried, ins) = insert("q", "later");
    let stored = store
        .insert_processed(
            ins,
            vec![step()],
            Processed::Retry {
                error: "busy".into(),
                next_attempt_at: SystemTime::now() + Duration::from_millis(300),
            },
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, Stored::Processed(MessageState::Received, vec![]));
    assert!(store.claim_received("q", 10).await.unwrap().is_empty());
    assert!(store
        .take_scheduled("q", SystemTime::now(), 10)
        .await
        .unwrap()
        .is_empty());
    let later = store
        .take_scheduled("q", SystemTime::now() + Duration::from_secs(1), 10)
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!((later[0].msg.id, later[0].attempts), (retried.id, 1));

    // Keyed: the second copy is a duplicate and its outcome is not recorded.
    let key = || ("broker_message_id".to_string(), "p-1".to_string());
    let (first, mut ins) = insert("k", "one");
    ins.index.push(key());
    let stored = store
        .insert_processed(ins, vec![step()], routed(&["to[0]"]), sender(key()))
        .await
        .unwrap();
    assert_eq!(stored, Stored::Processed(MessageState::Delivering, vec![]));
    let (again, mut ins) = insert("k", "one");
    ins.index.push(key());
    let stored = store
        .insert_processed(ins, vec![step()], routed(&["to[0]"]), sender(key()))
        .await
        .unwrap();
    assert_eq!(stored, Stored::Duplicate { first: first.id });
    assert_eq!(
        record(&*store, again.id).await.unwrap().state,
        MessageState::Duplicate
    );
    let due = claim_due(&store, "k", "to[0]", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "one delivery, the first copy's");

    // Many at once share transactions; one fails (its id is taken) and undoes nobody else.
    let (_, taken) = insert("m", "x");
    store.insert(vec![taken.clone()]).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let s = store.clone();
        let ins = if i == 30 {
            taken.clone()
        } else {
            insert("m", &format!("m{i}")).1
        };
        tasks.spawn(async move {
            let dup = i == 30;
            let r = s
                .insert_processed(ins, vec![step()], routed(&["to[0]"]), vec![])
                .await;
            (dup, r)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (dup, result) = r.unwrap();
        assert_eq!(result.is_err(), dup, "{result:?}");
    }
    assert_eq!(in_state(&*store, "m", MessageState::Delivering).await, 59);
    store.close().await.unwrap();
}

/// A reader's position (a database watermark) is written in the write of its message: with a
/// plain insert, a duplicate and a processed insert; a write that fails leaves it where it
/// was; each route has its own.
async fn positions_are_committed_with_their_message(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    let at = |v: &str| Some(("database".to_string(), v.to_string()));
    assert_eq!(store.position("r", "database").await.unwrap(), None);
    let (_, mut ins) = insert("r", "row 1");
    ins.position = at(r#"{"id":1}"#);
    let again = Insert {
        position: at(r#"{"id":99}"#),
        ..ins.clone()
    };
    store.insert(vec![ins]).await.unwrap();
    assert_eq!(
        store.position("r", "database").await.unwrap().as_deref(),
        Some(r#"{"id":1}"#)
    );
    // The same message id again: the insert fails, and its position with it.
    assert!(store.insert(vec![again]).await.is_err());
    assert_eq!(
        store.position("r", "database").await.unwrap().as_deref(),
        Some(r#"{"id":1}"#)
    );
    // A row read again is a duplicate, and still moves the position.
    let key = || ("database_key".to_string(), "[2]".to_string());
    let (_, mut ins) = insert("r", "row 2");
    ins.position = at(r#"{"id":2}"#);
    ins.index.push(key());
    assert_eq!(store.insert_once(ins, sender(key())).await.unwrap(), None);
    let (_, mut ins) = insert("r", "row 2");
    ins.position = at(r#"{"id":3}"#);
    ins.index.push(key());
    assert!(store
        .insert_once(ins, sender(key()))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.position("r", "database").await.unwrap().as_deref(),
        Some(r#"{"id":3}"#)
    );
    let (_, mut ins) = insert("r", "row 4");
    ins.position = at(r#"{"id":4}"#);
    store
        .insert_processed(ins, vec![step()], routed(&["to[0]"]), vec![])
        .await
        .unwrap();
    assert_eq!(
        store.position("r", "database").await.unwrap().as_deref(),
        Some(r#"{"id":4}"#)
    );
    assert_eq!(store.position("s", "database").await.unwrap(), None);
    store.close().await.unwrap();
    // Kept across a restart.
    let store = b.open("node-a", LEASE).await;
    assert_eq!(
        store.position("r", "database").await.unwrap().as_deref(),
        Some(r#"{"id":4}"#)
    );
    store.close().await.unwrap();
}

/// What the console's dashboard and search read: destination queues (depth, age of the
/// oldest, newest error, who holds claims), counts since a time, id prefixes, pages, errors
/// and a split's children.
async fn queues_counts_and_console_searches(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    let before = SystemTime::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (m, ins) = insert("q", &format!("in {i}"));
        store
            .insert_processed(ins, vec![step()], routed(&["to[0]", "to[1]"]), vec![])
            .await
            .unwrap();
        ids.push(m.id);
    }
    let due = claim_due(&store, "q", "to[0]", SystemTime::now(), 1)
        .await
        .unwrap();
    assert_eq!(due[0].message.id, ids[0]);
    let retry = AttemptOutcome::Retry {
        error: "HTTP 503 from the shop".into(),
        next_attempt_at: SystemTime::now() + Duration::from_secs(60),
    };
    store
        .record_attempt(attempt(&due[0], 1, retry))
        .await
        .unwrap();
    // Claimed again by this node: the queue says who holds it.
    let due = claim_due(&store, "q", "to[1]", SystemTime::now(), 1)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    let mut queues = store.queues().await.unwrap();
    queues.sort_by(|a, b| a.destination.cmp(&b.destination));
    assert_eq!(queues.len(), 2, "{queues:?}");
    let (q0, q1) = (&queues[0], &queues[1]);
    assert_eq!(
        (q0.route.as_str(), q0.destination.as_str(), q0.depth),
        ("q", "to[0]", 3)
    );
    assert_eq!(q0.last_error.as_deref(), Some("HTTP 503 from the shop"));
    assert!(q0.claimed_by.is_empty(), "{q0:?}");
    assert_eq!(q1.claimed_by, ["node-a"]);
    assert_eq!(q1.last_error, None);
    let oldest = q0.oldest.expect("an oldest pending delivery");
    assert!(ms(oldest) >= ms(before) && ms(oldest) <= ms(SystemTime::now()));

    // Counts since a time: none of what came before it.
    let (m, mut ins) = insert("q", "bad");
    ins.state = MessageState::Failed;
    ins.error = Some("steps[0]: unexpected end of input".into());
    store.insert(vec![ins]).await.unwrap();
    let routes = ["q".to_string(), "other".to_string()];
    let counts = store.counts_since(&routes, before).await.unwrap();
    assert_eq!(
        counts.get(&("q".into(), MessageState::Delivering)),
        Some(&3)
    );
    assert_eq!(counts.get(&("q".into(), MessageState::Failed)), Some(&1));
    assert_eq!(counts.len(), 2, "{counts:?}");
    let later = store
        .counts_since(&routes, SystemTime::now() + Duration::from_secs(1))
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");

    let found = |s: Search| {
        let store = store.clone();
        async move {
            let rows = store.search(&s).await.unwrap();
            rows.iter().map(|m| m.id).collect::<Vec<_>>()
        }
    };
    let all = Search {
        route: Some("q".into()),
        limit: 10,
        ..Default::default()
    };
    // Error text; an id prefix (with or without dashes, any case).
    let by_error = Search {
        error: Some("end of input".into()),
        ..all.clone()
    };
    assert_eq!(found(by_error).await, [m.id]);
    let full = ids[1].simple().to_string();
    for prefix in [full.clone(), ids[1].to_string()[..13].to_uppercase()] {
        let by_id = Search {
            id_prefix: Some(prefix.clone()),
            ..all.clone()
        };
        assert!(found(by_id).await.contains(&ids[1]), "{prefix}");
    }
    // Pages: the next page starts below the last id shown.
    let page = Search {
        limit: 2,
        ..all.clone()
    };
    let first = found(page.clone()).await;
    assert_eq!(first, [m.id, ids[2]]);
    let next = Search {
        before: Some(ids[2]),
        ..page
    };
    assert_eq!(found(next).await, [ids[1], ids[0]]);
    // A split's children.
    let (child, mut ins) = insert("q", "part");
    ins.parent = Some(ids[0]);
    store.insert(vec![ins]).await.unwrap();
    let children = Search {
        parent: Some(ids[0]),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(found(children).await, [child.id]);
    store.close().await.unwrap();
}

/// A route's `dedupe` key: held by messages of its window that did not fail, across nodes.
async fn dedupe_keys_count_within_their_window_and_not_after_a_failure(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    let window = |value: &str| Key {
        name: "dedupe_key".into(),
        value: value.into(),
        scope: KeyScope::Window(Duration::from_secs(3600)),
    };
    let keyed = |value: &str| {
        let (m, mut ins) = insert("dd", "payload");
        ins.index.push(("dedupe_key".into(), value.into()));
        (m, ins)
    };
    // Stored two hours ago (its id says when): outside a one-hour window.
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let secs = two_hours_ago
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_, mut ins) = keyed("A");
    ins.msg.id = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, 0));
    store.insert(vec![ins]).await.unwrap();
    let (first, ins) = keyed("A");
    assert_eq!(
        store.insert_once(ins, vec![window("A")]).await.unwrap(),
        None,
        "the copy from two hours ago is outside the window"
    );
    let (again, ins) = keyed("A");
    assert_eq!(
        store.insert_once(ins, vec![window("A")]).await.unwrap(),
        Some(first.id)
    );
    let dup = record(&*store, again.id).await.unwrap();
    assert_eq!(dup.state, MessageState::Duplicate);
    let error = dup.error.unwrap();
    assert!(
        error.contains(&first.id.to_string()) && error.contains("within the last 1h"),
        "{error}"
    );

    // A message that failed does not hold its key: the sender's resend is taken.
    let (_, mut ins) = keyed("B");
    ins.state = MessageState::Failed;
    ins.error = Some("validation failed".into());
    store.insert(vec![ins]).await.unwrap();
    let (resent, ins) = keyed("B");
    assert_eq!(
        store.insert_once(ins, vec![window("B")]).await.unwrap(),
        None
    );
    let (_, ins) = keyed("B");
    assert_eq!(
        store.insert_once(ins, vec![window("B")]).await.unwrap(),
        Some(resent.id)
    );

    // With a sender's id as well, either key makes a duplicate; steps' outcome dropped.
    let (_, mut ins) = keyed("A");
    ins.index.push(("broker_message_id".into(), "x-9".into()));
    let mut keys = sender(("broker_message_id".into(), "x-9".into()));
    keys.push(window("A"));
    let stored = store
        .insert_processed(ins, vec![step()], routed(&["to[0]"]), keys)
        .await
        .unwrap();
    assert_eq!(stored, Stored::Duplicate { first: first.id });

    // Copies of one key arriving at two nodes at once: exactly one is taken.
    let other = b.other_node("node-b", LEASE).await;
    let stores = [store.clone(), other.clone()];
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = stores[i % 2].clone();
            let (_, ins) = keyed("C");
            let key = window("C");
            tokio::spawn(async move { store.insert_once(ins, vec![key]).await.unwrap() })
        })
        .collect();
    let mut taken = 0;
    for t in tasks {
        if t.await.unwrap().is_none() {
            taken += 1;
        }
    }
    assert_eq!(
        taken, 1,
        "copies taken of one key sent to two nodes at once"
    );
    other.close().await.unwrap();
    store.close().await.unwrap();
}

/// A member of an aggregate group: committed with its steps' outcome, as the intake does.
async fn join(store: &Arc<dyn Store>, key: &str, body: &str, rule: &Join) -> Uuid {
    let (m, mut ins) = insert("ag", "as received");
    ins.index.clear();
    let result = Processed::Aggregate {
        headers: Headers::new(),
        body: Bytes::from(body.to_string()),
        join: Join {
            key: key.into(),
            ..rule.clone()
        },
    };
    let stored = store
        .insert_processed(ins, vec![step()], result, Vec::new())
        .await
        .unwrap();
    assert_eq!(stored, Stored::Processed(MessageState::Aggregating, vec![]));
    m.id
}

fn combined(group: &Group) -> Insert {
    let (mut m, mut ins) = insert("ag", "[1,2,3]");
    m.id = group.id;
    ins.msg = m;
    ins.index.clear();
    ins.scheduled = true;
    ins.resume_step = 2;
    ins
}

async fn aggregate_groups_complete_once_and_become_one_message(b: &Backend) {
    let store = b.open("node-a", LEASE).await;
    let rule = Join {
        key: String::new(),
        closes: false,
        count: Some(3),
        size: 1 << 20,
        timeout: None,
        idle: None,
    };
    // By count: the third member completes the group; a fourth opens the next one.
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(join(&store, "A", &format!("a{i}"), &rule).await);
    }
    let next_a = join(&store, "A", "a3", &rule).await;
    let other = b.other_node("node-b", LEASE).await;
    let groups = store
        .take_groups("ag", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(groups.ready.len(), 1);
    let g = &groups.ready[0];
    assert_eq!((g.key.as_str(), g.completed_by.as_str()), ("A", "count"));
    assert_eq!(
        g.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        members,
        "members oldest first"
    );
    let bodies: Vec<&[u8]> = g.members.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [b"a0", b"a1", b"a2"], "as the steps left them");
    assert_eq!(
        record(&*store, next_a).await.unwrap().state,
        MessageState::Aggregating
    );
    // Claimed by node-a: node-b neither gets it nor can emit it.
    assert!(other
        .take_groups("ag", SystemTime::now(), 10)
        .await
        .unwrap()
        .ready
        .is_empty());
    assert!(!other.emit_group(g.id, combined(g)).await.unwrap());
    // Retention never takes a member still waiting in its group.
    let all = Retention {
        max_messages: Some(0),
        ..Default::default()
    };
    store.prune("ag", &all, 100).await.unwrap();
    assert!(record(&*store, next_a).await.is_some());

    assert!(store.emit_group(g.id, combined(g)).await.unwrap());
    assert!(
        !store.emit_group(g.id, combined(g)).await.unwrap(),
        "a group is emitted once"
    );
    let made = record(&*store, g.id).await.unwrap();
    assert_eq!(made.state, MessageState::Received);
    let due = store
        .take_scheduled("ag", SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].msg.id, due[0].resume_step), (g.id, 2));
    let found = store
        .search(&Search {
            field: Some(("aggregate".into(), g.id.to_string())),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 3, "members found by their group's id");
    for m in found {
        assert_eq!(m.state, MessageState::Aggregated);
        assert!(m.error.unwrap().contains(&g.id.to_string()));
    }
    let details = store.details(g.id).await.unwrap().unwrap();
    assert!(
        details.transitions.iter().any(|t| t
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("combined from the 3 members")),
        "{:?}",
        details.transitions
    );

    // By `when`, by size, by timeout and by idle time.
    let when = Join {
        closes: true,
        count: None,
        ..rule.clone()
    };
    join(&store, "W", "w", &when).await;
    let size = Join {
        count: None,
        size: 10,
        ..rule.clone()
    };
    join(&store, "S", "123456", &size).await;
    join(&store, "S", "123456", &size).await;
    let timed = Join {
        count: None,
        timeout: Some(Duration::from_millis(300)),
        idle: Some(Duration::from_secs(60)),
        ..rule.clone()
    };
    join(&store, "T", "t", &timed).await;
    let idle = Join {
        count: None,
        idle: Some(Duration::from_millis(200)),
        ..rule.clone()
    };
    join(&store, "I", "i", &idle).await;
    join(&store, "I", "i", &idle).await;
    let now = store
        .take_groups("ag", SystemTime::now(), 10)
        .await
        .unwrap();
    let mut by: Vec<(String, String)> = now
        .ready
        .iter()
        .map(|g| (g.key.clone(), g.completed_by.clone()))
        .collect();
    by.sort();
    assert_eq!(
        by,
        [("S".into(), "size".into()), ("W".into(), "when".into())]
    );
    let next = now.next_due.expect("open groups time out");
    assert!(next <= SystemTime::now() + Duration::from_millis(300));
    for g in &now.ready {
        assert!(store.emit_group(g.id, combined(g)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let later = store
        .take_groups("ag", SystemTime::now(), 10)
        .await
        .unwrap();
    let mut by: Vec<(String, String, usize)> = later
        .ready
        .iter()
        .map(|g| (g.key.clone(), g.completed_by.clone(), g.members.len()))
        .collect();
    by.sort();
    assert_eq!(
        by,
        [
            ("I".into(), "idle".into(), 2),
            ("T".into(), "timeout".into(), 1)
        ]
    );

    // A member whose steps ran after its commit joins through the same write.
    let (m, ins) = insert("ag", "stored first");
    store.insert(vec![ins]).await.unwrap();
    let state = store
        .finish_steps(
            m.id,
            vec![step()],
            Processed::Aggregate {
                headers: Headers::new(),
                body: Bytes::from_static(b"late"),
                join: Join {
                    key: "L".into(),
                    closes: true,
                    ..rule.clone()
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(state, Some(MessageState::Aggregating));

    // Members of one key committed by two nodes at once: every group has exactly `count`.
    let stores = [store.clone(), other.clone()];
    let four = Join {
        count: Some(4),
        ..rule.clone()
    };
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (store, four) = (stores[i % 2].clone(), four.clone());
            tokio::spawn(async move { join(&store, "C", &format!("c{i}"), &four).await })
        })
        .collect();
    let mut sent = std::collections::BTreeSet::new();
    for t in tasks {
        sent.insert(t.await.unwrap());
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut groups = 0;
    loop {
        let page = store.take_groups("ag", SystemTime::now(), 3).await.unwrap();
        if page.ready.is_empty() {
            break;
        }
        for g in page.ready.iter().filter(|g| g.key == "C") {
            assert_eq!(g.members.len(), 4, "group {} of key C", g.id);
            seen.extend(g.members.iter().map(|m| m.id));
            groups += 1;
        }
        for g in &page.ready {
            assert!(store.emit_group(g.id, combined(g)).await.unwrap());
        }
    }
    assert_eq!(groups, 10);
    assert_eq!(seen, sent, "every member in exactly one group");
    other.close().await.unwrap();
    store.close().await.unwrap();
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = super::Backend::postgres().await {
                        super::$name(&b).await
                    }
                }
            )*
        }
    };
}

conformance!(
    inserts_commit_and_resume_after_restart,
    lifecycle_transitions_and_idempotent_steps,
    failures_filters_retries_and_splits,
    retention_by_age_count_and_size,
    search_details_and_replay,
    claims_are_exclusive_and_taken_over_after_the_lease,
    concurrent_claims_never_overlap,
    fifo_destination_is_held_by_one_node,
    a_fifo_place_is_kept_while_the_steps_run,
    a_failing_write_does_not_undo_the_others,
    named_leases_pass_to_another_node_when_not_renewed,
    released_deliveries_are_due_again_for_any_node,
    held_deliveries_are_claimed_by_nobody_else,
    claims_stop_at_their_byte_bound,
    attempts_and_the_next_claim_are_one_write,
    keyed_inserts_record_a_redelivery_as_duplicate,
    dedupe_keys_count_within_their_window_and_not_after_a_failure,
    processed_inserts_commit_message_and_outcome_together,
    search_by_time_range_state_and_route_newest_first,
    positions_are_committed_with_their_message,
    queues_counts_and_console_searches,
    aggregate_groups_complete_once_and_become_one_message,
);

/// Needs no server: what an operator reads when the URL or the server is wrong.
#[tokio::test]
async fn postgres_errors_say_what_is_wrong_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/switchyard");
    let e = PgStore::connect(&url, Claims::default())
        .await
        .err()
        .expect("nothing listens there")
        .to_string();
    assert!(
        e.contains(&format!("postgres://app:***@127.0.0.1:{port}/switchyard"))
            && !e.contains("s3cret"),
        "{e}"
    );
    assert!(e.contains("Connection refused"), "{e}");
    let e = PgStore::connect("postgres://app@127.0.0.1/db?colour=blue", Claims::default())
        .await
        .err()
        .expect("bad option")
        .to_string();
    assert!(e.contains("unknown option `colour`"), "{e}");
}

/// TLS to the server, verified: `sslmode=verify-full` with the server's certificate as
/// `sslrootcert`. The local server's certificate is issued to `localhost`.
#[tokio::test]
async fn postgres_over_verified_tls() {
    let Some(base) = common::postgres::test_server("PostgreSQL TLS test") else {
        return;
    };
    let (_, admin) = common::postgres::fresh_schema(&base, "t").await;
    let ssl = admin
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(
        ssl, "on",
        "the test server must have ssl = on for this test"
    );
    let cert: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let schema: String = admin
        .query_one("SELECT current_schema()", &[])
        .await
        .unwrap()
        .get(0);
    let url = |extra: &str| {
        format!("postgres://root@localhost:5432/test?options=-c%20search_path%3D{schema}&{extra}")
    };
    // Without the server's CA, its certificate is not trusted: refused, and said so.
    let e = PgStore::connect(&url("sslmode=require"), claims("tls-refused", LEASE))
        .await
        .err()
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // With it, the store works over TLS.
    let node = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let store = PgStore::connect(
        &url(&format!("sslmode=verify-full&sslrootcert={cert}")),
        claims(&node, LEASE),
    )
    .await
    .unwrap();
    let (m, ins) = insert("r", "over tls");
    store.insert(vec![ins]).await.unwrap();
    assert!(record(&store, m.id).await.is_some());
    let encrypted: i64 = admin
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE a.application_name = $1 AND s.ssl",
            &[&format!("switchyard {node}")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the store's connections are encrypted");
    store.close().await.unwrap();
}
