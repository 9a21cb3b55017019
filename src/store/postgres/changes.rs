//! Executing the store's decisions (`store/plan.rs`) on PostgreSQL: transitions, leases,
//! deliveries, aggregate groups and keyed look-ups, as SQL.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn transition(
    db: &Db,
    message: Uuid,
    at: i64,
    event: &str,
    name: Option<&str>,
    outcome: &str,
    duration: Option<Duration>,
    detail: Option<&str>,
) -> PgResult<()> {
    let duration = duration.map(|d| d.as_micros() as i64);
    db.execute(
        "INSERT INTO transitions (message_id, at, event, name, outcome, duration_us, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&message, &at, &event, &name, &outcome, &duration, &detail],
    )
    .await?;
    Ok(())
}

/// Takes or renews the lease `name` of `route` for `node`: true when `node` holds it now (it
/// was free, expired, or already this node's). The upsert's row lock makes it one node's.
pub(super) async fn take_lease(
    db: &Db,
    route: &str,
    name: &str,
    node: &str,
    now: i64,
    lease: i64,
) -> PgResult<bool> {
    db.query_opt(
        "INSERT INTO destination_leases (route, destination, owner, lease_until) VALUES ($1, $2, $3, $4)
         ON CONFLICT (route, destination) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
         WHERE destination_leases.owner = EXCLUDED.owner OR destination_leases.lease_until < $5
         RETURNING owner",
        &[&route, &name, &node, &(now + lease), &now],
    )
    .await
    .map(|held| held.is_some())
}

/// One planned change (see [`plan`]) as a statement to pipeline.
pub(super) fn apply<'a>(
    db: &'a Db,
    change: &'a Change<'a>,
    now: i64,
    node: &'a str,
    lease: i64,
) -> Pin<Box<dyn Future<Output = PgResult<()>> + Send + 'a>> {
    Box::pin(async move {
        match change {
            Change::Message { ins, held, finish } => {
                let m = &ins.msg;
                let (state, error) = match finish {
                    Some(f) => (f.state, f.error.as_deref()),
                    None => (ins.state, ins.error.as_deref()),
                };
                let output = finish.as_ref().and_then(|f| f.output);
                let retry_at = finish.as_ref().and_then(|f| f.retry_at);
                let next_attempt_at = match retry_at {
                    Some(at) => Some(millis(at)),
                    None => ins.scheduled.then_some(now),
                };
                db.execute(
                    "INSERT INTO messages (id, route, route_version, state, received_at, updated_at, headers, body,
                                           error, parent_id, resume_step, next_attempt_at, owner, lease_until,
                                           out_headers, out_body, attempts)
                     VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                    &[
                        &m.id,
                        &m.route,
                        &ins.route_version,
                        &state.as_str(),
                        &millis(m.received_at),
                        &headers_json(&m.headers),
                        &&m.body[..],
                        &error,
                        &ins.parent,
                        &(ins.resume_step as i32),
                        &next_attempt_at,
                        &held.then_some(node),
                        &held.then_some(now + lease),
                        &output.map(|(h, _)| headers_json(h)),
                        &output.map(|(_, b)| &b[..]),
                        &(retry_at.is_some() as i32),
                    ],
                )
                .await?;
            }
            Change::Child { parent, ins } => {
                let m = &ins.msg;
                db.execute(
                    "INSERT INTO messages (id, route, route_version, state, received_at, updated_at, headers, body,
                                           parent_id, resume_step, next_attempt_at)
                     VALUES ($1, $2, $3, 'received', $4, $4, $5, $6, $7, $8, $4)",
                    &[
                        &m.id,
                        &m.route,
                        &ins.route_version,
                        &millis(m.received_at),
                        &headers_json(&m.headers),
                        &&m.body[..],
                        parent,
                        &(ins.resume_step as i32),
                    ],
                )
                .await?;
            }
            Change::Position { route, name, value } => {
                db.execute(
                    "INSERT INTO positions (route, name, value) VALUES ($1, $2, $3)
                     ON CONFLICT (route, name) DO UPDATE SET value = EXCLUDED.value",
                    &[route, name, value],
                )
                .await?;
            }
            Change::Index {
                message,
                name,
                value,
            } => {
                db.execute(
                    "INSERT INTO message_index (name, value, message_id) VALUES ($1, $2, $3)",
                    &[name, value, message],
                )
                .await?;
            }
            Change::Transition {
                message,
                at,
                event,
                name,
                outcome,
                duration,
                detail,
            } => {
                let at = at.map(millis).unwrap_or(now);
                transition(
                    db,
                    *message,
                    at,
                    event,
                    *name,
                    outcome,
                    *duration,
                    detail.as_deref(),
                )
                .await?;
            }
            Change::Output {
                message,
                state,
                headers,
                body,
            } => {
                db.execute(
                    "UPDATE messages SET state = $2, updated_at = $3, out_headers = $4, out_body = $5, error = NULL
                     WHERE id = $1",
                    &[message, &state.as_str(), &now, &headers_json(headers), &&body[..]],
                )
                .await?;
            }
            Change::State {
                message,
                state,
                error,
            } => set_state(db, *message, now, *state, error.as_deref()).await?,
            Change::Error { message, error } => {
                db.execute(
                    "UPDATE messages SET error = $2 WHERE id = $1",
                    &[message, error],
                )
                .await?;
            }
            Change::Final { message, state } => {
                db.execute(
                    "UPDATE messages SET state = $2, updated_at = $3,
                     error = CASE WHEN $2 = 'delivered' THEN NULL ELSE error END WHERE id = $1",
                    &[message, &state.as_str(), &now],
                )
                .await?;
            }
            Change::Retry { message, at, error } => {
                db.execute(
                    "UPDATE messages SET attempts = attempts + 1, next_attempt_at = $2, updated_at = $3, error = $4,
                     owner = NULL, lease_until = NULL WHERE id = $1",
                    &[message, &millis(*at), &now, error],
                )
                .await?;
            }
            Change::Delivery {
                message,
                route,
                destination,
                kind,
                payload,
                line,
                held,
            } => {
                add_delivery(
                    db,
                    *message,
                    route,
                    destination,
                    (*kind, payload.as_str(), *line),
                    now,
                    held.then_some((node, now + lease)),
                )
                .await?
            }
            Change::LeaveLines { message, routed } => {
                // Never a routed destination's row: those take their places in the same
                // pipeline, in any order with this.
                db.execute(
                    "DELETE FROM deliveries WHERE message_id = $1 AND state = 'waiting'
                     AND destination <> ALL($2)",
                    &[message, routed],
                )
                .await?;
            }
            Change::Join {
                message,
                route,
                join,
                bytes,
            } => join_group(db, *message, route, join, *bytes, now).await?,
            Change::Members { group, text } => {
                // In this order: the transitions find the members still aggregating.
                let group = group.to_string();
                db.execute(
                    "INSERT INTO transitions (message_id, at, event, name, outcome, duration_us, detail)
                     SELECT i.message_id, $3, 'state', NULL, 'aggregated', NULL, $4
                     FROM message_index i JOIN messages m ON m.id = i.message_id
                     WHERE i.name = $1 AND i.value = $2 AND m.state = 'aggregating'",
                    &[&plan::GROUP_FIELD, &group, &now, text],
                )
                .await?;
                db.execute(
                    "UPDATE messages SET state = 'aggregated', updated_at = $3, error = $4
                     WHERE state = 'aggregating'
                       AND id IN (SELECT message_id FROM message_index WHERE name = $1 AND value = $2)",
                    &[&plan::GROUP_FIELD, &group, &now, text],
                )
                .await?;
            }
        }
        Ok(())
    })
}

/// A member joins the open group of its key (see [`plan::joined`]). The upsert waits for
/// another node's member of the same group to commit; when that one completed the group, it
/// opens a new one.
pub(super) async fn join_group(
    db: &Db,
    message: Uuid,
    route: &str,
    join: &crate::store::Join,
    bytes: u64,
    now: i64,
) -> PgResult<()> {
    // Row locks on groups are taken after this lock, as by every other write that takes it:
    // no two transactions wait for each other.
    db.execute("SELECT pg_advisory_xact_lock($1)", &[&DELIVERY_ORDER_LOCK])
        .await?;
    let row = db
        .query_one(
            "INSERT INTO aggregates (group_id, route, key, open_key, members, bytes, opened_at, timeout_at)
             VALUES ($1, $2, $3, $3, 1, $4, $5, $6)
             ON CONFLICT (route, open_key) DO UPDATE
               SET members = aggregates.members + 1, bytes = aggregates.bytes + EXCLUDED.bytes
             RETURNING group_id, members, bytes, timeout_at",
            &[
                &Uuid::now_v7(),
                &route,
                &join.key,
                &(bytes as i64),
                &now,
                &plan::group_timeout_at(join, now),
            ],
        )
        .await?;
    let group: Uuid = row.get(0);
    let members = row.get::<_, i64>(1).max(0) as u64;
    let total = row.get::<_, i64>(2).max(0) as u64;
    let (due, completed) = plan::joined(join, members, total, row.get(3), now);
    db.execute(
        "UPDATE aggregates SET due_at = $2, completed_by = $3,
           open_key = CASE WHEN $3::text IS NULL THEN open_key ELSE NULL END
         WHERE group_id = $1",
        &[&group, &due, &completed],
    )
    .await?;
    db.execute(
        "INSERT INTO message_index (name, value, message_id) VALUES ($1, $2, $3)",
        &[&plan::GROUP_FIELD, &group.to_string(), &message],
    )
    .await?;
    transition(
        db,
        message,
        now,
        "aggregate",
        None,
        "joined",
        None,
        Some(&plan::join_text(group, &join.key, members, completed)),
    )
    .await
}

/// Executes a plan, its statements pipelined. Statements pipelined together may run in any
/// order (one waiting for its first preparation is overtaken), so a plan never makes a row and
/// changes it too (see [`plan::processed_message`]).
pub(super) async fn apply_all(
    db: &Db,
    plan: &[Change<'_>],
    now: i64,
    node: &str,
    lease: i64,
) -> PgResult<()> {
    let work: Pipeline = plan
        .iter()
        .map(|c| apply(db, c, now, node, lease))
        .collect();
    pipelined(work).await
}

/// The first message of `route` stored under the search field `key`, if any.
/// The first message of `route` holding one of `keys` (see [`Key`]), with the key it holds.
/// Nodes look keys up one at a time: under the lock that orders deliveries (taken by every
/// write that adds one, and held to its commit), a copy committed by another node a moment
/// ago is seen, and two copies arriving at two nodes at once are not both taken.
pub(super) async fn first_with_keys<'k>(
    db: &Db,
    route: &str,
    keys: &'k [Key],
) -> PgResult<Option<(Uuid, &'k Key)>> {
    if keys.is_empty() {
        return Ok(None);
    }
    db.execute("SELECT pg_advisory_xact_lock($1)", &[&DELIVERY_ORDER_LOCK])
        .await?;
    for key in keys {
        let first = db
            .query_opt(
                "SELECT i.message_id FROM message_index i JOIN messages m ON m.id = i.message_id
                 WHERE i.name = $1 AND i.value = $2 AND m.route = $3 AND i.message_id >= $4
                   AND ($5 OR m.state NOT IN ('failed', 'dead', 'duplicate'))
                 ORDER BY i.message_id LIMIT 1",
                &[
                    &key.name,
                    &key.value,
                    &route,
                    &key.start(),
                    &key.failures_count(),
                ],
            )
            .await?;
        if let Some(row) = first {
            return Ok(Some((row.get(0), key)));
        }
    }
    Ok(None)
}

pub(super) async fn add_delivery(
    db: &Db,
    message: Uuid,
    route: &str,
    destination: &str,
    (kind, payload, line): (DeliveryKind, &str, Line),
    now: i64,
    held: Option<(&str, i64)>,
) -> PgResult<()> {
    // Re-entrant: the transaction's later deliveries take it again at no cost.
    db.execute("SELECT pg_advisory_xact_lock($1)", &[&DELIVERY_ORDER_LOCK])
        .await?;
    let (kind, state) = match line {
        Line::Kept => (kind.as_str(), "waiting"),
        Line::End | Line::InPlace => (kind.as_str(), "pending"),
    };
    if line == Line::InPlace {
        // The place kept at the message's commit becomes the delivery; a new row only when
        // none was kept. One statement, so that no other statement of the pipeline runs
        // between the two.
        db.execute(
            "WITH kept AS (
               UPDATE deliveries SET state = 'pending', kind = $4, payload = $5, next_attempt_at = $6, updated_at = $6
               WHERE message_id = $1 AND destination = $3 AND state = 'waiting' RETURNING id)
             INSERT INTO deliveries (message_id, route, destination, kind, payload, state, next_attempt_at, updated_at)
             SELECT $1, $2, $3, $4, $5, 'pending', $6, $6 WHERE NOT EXISTS (SELECT 1 FROM kept)",
            &[&message, &route, &destination, &kind, &payload, &now],
        )
        .await?;
        return Ok(());
    }
    let (owner, lease_until) = held.unzip();
    db.execute(
        "INSERT INTO deliveries (message_id, route, destination, kind, payload, state, next_attempt_at, updated_at,
                                 owner, lease_until)
         VALUES ($1, $2, $3, $4, $5, $7, $6, $6, $8, $9)",
        &[&message, &route, &destination, &kind, &payload, &now, &state, &owner, &lease_until],
    )
    .await?;
    Ok(())
}

pub(super) async fn set_state(
    db: &Db,
    id: Uuid,
    now: i64,
    state: MessageState,
    error: Option<&str>,
) -> PgResult<()> {
    db.execute(
        "UPDATE messages SET state = $2, updated_at = $3, error = $4 WHERE id = $1",
        &[&id, &state.as_str(), &now, &error],
    )
    .await?;
    Ok(())
}
