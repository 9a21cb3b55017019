//! What operators need of the PostgreSQL store: look-ups, search, a message's record, replay
//! (see [`crate::store::Operations`]).

use super::*;

#[async_trait]
impl Operations for PgStore {
    async fn pending_deliveries(&self) -> StoreResult<Vec<(String, String, u64)>> {
        let db = self.reader().await?;
        let rows = db
            .query(
                "SELECT route, destination, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY route, destination",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64))
            .collect())
    }

    async fn message(&self, id: Uuid) -> StoreResult<Option<StoredMessage>> {
        let db = self.reader().await?;
        let row = db
            .query_opt(
                &format!("SELECT {STORED_COLUMNS} FROM messages WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.as_ref().map(stored_row))
    }

    async fn count_by_state(
        &self,
        route: Option<&str>,
    ) -> StoreResult<BTreeMap<MessageState, u64>> {
        let db = self.reader().await?;
        let rows = db
            .query(
                "SELECT state, COUNT(*) FROM messages WHERE $1::TEXT IS NULL OR route = $1 GROUP BY state",
                &[&route],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let state: String = r.get(0);
                MessageState::parse(&state).map(|s| (s, r.get::<_, i64>(1) as u64))
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
                                 updated_at = $3, owner = NULL, lease_until = NULL WHERE message_id = $1 AND destination = $2",
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
                            "UPDATE messages SET state = 'received', resume_step = 0, attempts = 0, next_attempt_at = $2,
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
                        transition(&db, id, now, "replay", None, "received", None, Some(&format!("reprocess requested (was {state})"))).await?;
                        Ok(Ok(format!("message {id}: queued to run through the route again (was {state})")))
                    }
                }
            })
            .await?;
        result.map_err(StoreError)
    }
}
