//! Keeping the SQLite store bounded: retention and reclaiming space (see
//! [`crate::store::Maintenance`]).

use super::*;

/// The first id made at `cutoff` (unix ms): a message last changed before it arrived before
/// it, so age limits read the route's oldest messages in `messages_route_id` up to this id
/// instead of an index of update times, which every change of state would have to move.
fn before(cutoff: i64) -> String {
    plan::first_id_at(from_millis(cutoff)).to_string()
}

#[async_trait]
impl Maintenance for SqliteStore {
    async fn prune(&self, route: &str, policy: &Retention, batch: usize) -> StoreResult<Pruned> {
        let route = route.to_string();
        let policy = policy.clone();
        let batch = batch.max(1) as i64;
        self.write(move |conn| {
            let now = millis(SystemTime::now());
            const FINISHED: &str = "state IN ('delivered','failed','filtered','unrouted','split','dead','duplicate','aggregated')
                AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id AND d.state = 'pending')";
            let mut doomed: Vec<String> = Vec::new();
            if let Some(age) = policy.max_age {
                let cutoff = now - age.0.as_millis() as i64;
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT id FROM messages WHERE route = ?1 AND id < ?4 AND updated_at < ?2 AND {FINISHED} ORDER BY id LIMIT ?3"
                ))?;
                doomed.extend(stmt.query_map(params![route, cutoff, batch, before(cutoff)], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?);
            }
            if let Some(max) = policy.max_messages {
                let room = batch - doomed.len() as i64;
                if room > 0 {
                    let mut stmt = conn.prepare_cached(&format!(
                        "SELECT id FROM messages WHERE route = ?1 AND {FINISHED}
                         AND id < (SELECT MIN(id) FROM (SELECT id FROM messages WHERE route = ?1 AND {FINISHED} ORDER BY id DESC LIMIT ?2))
                         ORDER BY id LIMIT ?3"
                    ))?;
                    for id in stmt.query_map(params![route, max as i64, room], |r| r.get::<_, String>(0))? {
                        let id = id?;
                        if !doomed.contains(&id) {
                            doomed.push(id);
                        }
                    }
                }
            }
            if let Some(max) = policy.max_bytes {
                let room = batch - doomed.len() as i64;
                let used: i64 = conn
                    .prepare_cached(
                        "SELECT COALESCE(SUM(COALESCE(length(body), 0) + COALESCE(length(out_body), 0)), 0)
                         FROM messages WHERE route = ?1",
                    )?
                    .query_row([&route], |r| r.get(0))?;
                if room > 0 && used as u64 > max.0 {
                    // Oldest first, until enough is freed (at most one batch per call).
                    let mut over = used as u64 - max.0;
                    let mut stmt = conn.prepare_cached(&format!(
                        "SELECT id, COALESCE(length(body), 0) + COALESCE(length(out_body), 0) FROM messages
                         WHERE route = ?1 AND {FINISHED} ORDER BY id LIMIT ?2"
                    ))?;
                    for row in stmt.query_map(params![route, room], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                        let (id, size) = row?;
                        if over == 0 {
                            break;
                        }
                        over = over.saturating_sub(size.max(0) as u64);
                        if !doomed.contains(&id) {
                            doomed.push(id);
                        }
                    }
                }
            }
            for id in &doomed {
                conn.prepare_cached("DELETE FROM transitions WHERE message_id = ?1")?.execute([id])?;
                conn.prepare_cached("DELETE FROM deliveries WHERE message_id = ?1")?.execute([id])?;
                conn.prepare_cached("DELETE FROM message_index WHERE message_id = ?1")?.execute([id])?;
                conn.prepare_cached("DELETE FROM messages WHERE id = ?1")?.execute([id])?;
            }
            let mut bodies = 0;
            if let Some(age) = policy.body_max_age {
                let cutoff = now - age.0.as_millis() as i64;
                bodies = conn
                    .prepare_cached(&format!(
                        "UPDATE messages SET body = NULL, out_body = NULL WHERE id IN (
                           SELECT id FROM messages WHERE route = ?1 AND id < ?4 AND updated_at < ?2 AND {FINISHED}
                           AND (body IS NOT NULL OR out_body IS NOT NULL) ORDER BY id LIMIT ?3)"
                    ))?
                    .execute(params![route, cutoff, batch, before(cutoff)])? as u64;
            }
            Ok(Pruned {
                deleted: doomed.len() as u64,
                bodies,
            })
        })
        .await
    }

    async fn reclaim(&self, pages: u32) -> StoreResult<u64> {
        let freed = self
            .write(move |conn| {
                let before: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                conn.execute_batch(&format!("PRAGMA incremental_vacuum({pages})"))?;
                let after: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                Ok((before - after).max(0) as u64)
            })
            .await?;
        if freed > 0 {
            // The file itself shrinks when the WAL is checkpointed into it; do it now rather
            // than at the next automatic checkpoint. (Outside the writer's transaction.)
            self.read(|conn| conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())))
                .await?;
        }
        Ok(freed)
    }

    async fn check(&self, full: bool) -> StoreResult<Vec<String>> {
        let path = self.path.clone();
        let checked = tokio::task::spawn_blocking(move || integrity::check_file(&path, full, None))
            .await
            .map_err(sql_err)??;
        match checked {
            Checked::Damaged(problems) => {
                self.damage.set(integrity::report(
                    &self.path,
                    &problems,
                    integrity::WRITES_STOPPED,
                ));
                Ok(problems)
            }
            Checked::Sound | Checked::Unfinished => Ok(Vec::new()),
        }
    }

    fn damaged(&self) -> Option<String> {
        self.damage.get()
    }
}
