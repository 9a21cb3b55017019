//! What operators need of the SQLite store: look-ups, search, a message's record, replay
//! (see [`crate::store::Operations`]).

use super::*;

#[async_trait]
impl Operations for SqliteStore {
    async fn queues(&self) -> StoreResult<Vec<Queue>> {
        self.read(|conn| {
            // Each reads the destination's pending entries in `deliveries_pending` (route,
            // destination, id): the lowest id is the oldest delivery.
            let mut stmt = conn.prepare_cached(
                "SELECT d.route, d.destination, COUNT(*), MIN(d.id),
                        (SELECT last_error FROM deliveries e WHERE e.route = d.route AND e.destination = d.destination
                           AND e.state = 'pending' AND e.last_error IS NOT NULL ORDER BY e.updated_at DESC LIMIT 1),
                        (SELECT group_concat(DISTINCT o.owner) FROM deliveries o WHERE o.route = d.route
                           AND o.destination = d.destination AND o.state = 'pending' AND o.owner IS NOT NULL)
                 FROM deliveries d WHERE d.state = 'pending' GROUP BY d.route, d.destination",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        Queue {
                            route: r.get(0)?,
                            destination: r.get(1)?,
                            depth: r.get::<_, i64>(2)? as u64,
                            oldest: None,
                            last_error: r.get(4)?,
                            claimed_by: r
                                .get::<_, Option<String>>(5)?
                                .map(|o| o.split(',').map(str::to_string).collect())
                                .unwrap_or_default(),
                        },
                        r.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut received = conn.prepare_cached(
                "SELECT m.received_at FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.id = ?1",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (mut q, first) in rows {
                q.oldest = received
                    .query_row([first], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(from_millis);
                out.push(q);
            }
            Ok(out)
        })
        .await
    }

    async fn count_in_state(
        &self,
        routes: &[String],
        state: MessageState,
    ) -> StoreResult<Vec<(String, u64)>> {
        let routes = routes.to_vec();
        self.read(move |conn| {
            routes
                .into_iter()
                .map(|route| {
                    let n = count_route(conn, &route, state, None)?;
                    Ok((route, n))
                })
                .collect()
        })
        .await
    }

    async fn counts_since(
        &self,
        routes: &[String],
        since: SystemTime,
    ) -> StoreResult<BTreeMap<(String, MessageState), u64>> {
        let first = plan::first_id_at(since).to_string();
        let routes = routes.to_vec();
        self.read(move |conn| {
            let mut out = BTreeMap::new();
            for route in routes {
                for state in MessageState::ALL {
                    let n = count_route(conn, &route, state, Some(&first))?;
                    if n > 0 {
                        out.insert((route.clone(), state), n);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn search(&self, f: &Search) -> StoreResult<Vec<StoredMessage>> {
        let mut sql = format!("{SELECT_STORED} WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |v: rusqlite::types::Value| {
            args.push(v);
            format!("?{}", args.len())
        };
        for c in plan::search(f) {
            let text = |s: &str| rusqlite::types::Value::Text(s.to_string());
            let cond = match c {
                plan::Condition::Field(name, value) => format!(
                    "id IN (SELECT message_id FROM message_index WHERE name = {} AND value = {})",
                    arg(text(name)),
                    arg(text(value))
                ),
                plan::Condition::Route(route) => format!("route = {}", arg(text(route))),
                plan::Condition::State(state) if state != MessageState::Delivered.as_str() => {
                    format!("state = {} AND {NOT_DELIVERED}", arg(text(state)))
                }
                plan::Condition::State(state) => format!("state = {}", arg(text(state))),
                plan::Condition::Since(id, ms) => format!(
                    "id >= {} AND received_at >= {}",
                    arg(text(&id.to_string())),
                    arg(ms.into())
                ),
                plan::Condition::Until(id, ms) => format!(
                    "id <= {} AND received_at <= {}",
                    arg(text(&id.to_string())),
                    arg(ms.into())
                ),
                plan::Condition::Ids(lo, hi) => format!(
                    "id >= {} AND id <= {}",
                    arg(text(&lo.to_string())),
                    arg(text(&hi.to_string()))
                ),
                plan::Condition::Before(id) => format!("id < {}", arg(text(&id.to_string()))),
                plan::Condition::Parent(id) => {
                    format!("parent_id = {}", arg(text(&id.to_string())))
                }
                plan::Condition::Error(t) => {
                    format!("instr(COALESCE(error, ''), {}) > 0", arg(text(t)))
                }
                plan::Condition::Text(t) => {
                    let t = arg(text(t));
                    format!(
                        "(instr(headers, {t}) > 0 OR instr(CAST(body AS TEXT), {t}) > 0
                          OR instr(COALESCE(out_headers, ''), {t}) > 0 OR instr(CAST(COALESCE(out_body, '') AS TEXT), {t}) > 0)"
                    )
                }
            };
            sql.push_str(" AND ");
            sql.push_str(&cond);
        }
        let limit = arg((f.limit.max(1) as i64).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), stored_row)?;
            rows.collect()
        })
        .await
    }

    async fn details(&self, id: Uuid) -> StoreResult<Option<Details>> {
        let id = id.to_string();
        self.read(move |conn| {
            let Some(message) = conn
                .prepare_cached(&format!("{SELECT_STORED} WHERE id = ?1"))?
                .query_row([&id], stored_row)
                .optional()?
            else {
                return Ok(None);
            };
            let (body, out_headers, out_body): (Option<Vec<u8>>, Option<String>, Option<Vec<u8>>) = conn
                .prepare_cached("SELECT body, out_headers, out_body FROM messages WHERE id = ?1")?
                .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let ts = |ms: i64| humantime::format_rfc3339_millis(from_millis(ms)).to_string();
            let mut stmt = conn.prepare_cached(
                "SELECT at, event, name, outcome, duration_us, detail FROM transitions WHERE message_id = ?1 ORDER BY id",
            )?;
            let transitions = stmt
                .query_map([&id], |r| {
                    Ok(TransitionRecord {
                        at: ts(r.get(0)?),
                        event: r.get(1)?,
                        name: r.get(2)?,
                        outcome: r.get(3)?,
                        duration_us: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt = conn.prepare_cached(
                "SELECT destination, kind, state, attempts, next_attempt_at, last_error FROM deliveries WHERE message_id = ?1 ORDER BY id",
            )?;
            let deliveries = stmt
                .query_map([&id], |r| {
                    Ok(DeliveryRecord {
                        destination: r.get(0)?,
                        kind: r.get(1)?,
                        state: r.get(2)?,
                        attempts: r.get(3)?,
                        next_attempt_at: ts(r.get(4)?),
                        last_error: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(Details {
                message,
                body: Bytes::from(body.unwrap_or_default()),
                out_headers: out_headers.map(|h| parse_headers(Some(h))),
                out_body: out_body.map(Bytes::from),
                transitions,
                deliveries,
            }))
        })
        .await
    }

    async fn replay(&self, id: Uuid, destination: Option<&str>) -> StoreResult<String> {
        let id = id.to_string();
        let destination = destination.map(str::to_string);
        let result = self
            .write(move |conn| {
                let now = millis(SystemTime::now());
                let state: Option<String> = conn
                    .prepare_cached("SELECT state FROM messages WHERE id = ?1")?
                    .query_row([&id], |r| r.get(0))
                    .optional()?;
                let Some(state) = state else {
                    return Ok(Err(format!("no message {id}")));
                };
                match &destination {
                    Some(dest) => {
                        let n = conn
                            .prepare_cached(
                                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?3, last_error = NULL, updated_at = ?3,
                                 owner = NULL, lease_until = NULL WHERE message_id = ?1 AND destination = ?2 AND kind != 'replaced'",
                            )?
                            .execute(params![id, dest, now])?;
                        if n == 0 {
                            return Ok(Err(format!("message {id} has no delivery to `{dest}`")));
                        }
                        conn.prepare_cached(
                            "UPDATE messages SET state = 'delivering', updated_at = ?2 WHERE id = ?1 AND state != 'delivering'",
                        )?
                        .execute(params![id, now])?;
                        transition(conn, &id, now, "replay", Some(dest), "pending", None, Some(&format!("re-delivery requested (was {state})")))?;
                        Ok(Ok(format!("message {id}: delivery to {dest} is pending again")))
                    }
                    None => {
                        if state == "received" {
                            return Ok(Err(format!("message {id} is still waiting for its steps")));
                        }
                        conn.prepare_cached(
                            "UPDATE messages SET state = 'received', attempts = 0, next_attempt_at = ?2,
                             error = NULL, out_headers = NULL, out_body = NULL, updated_at = ?2, owner = NULL, lease_until = NULL
                             WHERE id = ?1",
                        )?
                        .execute(params![id, now])?;
                        // Old deliveries stay as history; pending ones would be sent twice.
                        conn.prepare_cached(
                            "UPDATE deliveries SET state = 'dead', last_error = 'replaced by a replay', updated_at = ?2
                             WHERE message_id = ?1 AND state = 'pending'",
                        )?
                        .execute(params![id, now])?;
                        // They no longer decide its state: the new run's deliveries do.
                        conn.prepare_cached(
                            "UPDATE deliveries SET kind = 'replaced' WHERE message_id = ?1 AND kind = 'main'",
                        )?
                        .execute(params![id])?;
                        transition(conn, &id, now, "replay", None, "received", None, Some(&format!("reprocess requested (was {state})")))?;
                        Ok(Ok(format!("message {id}: queued to run through the route again (was {state})")))
                    }
                }
            })
            .await?;
        result.map_err(StoreError)
    }
}

/// A route's delivered messages from id ?2 on: all of them (`messages_route_id`) less the others
/// (`messages_route_state`). Without statistics SQLite would count the others in
/// `messages_route_id` too, looking up every delivered message's row for its state: hence
/// `INDEXED BY`.
pub(super) const COUNT_DELIVERED: &str =
    "SELECT (SELECT COUNT(*) FROM messages WHERE route = ?1 AND id >= ?2)
          - (SELECT COUNT(*) FROM messages INDEXED BY messages_route_state
             WHERE route = ?1 AND id >= ?2 AND state <> 'delivered')";

/// A route's messages in state ?2 (not delivered) from id ?3 on.
pub(super) const COUNT_STATE: &str = "SELECT COUNT(*) FROM messages
     WHERE route = ?1 AND state = ?2 AND state <> 'delivered' AND id >= ?3";

/// A route's messages in `state` (from the message id `first` on): a state index's range, or
/// for the delivered — who are not in the state indexes — the route's messages less the others.
fn count_route(
    conn: &Connection,
    route: &str,
    state: MessageState,
    first: Option<&str>,
) -> rusqlite::Result<u64> {
    let first = first.unwrap_or("");
    let n: i64 = if state == MessageState::Delivered {
        conn.prepare_cached(COUNT_DELIVERED)?
            .query_row(params![route, first], |r| r.get(0))?
    } else {
        conn.prepare_cached(COUNT_STATE)?
            .query_row(params![route, state.as_str(), first], |r| r.get(0))?
    };
    Ok(n as u64)
}
