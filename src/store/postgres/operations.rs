//! What operators need of the PostgreSQL store: look-ups, search, a message's record, replay
//! (see [`crate::store::Operations`]).

use super::*;

#[async_trait]
impl Operations for PgStore {
    async fn queues(&self) -> StoreResult<Vec<Queue>> {
        let db = self.reader().await?;
        // Each reads the destination's pending entries in `deliveries_pending` (route,
        // destination, id): the lowest id is the oldest delivery.
        let rows = db
            .query(
                "SELECT d.route, d.destination, COUNT(*),
                        (SELECT m.received_at FROM messages m WHERE m.id = (SELECT f.message_id FROM deliveries f WHERE f.id = MIN(d.id))),
                        (SELECT e.last_error FROM deliveries e WHERE e.route = d.route AND e.destination = d.destination
                           AND e.state = 'pending' AND e.last_error IS NOT NULL ORDER BY e.updated_at DESC LIMIT 1),
                        ARRAY(SELECT DISTINCT o.owner FROM deliveries o WHERE o.route = d.route
                           AND o.destination = d.destination AND o.state = 'pending' AND o.owner IS NOT NULL)
                 FROM deliveries d WHERE d.state = 'pending' GROUP BY d.route, d.destination",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| Queue {
                route: r.get(0),
                destination: r.get(1),
                depth: r.get::<_, i64>(2) as u64,
                oldest: r.get::<_, Option<i64>>(3).map(from_millis),
                last_error: r.get(4),
                claimed_by: r.get(5),
            })
            .collect())
    }

    async fn count_in_state(
        &self,
        routes: &[String],
        state: MessageState,
    ) -> StoreResult<Vec<(String, u64)>> {
        let db = self.reader().await?;
        let rows = db
            .query(
                "SELECT r.route, (SELECT COUNT(*) FROM messages m WHERE m.route = r.route AND m.state = $2)
                 FROM unnest($1::TEXT[]) AS r(route)",
                &[&routes, &state.as_str()],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn counts_since(
        &self,
        routes: &[String],
        since: SystemTime,
    ) -> StoreResult<BTreeMap<(String, MessageState), u64>> {
        let db = self.reader().await?;
        let first = plan::first_id_at(since);
        let rows = db
            .query(
                "SELECT r.route, s.state, (SELECT COUNT(*) FROM messages m WHERE m.route = r.route AND m.state = s.state AND m.id >= $3)
                 FROM unnest($1::TEXT[]) AS r(route), unnest($2::TEXT[]) AS s(state)",
                &[&routes, &MessageState::ALL.map(MessageState::as_str).to_vec(), &first],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let n = r.get::<_, i64>(2) as u64;
                let state = MessageState::parse(r.get(1))?;
                (n > 0).then(|| ((r.get::<_, String>(0), state), n))
            })
            .collect())
    }

    async fn search(&self, f: &Search) -> StoreResult<Vec<StoredMessage>> {
        let mut sql = format!("SELECT {STORED_COLUMNS} FROM messages WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut arg = |v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            format!("${}", args.len())
        };
        for c in plan::search(f) {
            let cond = match c {
                plan::Condition::Field(name, value) => format!(
                    "id IN (SELECT message_id FROM message_index WHERE name = {} AND value = {})",
                    arg(Box::new(name.to_string())),
                    arg(Box::new(value.to_string()))
                ),
                plan::Condition::Route(route) => {
                    format!("route = {}", arg(Box::new(route.to_string())))
                }
                plan::Condition::State(state) => format!("state = {}", arg(Box::new(state))),
                plan::Condition::Since(id, ms) => format!(
                    "id >= {} AND received_at >= {}",
                    arg(Box::new(id)),
                    arg(Box::new(ms))
                ),
                plan::Condition::Until(id, ms) => format!(
                    "id <= {} AND received_at <= {}",
                    arg(Box::new(id)),
                    arg(Box::new(ms))
                ),
                plan::Condition::Ids(lo, hi) => format!(
                    "id >= {} AND id <= {}",
                    arg(Box::new(lo)),
                    arg(Box::new(hi))
                ),
                plan::Condition::Before(id) => format!("id < {}", arg(Box::new(id))),
                plan::Condition::Parent(id) => format!("parent_id = {}", arg(Box::new(id))),
                plan::Condition::Error(t) => format!(
                    "strpos(COALESCE(error, ''), {}) > 0",
                    arg(Box::new(t.to_string()))
                ),
                plan::Condition::Text(t) => {
                    let (text, bytes) = (
                        arg(Box::new(t.to_string())),
                        arg(Box::new(t.as_bytes().to_vec())),
                    );
                    format!(
                        "(strpos(headers, {text}) > 0 OR position({bytes}::BYTEA in COALESCE(body, ''::BYTEA)) > 0
                          OR strpos(COALESCE(out_headers, ''), {text}) > 0 OR position({bytes}::BYTEA in COALESCE(out_body, ''::BYTEA)) > 0)"
                    )
                }
            };
            sql.push_str(" AND ");
            sql.push_str(&cond);
        }
        let limit = arg(Box::new(f.limit.max(1) as i64));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let db = self.reader().await?;
        let rows = db.query(&sql, &params).await.map_err(pg_err)?;
        Ok(rows.iter().map(stored_row).collect())
    }

    async fn details(&self, id: Uuid) -> StoreResult<Option<Details>> {
        let db = self.reader().await?;
        let Some(row) = db
            .query_opt(
                &format!("SELECT {STORED_COLUMNS}, body, out_headers, out_body FROM messages WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let message = stored_row(&row);
        let body: Option<Vec<u8>> = row.get(8);
        let out_headers: Option<String> = row.get(9);
        let out_body: Option<Vec<u8>> = row.get(10);
        let ts = |ms: i64| humantime::format_rfc3339_millis(from_millis(ms)).to_string();
        let transitions = db
            .query(
                "SELECT at, event, name, outcome, duration_us, detail FROM transitions WHERE message_id = $1 ORDER BY id",
                &[&id],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| TransitionRecord {
                at: ts(r.get(0)),
                event: r.get(1),
                name: r.get(2),
                outcome: r.get(3),
                duration_us: r.get(4),
                detail: r.get(5),
            })
            .collect();
        let deliveries = db
            .query(
                "SELECT destination, kind, state, attempts, next_attempt_at, last_error FROM deliveries WHERE message_id = $1 ORDER BY id",
                &[&id],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| DeliveryRecord {
                destination: r.get(0),
                kind: r.get(1),
                state: r.get(2),
                attempts: r.get::<_, i32>(3).max(0) as u32,
                next_attempt_at: ts(r.get(4)),
                last_error: r.get(5),
            })
            .collect();
        Ok(Some(Details {
            message,
            body: Bytes::from(body.unwrap_or_default()),
            out_headers: out_headers.map(|h| parse_headers(Some(h))),
            out_body: out_body.map(Bytes::from),
            transitions,
            deliveries,
        }))
    }

    async fn replay(&self, id: Uuid, destination: Option<&str>) -> StoreResult<String> {
        let destination = destination.map(str::to_string);
        let result = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                let Some(row) = db
                    .query_opt("SELECT state FROM messages WHERE id = $1 FOR UPDATE", &[&id])
                    .await?
                else {
                    return Ok(Err(format!("no message {id}")));
                };
                let state: String = row.get(0);
                match destination {
                    Some(dest) => {
                        let n = db
                            .execute(
                                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $3, last_error = NULL,
                                 updated_at = $3, owner = NULL, lease_until = NULL WHERE message_id = $1 AND destination = $2 AND kind != 'replaced'",
                                &[&id, &dest, &now],
                            )
                            .await?;
                        if n == 0 {
                            return Ok(Err(format!("message {id} has no delivery to `{dest}`")));
                        }
                        db.execute(
                            "UPDATE messages SET state = 'delivering', updated_at = $2 WHERE id = $1 AND state <> 'delivering'",
                            &[&id, &now],
                        )
                        .await?;
                        transition(&db, id, now, "replay", Some(&dest), "pending", None, Some(&format!("re-delivery requested (was {state})"))).await?;
                        Ok(Ok(format!("message {id}: delivery to {dest} is pending again")))
                    }
                    None => {
                        if state == "received" {
                            return Ok(Err(format!("message {id} is still waiting for its steps")));
                        }
                        db.execute(
                            "UPDATE messages SET state = 'received', attempts = 0, next_attempt_at = $2,
                             error = NULL, out_headers = NULL, out_body = NULL, updated_at = $2, owner = NULL, lease_until = NULL
                             WHERE id = $1",
                            &[&id, &now],
                        )
                        .await?;
                        // Old deliveries stay as history; pending ones would be sent twice.
                        db.execute(
                            "UPDATE deliveries SET state = 'dead', last_error = 'replaced by a replay', updated_at = $2
                             WHERE message_id = $1 AND state = 'pending'",
                            &[&id, &now],
                        )
                        .await?;
                        // They no longer decide its state: the new run's deliveries do.
                        db.execute(
                            "UPDATE deliveries SET kind = 'replaced' WHERE message_id = $1 AND kind = 'main'",
                            &[&id],
                        )
                        .await?;
                        transition(&db, id, now, "replay", None, "received", None, Some(&format!("reprocess requested (was {state})"))).await?;
                        Ok(Ok(format!("message {id}: queued to run through the route again (was {state})")))
                    }
                }
            })
            .await?;
        result.map_err(StoreError)
    }
}
