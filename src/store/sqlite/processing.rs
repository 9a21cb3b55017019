//! What the engine needs of the SQLite store: intake, the steps' outcome, attempts, claims
//! and leases (see [`crate::store::Processing`]).

use super::*;

#[async_trait]
impl Processing for SqliteStore {
    async fn insert(&self, batch: Vec<Insert>) -> StoreResult<()> {
        let held: Vec<Uuid> = batch
            .iter()
            .filter(|i| i.state == MessageState::Received && !i.scheduled)
            .map(|i| i.msg.id)
            .collect();
        let (node, lease) = self.claim_args();
        let result = self
            .write(move |conn| {
                let now = millis(SystemTime::now());
                batch.iter().try_for_each(|ins| {
                    // This node processes what it stored itself: held from the start.
                    let held = ins.state == MessageState::Received && !ins.scheduled;
                    insert_one(conn, ins, held, now, &node, lease)
                })
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
            .write(move |conn| {
                let now = millis(SystemTime::now());
                match first_with_keys(conn, &ins.msg.route, &keys)? {
                    None => insert_one(conn, &ins, held, now, &node, lease).map(|_| None),
                    Some((first, key)) => {
                        let dup = duplicate_of(ins.clone(), &first, key);
                        insert_one(conn, &dup, false, now, &node, lease)?;
                        Ok(Uuid::parse_str(&first).ok())
                    }
                }
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
            .write(move |conn| {
                let now = millis(SystemTime::now());
                if let Some((first, key)) = first_with_keys(conn, &ins.msg.route, &keys)? {
                    let dup = duplicate_of(ins.clone(), &first, key);
                    insert_one(conn, &dup, false, now, &node, lease)?;
                    return Ok(Stored::Duplicate {
                        first: parse_id(&first)?,
                    });
                }
                let (changes, state) = plan::processed_message(&ins, &steps, &result);
                let held = apply_all(conn, &changes, now, &node, lease)?;
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
            .write(move |conn| {
                let now = millis(SystemTime::now());
                // Another node that took the message over (this one's lease ran out) records
                // it; and a message processed already is not recorded twice.
                let route: Option<String> = conn
                    .prepare_cached(
                        "UPDATE messages SET owner = NULL, lease_until = NULL
                         WHERE id = ?1 AND state = 'received' AND (owner IS NULL OR owner = ?2) RETURNING route",
                    )?
                    .query_row(params![id.to_string(), &node], |r| r.get(0))
                    .optional()?;
                let Some(route) = route else {
                    return Ok(None);
                };
                let (changes, state) = plan::steps_outcome(id, &route, &steps, &result, true);
                apply_all(conn, &changes, now, &node, lease)?;
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
            .write(move |conn| {
                let now = millis(SystemTime::now());
                let ended = record_all(conn, &attempts, now, &node, lease)?;
                let due = match &claim {
                    Some(c) => claim_due(conn, c, &node, lease)?,
                    None => Vec::new(),
                };
                Ok((ended, due))
            })
            .await
            .map(|(ended, due)| Recorded {
                ended,
                due: due
                    .into_iter()
                    .map(|(mut d, headers)| {
                        d.message.headers = parse_headers(headers);
                        d
                    })
                    .collect(),
            });
        self.in_hand.recorded(&recorded, &result);
        result
    }

    async fn claim_received(&self, route: &str, limit: usize) -> StoreResult<Vec<Pending>> {
        let route = route.to_string();
        let (node, lease) = self.claim_args();
        self.write(move |conn| {
            let now = millis(SystemTime::now());
            let mut stmt = conn.prepare_cached(&format!("{SELECT_PENDING}{RECEIVED}"))?;
            let taken: Vec<Pending> = stmt
                .query_map(params![route, now, limit as i64], pending_row)?
                .collect::<rusqlite::Result<_>>()?;
            let mut claim = conn
                .prepare_cached("UPDATE messages SET owner = ?2, lease_until = ?3 WHERE id = ?1")?;
            for p in &taken {
                claim.execute(params![p.msg.id.to_string(), node, now + lease])?;
            }
            Ok(taken)
        })
        .await
        .inspect(|taken| self.in_hand.take_messages(taken.iter().map(|p| p.msg.id)))
    }

    async fn release(&self, ids: Vec<Uuid>) -> StoreResult<()> {
        self.in_hand.drop_messages(&ids);
        let (node, _) = self.claim_args();
        let result = self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE messages SET owner = NULL, lease_until = NULL WHERE id = ?1 AND owner = ?2 AND state = 'received'",
            )?;
            for id in &ids {
                stmt.execute(params![id.to_string(), node])?;
            }
            Ok(())
        })
        .await;
        result
    }

    async fn release_deliveries(&self, ids: Vec<i64>) -> StoreResult<()> {
        self.in_hand.drop_deliveries(&ids);
        let (node, _) = self.claim_args();
        let result = self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE deliveries SET owner = NULL, lease_until = NULL WHERE id = ?1 AND owner = ?2 AND state = 'pending'",
            )?;
            for id in &ids {
                stmt.execute(params![id, node])?;
            }
            Ok(())
        })
        .await;
        result
    }

    async fn hold(&self, route: &str, name: &str) -> StoreResult<bool> {
        let (route, name) = (route.to_string(), name.to_string());
        let (node, lease) = self.claim_args();
        self.write(move |conn| {
            let now = millis(SystemTime::now());
            take_lease(conn, &route, &name, &node, now, lease)
        })
        .await
    }

    async fn renew_leases(&self) -> StoreResult<()> {
        let (node, lease) = self.claim_args();
        let (messages, deliveries) = self.in_hand.snapshot();
        self.write(move |conn| {
            let until = millis(SystemTime::now()) + lease;
            let mut renew = conn.prepare_cached(
                "UPDATE messages SET lease_until = ?3 WHERE id = ?1 AND owner = ?2 AND state = 'received'",
            )?;
            for id in &messages {
                renew.execute(params![id.to_string(), node, until])?;
            }
            let mut renew = conn.prepare_cached(
                "UPDATE deliveries SET lease_until = ?3 WHERE id = ?1 AND owner = ?2 AND state = 'pending'",
            )?;
            for id in &deliveries {
                renew.execute(params![id, node, until])?;
            }
            conn.prepare_cached("UPDATE destination_leases SET lease_until = ?2 WHERE owner = ?1 AND destination <> ?3")?
                .execute(params![node, until, INBOUND_LEASE])?;
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
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(&format!("{SELECT_PENDING}{SCHEDULED}"))?;
            let taken: Vec<Pending> = stmt
                .query_map(params![route, now, limit as i64], pending_row)?
                .collect::<rusqlite::Result<_>>()?;
            let mut unschedule = conn.prepare_cached(
                "UPDATE messages SET next_attempt_at = NULL, owner = ?2, lease_until = ?3 WHERE id = ?1",
            )?;
            for p in &taken {
                unschedule.execute(params![p.msg.id.to_string(), node, now + lease])?;
            }
            Ok(taken)
        })
        .await
        .inspect(|taken| self.in_hand.take_messages(taken.iter().map(|p| p.msg.id)))
    }

    async fn position(&self, route: &str, name: &str) -> StoreResult<Option<String>> {
        let (route, name) = (route.to_string(), name.to_string());
        self.read(move |conn| {
            conn.prepare_cached("SELECT value FROM positions WHERE route = ?1 AND name = ?2")?
                .query_row([route, name], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn next_scheduled(&self, route: &str) -> StoreResult<Option<SystemTime>> {
        let route = route.to_string();
        self.read(move |conn| {
            let next: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(next_attempt_at) FROM messages
                     WHERE route = ?1 AND state = 'received' AND next_attempt_at IS NOT NULL",
                )?
                .query_row([route], |r| r.get(0))?;
            Ok(next.map(from_millis))
        })
        .await
    }

    async fn oldest_pending(
        &self,
        route: &str,
        destination: &str,
    ) -> StoreResult<Option<Delivery>> {
        let route = route.to_string();
        let destination = destination.to_string();
        let head = |conn: &Connection, route: &str, destination: &str| {
            conn.prepare_cached(&format!("{SELECT_DELIVERY}{HEAD}"))?
                .query_row(params![route, destination], |r| {
                    delivery_row(r, route, destination)
                })
                .optional()
        };
        if self.held.fresh(&route, &destination) {
            return self
                .read(move |conn| head(conn, &route, &destination))
                .await;
        }
        let (node, lease) = self.claim_args();
        let (r, d) = (route.clone(), destination.clone());
        let (held, first) = self
            .write(move |conn| {
                let now = millis(SystemTime::now());
                if !take_lease(conn, &r, &d, &node, now, lease)? {
                    return Ok((false, None)); // another node delivers to it now
                }
                Ok((true, head(conn, &r, &d)?))
            })
            .await?;
        if held {
            self.held.took(&route, &destination, self.claims.lease);
        }
        Ok(first)
    }

    async fn next_due(&self, route: &str, destination: &str) -> StoreResult<Option<SystemTime>> {
        let route = route.to_string();
        let destination = destination.to_string();
        self.read(move |conn| {
            let next: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0))) FROM deliveries
                     WHERE route = ?1 AND destination = ?2 AND state = 'pending'",
                )?
                .query_row(params![route, destination], |r| r.get(0))?;
            Ok(next.map(from_millis))
        })
        .await
    }

    async fn take_groups(&self, route: &str, now: SystemTime, limit: usize) -> StoreResult<Groups> {
        let route = route.to_string();
        let now = millis(now);
        let (node, lease) = self.claim_args();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE aggregates SET open_key = NULL,
                   completed_by = CASE WHEN timeout_at IS NOT NULL AND timeout_at <= ?2 THEN 'timeout' ELSE 'idle' END
                 WHERE route = ?1 AND open_key IS NOT NULL AND due_at <= ?2",
            )?
            .execute(params![route, now])?;
            let claimed: Vec<(String, String, String)> = conn
                .prepare_cached(
                    "UPDATE aggregates SET owner = ?3, lease_until = ?2 + ?4
                     WHERE group_id IN (
                       SELECT group_id FROM aggregates
                       WHERE route = ?1 AND open_key IS NULL
                         AND (owner IS NULL OR owner = ?3 OR lease_until < ?2)
                       ORDER BY due_at LIMIT ?5)
                     RETURNING group_id, key, completed_by",
                )?
                .query_map(params![route, now, node, lease, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut ready = Vec::with_capacity(claimed.len());
            let mut members = conn.prepare_cached(
                "SELECT m.id, m.route, COALESCE(m.out_headers, m.headers), COALESCE(m.out_body, m.body), m.received_at
                 FROM message_index i JOIN messages m ON m.id = i.message_id
                 WHERE i.name = ?1 AND i.value = ?2 ORDER BY m.id",
            )?;
            for (group, key, completed_by) in claimed {
                let members = members
                    .query_map(params![plan::GROUP_FIELD, group], |r| {
                        Ok(Message {
                            id: parse_id(&r.get::<_, String>(0)?)?,
                            route: r.get(1)?,
                            headers: parse_headers(r.get(2)?),
                            body: Bytes::from(r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default()),
                            received_at: from_millis(r.get(4)?),
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                ready.push(Group {
                    id: parse_id(&group)?,
                    key,
                    completed_by,
                    members,
                });
            }
            let next_due: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(due_at) FROM aggregates WHERE route = ?1 AND open_key IS NOT NULL",
                )?
                .query_row([&route], |r| r.get(0))?;
            Ok(Groups {
                ready,
                next_due: next_due.map(from_millis),
            })
        })
        .await
    }

    async fn emit_group(&self, group: Uuid, combined: Insert) -> StoreResult<bool> {
        let (node, lease) = self.claim_args();
        self.write(move |conn| {
            let now = millis(SystemTime::now());
            let ended = conn
                .prepare_cached(
                    "DELETE FROM aggregates WHERE group_id = ?1 AND owner = ?2 AND open_key IS NULL
                     RETURNING members, key, completed_by",
                )?
                .query_row(params![group.to_string(), node], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    ))
                })
                .optional()?;
            let Some((members, key, by)) = ended else {
                return Ok(false);
            };
            apply_all(
                conn,
                &plan::emitted(&combined, members, &key, &by),
                now,
                &node,
                lease,
            )?;
            Ok(true)
        })
        .await
    }

    async fn annotate(&self, id: Uuid, state: MessageState, text: &str) -> StoreResult<()> {
        let (id, text) = (id.to_string(), text.to_string());
        self.write(move |conn| {
            let now = millis(SystemTime::now());
            set_state(conn, &id, now, state, Some(&text))?;
            transition(
                conn,
                &id,
                now,
                "state",
                None,
                state.as_str(),
                None,
                Some(&text),
            )
        })
        .await
    }

    async fn close(&self) -> StoreResult<()> {
        // Dropping the last sender ends the writer loop once it has committed what it holds.
        drop(self.jobs.lock().map_err(|_| closed())?.take());
        let handle = self.writer.lock().map_err(|_| closed())?.take();
        if let Some(h) = handle {
            tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(sql_err)?
                .map_err(|_| StoreError("the writer thread panicked".into()))?;
        }
        if let Ok(reader) = self.reader.lock() {
            self.damage.seal(&reader);
        }
        if let Ok(mut l) = self.lock.lock() {
            l.take();
        }
        Ok(())
    }
}

/// The main deliveries still open and those dead, of each message in a JSON array of ids.
pub(super) const COUNT_OPEN: &str =
    "SELECT message_id, SUM(state = 'pending'), SUM(state = 'dead') FROM deliveries
     WHERE message_id IN (SELECT value FROM json_each(?1)) AND kind = 'main'
     GROUP BY message_id";

/// A route's received messages whose steps have not run and no live claim holds, oldest first.
/// The repeated state term lets SQLite read the state index (see `schema::NOT_DELIVERED`).
pub(super) const RECEIVED: &str =
    " WHERE route = ?1 AND state = 'received' AND state <> 'delivered'
     AND next_attempt_at IS NULL AND (owner IS NULL OR lease_until < ?2) ORDER BY id LIMIT ?3";

/// A route's received messages whose steps are scheduled to run again by now, soonest first.
pub(super) const SCHEDULED: &str = " WHERE route = ?1 AND state = 'received' AND state <> 'delivered'
     AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?2 ORDER BY next_attempt_at, id LIMIT ?3";

/// Messages (a JSON array of ids) whose deliveries are over, to their final state ?2: see
/// [`Change::Final`]. `OR FAIL`, as every statement of several rows here: no statement
/// journal (see [`insert_lines`]).
pub(super) const END_MESSAGES: &str = "UPDATE OR FAIL messages SET state = ?2, updated_at = ?3,
     error = CASE WHEN ?2 = 'delivered' THEN NULL ELSE error END
     WHERE id IN (SELECT value FROM json_each(?1))";

/// Deliveries (a JSON array of ids) claimed by node ?2 until ?3.
pub(super) const CLAIM_ROWS: &str = "UPDATE OR FAIL deliveries SET owner = ?2, lease_until = ?3
     WHERE id IN (SELECT value FROM json_each(?1))";

/// Ids as one JSON array, bound as one parameter and read back by `json_each` in the
/// statements above (a message id as its text, as the tables keep it).
fn id_list<T: serde::Serialize>(ids: &[T]) -> rusqlite::Result<String> {
    serde_json::to_string(ids).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Records a batch's attempts (see [`Processing::record_and_claim`]) with a few statements
/// for the whole batch besides each delivery's own row: the history lines in multi-row
/// inserts, the open deliveries of every message whose main delivery ended counted at once,
/// and the messages that ended moved to their final state together. Per attempt, in order:
/// the message's terminal state when the attempt closed it (for a message with two attempts
/// in the batch, the later one).
fn record_all(
    conn: &Connection,
    attempts: &[Attempt],
    now: i64,
    node: &str,
    lease: i64,
) -> rusqlite::Result<Vec<Option<MessageState>>> {
    let mut row_update = conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, attempts = ?3, next_attempt_at = ?4, last_error = ?5, updated_at = ?6,
         owner = NULL, lease_until = NULL WHERE id = ?1 RETURNING kind, route",
    )?;
    let mut lines = Vec::with_capacity(attempts.len() * 2);
    // Attempts that ended a main delivery, with the route the delivery named.
    let mut ended_main: Vec<(usize, String)> = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        let (row, line) = plan::attempt(a);
        let ended: Option<(String, String)> = row_update
            .query_row(
                params![
                    a.delivery,
                    row.state,
                    a.number,
                    row.next_attempt_at.map(millis).unwrap_or(now),
                    row.error,
                    now
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        lines.push(line);
        // Copies (dead letter, wire tap) never change the message's state.
        if let Some((kind, route)) = ended {
            if row.ended() && DeliveryKind::parse(&kind) == DeliveryKind::Main {
                ended_main.push((i, route));
            }
        }
    }
    let mut ended = vec![None; attempts.len()];
    if ended_main.is_empty() {
        insert_lines(conn, &lines.iter().collect::<Vec<_>>(), now)?;
        return Ok(ended);
    }
    for (i, route) in &ended_main {
        apply_all(
            conn,
            &plan::main_delivery_ended(&attempts[*i], route),
            now,
            node,
            lease,
        )?;
    }
    // Each message once, at its last attempt in the batch.
    let mut last: Vec<(Uuid, usize)> = Vec::with_capacity(ended_main.len());
    for (i, _) in &ended_main {
        let message = attempts[*i].message;
        match last.iter_mut().find(|(m, _)| *m == message) {
            Some(seen) => seen.1 = *i,
            None => last.push((message, *i)),
        }
    }
    let ids = id_list(&last.iter().map(|(m, _)| *m).collect::<Vec<_>>())?;
    let mut counts = std::collections::HashMap::with_capacity(last.len());
    {
        let mut count = conn.prepare_cached(COUNT_OPEN)?;
        let mut rows = count.query([&ids])?;
        while let Some(r) = rows.next()? {
            counts.insert(
                r.get::<_, String>(0)?,
                (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?),
            );
        }
    }
    let mut finals: Vec<Change<'_>> = Vec::new();
    for (message, i) in &last {
        let (open, dead) = counts.get(&message.to_string()).copied().unwrap_or((0, 0));
        if let Some((changes, state)) = plan::message_ended(*message, open, dead) {
            ended[*i] = Some(state);
            finals.extend(changes);
        }
    }
    // The final rows, one statement per final state; their lines go with the attempts'.
    for state in [MessageState::Delivered, MessageState::Dead] {
        let of_state: Vec<Uuid> = finals
            .iter()
            .filter_map(|c| match c {
                Change::Final { message, state: s } if *s == state => Some(*message),
                _ => None,
            })
            .collect();
        if of_state.is_empty() {
            continue;
        }
        let of_state = id_list(&of_state)?;
        conn.prepare_cached(END_MESSAGES)?
            .execute(params![of_state, state.as_str(), now])?;
    }
    let lines: Vec<&Change<'_>> = lines
        .iter()
        .chain(
            finals
                .iter()
                .filter(|c| matches!(c, Change::Transition { .. })),
        )
        .collect();
    insert_lines(conn, &lines, now)?;
    Ok(ended)
}

/// Claims a destination's due deliveries (see [`Processing::record_and_claim`]), each with
/// its message's headers unparsed (see [`unparsed_delivery_row`]).
fn claim_due(
    conn: &Connection,
    c: &Claim,
    node: &str,
    lease: i64,
) -> rusqlite::Result<Vec<(Delivery, Option<String>)>> {
    let now = millis(c.now);
    let mut stmt = conn.prepare_cached(&format!("{SELECT_DELIVERY}{DUE}"))?;
    let mut rows = stmt.query(params![c.route, c.destination, now, c.limit as i64])?;
    let (mut due, mut bytes) = (Vec::new(), 0u64);
    // Rows are read one at a time: the bodies past `max_bytes` are never loaded.
    while bytes < c.max_bytes {
        let Some(r) = rows.next()? else { break };
        let d = unparsed_delivery_row(r, &c.route, &c.destination)?;
        bytes += d.0.message.body.len() as u64;
        due.push(d);
    }
    if !due.is_empty() {
        let ids = id_list(&due.iter().map(|(d, _)| d.id).collect::<Vec<_>>())?;
        conn.prepare_cached(CLAIM_ROWS)?
            .execute(params![ids, node, now + lease])?;
    }
    Ok(due)
}
