//! What the engine needs of the PostgreSQL store: intake, the steps' outcome, attempts, claims
//! and leases (see [`crate::store::Processing`]).

use super::*;

#[async_trait]
impl Processing for PgStore {
    async fn insert(&self, batch: Vec<Insert>) -> StoreResult<()> {
        let held: Vec<Uuid> = batch
            .iter()
            .filter(|i| i.state == MessageState::Received && !i.scheduled)
            .map(|i| i.msg.id)
            .collect();
        let (node, lease) = self.claim_args();
        let result = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                let plan: Vec<Change> = batch
                    .iter()
                    .flat_map(|ins| {
                        // This node processes what it stored itself: held from the start.
                        let held = ins.state == MessageState::Received && !ins.scheduled;
                        plan::new_message(ins, held)
                    })
                    .collect();
                apply_all(&db, &plan, now, &node, lease).await
            })
            .await;
        if result.is_ok() {
            self.in_hand.take_messages(held);
        }
        result
    }

    async fn insert_once(&self, ins: Insert, keys: Vec<Key>) -> StoreResult<Option<Uuid>> {
        let (node, lease) = self.claim_args();
        let id = ins.msg.id;
        let held = ins.state == MessageState::Received && !ins.scheduled;
        let result = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                let earlier = first_with_keys(&db, &ins.msg.route, &keys).await?;
                let (ins, held) = match &earlier {
                    None => (ins, held),
                    Some((first, key)) => (duplicate_of(ins, &first.to_string(), key), false),
                };
                let plan = plan::new_message(&ins, held);
                apply_all(&db, &plan, now, &node, lease)
                    .await
                    .map(|_| earlier.map(|(first, _)| first))
            })
            .await;
        if let Ok(None) = result {
            if held {
                self.in_hand.take_messages([id]);
            }
        }
        result
    }

    async fn insert_processed(
        &self,
        ins: Insert,
        steps: Vec<StepRecord>,
        result: Processed,
        keys: Vec<Key>,
    ) -> StoreResult<Stored> {
        let (node, lease) = self.claim_args();
        let stored = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                if let Some((first, key)) = first_with_keys(&db, &ins.msg.route, &keys).await? {
                    let dup = duplicate_of(ins, &first.to_string(), key);
                    let plan = plan::new_message(&dup, false);
                    apply_all(&db, &plan, now, &node, lease).await?;
                    return Ok(Stored::Duplicate { first });
                }
                let (changes, state) = plan::processed_message(&ins, &steps, &result);
                apply_all(&db, &changes, now, &node, lease).await?;
                let holds = changes
                    .iter()
                    .any(|c| matches!(c, Change::Delivery { held: true, .. }));
                let held = match holds {
                    // The pipelined inserts report no ids: the new message's rows held by this
                    // node are the held deliveries.
                    true => db
                        .query(
                            "SELECT destination, id FROM deliveries
                             WHERE message_id = $1 AND owner = $2 AND state = 'pending'",
                            &[&ins.msg.id, &node],
                        )
                        .await?
                        .iter()
                        .map(|r| (r.get(0), r.get(1)))
                        .collect(),
                    false => Vec::new(),
                };
                Ok(Stored::Processed(state, held))
            })
            .await;
        if let Ok(Stored::Processed(_, held)) = &stored {
            self.in_hand.take_deliveries(held.iter().map(|(_, id)| *id));
        }
        stored
    }

    async fn finish_steps(
        &self,
        id: Uuid,
        steps: Vec<StepRecord>,
        result: Processed,
    ) -> StoreResult<Option<MessageState>> {
        let (node, lease) = self.claim_args();
        let result = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                // Another node that took the message over (this one's lease ran out) records
                // it; and a message processed already is not recorded twice.
                let Some(row) = db
                    .query_opt(
                        "UPDATE messages SET owner = NULL, lease_until = NULL
                         WHERE id = $1 AND state = 'received' AND (owner IS NULL OR owner = $2) RETURNING route",
                        &[&id, &node],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                let route: String = row.get(0);
                let (changes, state) = plan::steps_outcome(id, &route, &steps, &result, true);
                apply_all(&db, &changes, now, &node, lease).await?;
                Ok(Some(state))
            })
            .await;
        self.in_hand.drop_messages([&id]);
        result
    }

    async fn record_and_claim(
        &self,
        attempts: Vec<Attempt>,
        claim: Option<Claim>,
    ) -> StoreResult<Recorded> {
        let recorded: Vec<i64> = attempts.iter().map(|a| a.delivery).collect();
        let (node, lease) = self.claim_args();
        let result = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                // Attempts of different messages travel together (one connection pipelines
                // them); two of one message (a main delivery and its dead-letter copy) go one
                // after the other, so that the second counts what the first changed.
                let distinct = attempts
                    .iter()
                    .map(|a| a.message)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
                    == attempts.len();
                let ended = if distinct {
                    futures_util::future::try_join_all(
                        attempts
                            .iter()
                            .map(|a| record_one(&db, a, now, &node, lease)),
                    )
                    .await?
                } else {
                    let mut ended = Vec::with_capacity(attempts.len());
                    for a in &attempts {
                        ended.push(record_one(&db, a, now, &node, lease).await?);
                    }
                    ended
                };
                let due = match &claim {
                    Some(c) => claim_due(&db, c, &node, lease).await?,
                    None => Vec::new(),
                };
                Ok(Recorded { ended, due })
            })
            .await;
        self.in_hand.recorded(&recorded, &result);
        result
    }

    async fn claim_received(&self, route: &str, limit: usize) -> StoreResult<Vec<Pending>> {
        let route = route.to_string();
        let (node, lease) = self.claim_args();
        let mut taken = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                let rows = db
                    .query(
                        &format!(
                            "WITH c AS (
                               SELECT id FROM messages WHERE route = $1 AND state = 'received' AND next_attempt_at IS NULL
                               AND (owner IS NULL OR lease_until < $2)
                               ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
                             UPDATE messages SET owner = $3, lease_until = $5 FROM c WHERE messages.id = c.id
                             RETURNING {PENDING_COLUMNS}"
                        ),
                        &[&route, &now, &node, &(limit as i64), &(now + lease)],
                    )
                    .await?;
                Ok(rows.iter().map(pending_row).collect::<Vec<_>>())
            })
            .await?;
        taken.sort_by_key(|p| p.msg.id);
        self.in_hand.take_messages(taken.iter().map(|p| p.msg.id));
        Ok(taken)
    }

    async fn release(&self, ids: Vec<Uuid>) -> StoreResult<()> {
        self.in_hand.drop_messages(&ids);
        let (node, _) = self.claim_args();
        let result = self
            .write(move |db| async move {
                db.execute(
                    "UPDATE messages SET owner = NULL, lease_until = NULL
                 WHERE id = ANY($1) AND owner = $2 AND state = 'received'",
                    &[&ids, &node],
                )
                .await?;
                Ok(())
            })
            .await;
        result
    }

    async fn release_deliveries(&self, ids: Vec<i64>) -> StoreResult<()> {
        self.in_hand.drop_deliveries(&ids);
        let (node, _) = self.claim_args();
        let result = self
            .write(move |db| async move {
                db.execute(
                    "UPDATE deliveries SET owner = NULL, lease_until = NULL
                 WHERE id = ANY($1) AND owner = $2 AND state = 'pending'",
                    &[&ids, &node],
                )
                .await
                .map(drop)
            })
            .await;
        result
    }

    async fn hold(&self, route: &str, name: &str) -> StoreResult<bool> {
        let (route, name) = (route.to_string(), name.to_string());
        let (node, lease) = self.claim_args();
        self.write(move |db| async move {
            let now = millis(SystemTime::now());
            take_lease(&db, &route, &name, &node, now, lease).await
        })
        .await
    }

    async fn renew_leases(&self) -> StoreResult<()> {
        let (node, lease) = self.claim_args();
        let (messages, deliveries) = self.in_hand.snapshot();
        self.write(move |db| async move {
            let until = millis(SystemTime::now()) + lease;
            db.execute(
                "UPDATE messages SET lease_until = $2 WHERE owner = $1 AND id = ANY($3) AND state = 'received'",
                &[&node, &until, &messages],
            )
            .await?;
            db.execute(
                "UPDATE deliveries SET lease_until = $2 WHERE owner = $1 AND id = ANY($3) AND state = 'pending'",
                &[&node, &until, &deliveries],
            )
            .await?;
            db.execute(
                "UPDATE destination_leases SET lease_until = $2 WHERE owner = $1 AND destination <> $3",
                &[&node, &until, &INBOUND_LEASE],
            )
            .await?;
            Ok(())
        })
        .await
    }

    fn lease(&self) -> Duration {
        self.claims.lease
    }

    async fn take_scheduled(
        &self,
        route: &str,
        now: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<Pending>> {
        let route = route.to_string();
        let now = millis(now);
        let (node, lease) = self.claim_args();
        let mut taken = self
            .write(move |db| async move {
                let rows = db
                    .query(
                        &format!(
                            "WITH c AS (
                               SELECT id FROM messages WHERE route = $1 AND state = 'received' AND next_attempt_at IS NOT NULL
                               AND next_attempt_at <= $2 ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
                             UPDATE messages SET next_attempt_at = NULL, owner = $4, lease_until = $5 FROM c WHERE messages.id = c.id
                             RETURNING {PENDING_COLUMNS}"
                        ),
                        &[&route, &now, &(limit as i64), &node, &(now + lease)],
                    )
                    .await?;
                Ok(rows.iter().map(pending_row).collect::<Vec<_>>())
            })
            .await?;
        taken.sort_by_key(|p| p.msg.id);
        self.in_hand.take_messages(taken.iter().map(|p| p.msg.id));
        Ok(taken)
    }

    async fn position(&self, route: &str, name: &str) -> StoreResult<Option<String>> {
        let db = self.reader().await?;
        let row = db
            .query_opt(
                "SELECT value FROM positions WHERE route = $1 AND name = $2",
                &[&route, &name],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn next_scheduled(&self, route: &str) -> StoreResult<Option<SystemTime>> {
        let db = self.reader().await?;
        let row = db
            .query_opt(
                "SELECT MIN(next_attempt_at) FROM messages
                 WHERE route = $1 AND state = 'received' AND next_attempt_at IS NOT NULL",
                &[&route],
            )
            .await
            .map_err(pg_err)?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(from_millis))
    }

    async fn oldest_pending(
        &self,
        route: &str,
        destination: &str,
    ) -> StoreResult<Option<Delivery>> {
        let (route, destination) = (route.to_string(), destination.to_string());
        let head_sql = format!(
            // The oldest pending delivery, unless a place before it is kept for a message still
            // in its steps (see the SQLite store's HEAD).
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id
             WHERE d.id = (SELECT id FROM deliveries WHERE route = $1 AND destination = $2
                           AND state = 'pending' ORDER BY id LIMIT 1)
             AND NOT EXISTS (SELECT 1 FROM deliveries w WHERE w.route = $1 AND w.destination = $2
                             AND w.state = 'waiting' AND w.id < d.id)"
        );
        if self.held.fresh(&route, &destination) {
            let db = self.reader().await?;
            let row = db
                .query_opt(&head_sql, &[&route, &destination])
                .await
                .map_err(pg_err)?;
            return Ok(row.map(|r| delivery_row(&r, &route, &destination)));
        }
        let (node, lease) = self.claim_args();
        let (r, d) = (route.clone(), destination.clone());
        let (held, first) = self
            .write(move |db| async move {
                let now = millis(SystemTime::now());
                if !take_lease(&db, &r, &d, &node, now, lease).await? {
                    return Ok((false, None)); // another node delivers to it now
                }
                let row = db.query_opt(&head_sql, &[&r, &d]).await?;
                Ok((true, row.map(|row| delivery_row(&row, &r, &d))))
            })
            .await?;
        if held {
            self.held.took(&route, &destination, self.claims.lease);
        }
        Ok(first)
    }

    async fn next_due(&self, route: &str, destination: &str) -> StoreResult<Option<SystemTime>> {
        let db = self.reader().await?;
        let row = db
            .query_opt(
                "SELECT MIN(GREATEST(next_attempt_at, COALESCE(lease_until, 0))) FROM deliveries
                 WHERE route = $1 AND destination = $2 AND state = 'pending'",
                &[&route, &destination],
            )
            .await
            .map_err(pg_err)?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(from_millis))
    }

    async fn take_groups(&self, route: &str, now: SystemTime, limit: usize) -> StoreResult<Groups> {
        let route = route.to_string();
        let now = millis(now);
        let (node, lease) = self.claim_args();
        self.write(move |db| async move {
            db.execute(
                "UPDATE aggregates SET open_key = NULL,
                   completed_by = CASE WHEN timeout_at IS NOT NULL AND timeout_at <= $2 THEN 'timeout' ELSE 'idle' END
                 WHERE route = $1 AND open_key IS NOT NULL AND due_at <= $2",
                &[&route, &now],
            )
            .await?;
            let claimed = db
                .query(
                    "WITH c AS (
                       SELECT group_id FROM aggregates
                       WHERE route = $1 AND open_key IS NULL
                         AND (owner IS NULL OR owner = $3 OR lease_until < $2)
                       ORDER BY due_at LIMIT $5 FOR UPDATE SKIP LOCKED)
                     UPDATE aggregates SET owner = $3, lease_until = $2 + $4 FROM c
                     WHERE aggregates.group_id = c.group_id
                     RETURNING aggregates.group_id, aggregates.key, aggregates.completed_by",
                    &[&route, &now, &node, &lease, &(limit as i64)],
                )
                .await?;
            let mut ready = Vec::with_capacity(claimed.len());
            for row in claimed {
                let id: Uuid = row.get(0);
                let members = db
                    .query(
                        "SELECT m.id, m.route, COALESCE(m.out_headers, m.headers), COALESCE(m.out_body, m.body), m.received_at
                         FROM message_index i JOIN messages m ON m.id = i.message_id
                         WHERE i.name = $1 AND i.value = $2 ORDER BY m.id",
                        &[&plan::GROUP_FIELD, &id.to_string()],
                    )
                    .await?
                    .iter()
                    .map(|r| Message {
                        id: r.get(0),
                        route: r.get(1),
                        headers: parse_headers(r.get(2)),
                        body: Bytes::from(r.get::<_, Option<Vec<u8>>>(3).unwrap_or_default()),
                        received_at: from_millis(r.get(4)),
                    })
                    .collect();
                ready.push(Group {
                    id,
                    key: row.get(1),
                    completed_by: row.get::<_, Option<String>>(2).unwrap_or_default(),
                    members,
                });
            }
            ready.sort_by_key(|g| g.id);
            let next_due: Option<i64> = db
                .query_one(
                    "SELECT MIN(due_at) FROM aggregates WHERE route = $1 AND open_key IS NOT NULL",
                    &[&route],
                )
                .await?
                .get(0);
            Ok(Groups {
                ready,
                next_due: next_due.map(from_millis),
            })
        })
        .await
    }

    async fn emit_group(&self, group: Uuid, combined: Insert) -> StoreResult<bool> {
        let (node, lease) = self.claim_args();
        self.write(move |db| async move {
            let now = millis(SystemTime::now());
            let ended = db
                .query_opt(
                    "DELETE FROM aggregates WHERE group_id = $1 AND owner = $2 AND open_key IS NULL
                     RETURNING members, key, completed_by",
                    &[&group, &node],
                )
                .await?;
            let Some(row) = ended else {
                return Ok(false);
            };
            let (key, by): (String, Option<String>) = (row.get(1), row.get(2));
            let plan = plan::emitted(&combined, row.get(0), &key, by.as_deref().unwrap_or(""));
            apply_all(&db, &plan, now, &node, lease).await?;
            Ok(true)
        })
        .await
    }

    async fn annotate(&self, id: Uuid, state: MessageState, text: &str) -> StoreResult<()> {
        let text = text.to_string();
        self.write(move |db| async move {
            let now = millis(SystemTime::now());
            set_state(&db, id, now, state, Some(&text)).await?;
            transition(
                &db,
                id,
                now,
                "state",
                None,
                state.as_str(),
                None,
                Some(&text),
            )
            .await
        })
        .await
    }

    async fn close(&self) -> StoreResult<()> {
        // Dropping the last sender ends the writer loop once it has committed what it holds.
        drop(self.jobs.lock().map_err(|_| closed())?.take());
        for h in std::mem::take(&mut *self.writers.lock().await) {
            h.await
                .map_err(|_| StoreError("the writer task failed".into()))?;
        }
        self.reader.lock().await.take();
        Ok(())
    }
}

/// Records one attempt (see [`Processing::record_and_claim`]); the message's terminal state
/// when it was the last open main delivery.
async fn record_one(
    db: &Db,
    a: &Attempt,
    now: i64,
    node: &str,
    lease: i64,
) -> PgResult<Option<MessageState>> {
    let (row, transition) = plan::attempt(a);
    let next = row.next_attempt_at.map(millis).unwrap_or(now);
    let attempts = a.number as i32;
    let args: [&(dyn ToSql + Sync); 6] =
        [&a.delivery, &row.state, &attempts, &next, &row.error, &now];
    let (ended, ()) = tokio::try_join!(
        db.query_opt(
            "UPDATE deliveries SET state = $2, attempts = $3, next_attempt_at = $4, last_error = $5, updated_at = $6,
             owner = NULL, lease_until = NULL WHERE id = $1 RETURNING kind, route",
            &args,
        ),
        apply(db, &transition, now, node, lease),
    )?;
    let Some(ended) = ended else { return Ok(None) };
    let (kind, route): (String, String) = (ended.get(0), ended.get(1));
    // Copies (dead letter, wire tap) never change the message's state.
    if !row.ended() || DeliveryKind::parse(&kind) != DeliveryKind::Main {
        return Ok(None);
    }
    // Two nodes may finish the message's last two deliveries at once: the row lock makes the
    // second wait for the first, and then count what the first committed (each statement
    // sees the latest commits), so exactly one closes the message.
    db.query_opt(
        "SELECT 1 FROM messages WHERE id = $1 FOR UPDATE",
        &[&a.message],
    )
    .await?;
    let before = plan::main_delivery_ended(a, &route);
    let of_message: [&(dyn ToSql + Sync); 1] = [&a.message];
    let (counts, ()) = tokio::try_join!(
        db.query_opt(
            "SELECT COUNT(*) FILTER (WHERE state = 'pending'), COUNT(*) FILTER (WHERE state = 'dead')
             FROM deliveries WHERE message_id = $1 AND kind = 'main'",
            &of_message,
        ),
        apply_all(db, &before, now, node, lease),
    )?;
    let (open, dead): (i64, i64) = counts.map(|r| (r.get(0), r.get(1))).unwrap_or((0, 0));
    let Some((changes, state)) = plan::message_ended(a.message, open, dead) else {
        return Ok(None);
    };
    apply_all(db, &changes, now, node, lease).await?;
    Ok(Some(state))
}

/// Claims a destination's due deliveries (see [`Processing::record_and_claim`]); rows another
/// node is claiming at this moment are skipped, not waited for. In the order of
/// `deliveries_due`, so that a claim reads its batch and no more, however long the queue.
async fn claim_due(db: &Db, c: &Claim, node: &str, lease: i64) -> PgResult<Vec<Delivery>> {
    let now = millis(c.now);
    let rows = db
        .query(
            &format!(
                "WITH c AS (
                   SELECT id FROM deliveries WHERE route = $1 AND destination = $2 AND state = 'pending'
                   AND next_attempt_at <= $3 AND (owner IS NULL OR lease_until < $3)
                   ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED),
                 -- Bytes of the bodies before each row: rows from `max_bytes` on stay unclaimed
                 -- (octet_length reads a stored body's size, not the body).
                 s AS (SELECT c.id, COALESCE(SUM(octet_length(CASE x.payload WHEN 'in' THEN m.body ELSE m.out_body END))
                         OVER (ORDER BY x.next_attempt_at, x.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
                       FROM c JOIN deliveries x ON x.id = c.id JOIN messages m ON m.id = x.message_id),
                 d AS (UPDATE deliveries SET owner = $5, lease_until = $6 FROM s
                       WHERE deliveries.id = s.id AND s.before < $7
                       RETURNING deliveries.*)
                 SELECT {DELIVERY_COLUMNS} FROM d JOIN messages m ON m.id = d.message_id
                 ORDER BY d.next_attempt_at, d.id"
            ),
            &[
                &c.route,
                &c.destination,
                &now,
                &(c.limit as i64),
                &node,
                &(now + lease),
                &(c.max_bytes.min(i64::MAX as u64) as i64),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| delivery_row(r, &c.route, &c.destination))
        .collect())
}
