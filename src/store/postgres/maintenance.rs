//! Keeping the PostgreSQL store bounded: retention and reclaiming space (see
//! [`crate::store::Maintenance`]).

use super::*;

#[async_trait]
impl Maintenance for PgStore {
    async fn prune(&self, route: &str, policy: &Retention, batch: usize) -> StoreResult<Pruned> {
        let route = route.to_string();
        let policy = policy.clone();
        let batch = batch.max(1) as i64;
        self.write(move |db| async move {
            let now = millis(SystemTime::now());
            let mut doomed: Vec<Uuid> = Vec::new();
            if let Some(age) = policy.max_age {
                let cutoff = now - age.0.as_millis() as i64;
                for r in db
                    .query(
                        &format!("SELECT id FROM messages WHERE route = $1 AND updated_at < $2 AND {FINISHED} ORDER BY id LIMIT $3"),
                        &[&route, &cutoff, &batch],
                    )
                    .await?
                {
                    doomed.push(r.get(0));
                }
            }
            if let Some(max) = policy.max_messages {
                let room = batch - doomed.len() as i64;
                if room > 0 {
                    for r in db
                        .query(
                            &format!(
                                "SELECT id FROM (SELECT id FROM messages WHERE route = $1 AND {FINISHED}
                                                 ORDER BY id DESC OFFSET $2) AS beyond
                                 ORDER BY id LIMIT $3"
                            ),
                            &[&route, &(max as i64), &room],
                        )
                        .await?
                    {
                        let id: Uuid = r.get(0);
                        if !doomed.contains(&id) {
                            doomed.push(id);
                        }
                    }
                }
            }
            if let Some(max) = policy.max_bytes {
                let room = batch - doomed.len() as i64;
                let used: i64 = db
                    .query_opt(
                        "SELECT COALESCE(SUM(COALESCE(octet_length(body), 0) + COALESCE(octet_length(out_body), 0)), 0)::BIGINT
                         FROM messages WHERE route = $1",
                        &[&route],
                    )
                    .await?
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if room > 0 && used as u64 > max.0 {
                    // Oldest first, until enough is freed (at most one batch per call).
                    let mut over = used as u64 - max.0;
                    for r in db
                        .query(
                            &format!(
                                "SELECT id, (COALESCE(octet_length(body), 0) + COALESCE(octet_length(out_body), 0))::BIGINT
                                 FROM messages WHERE route = $1 AND {FINISHED} ORDER BY id LIMIT $2"
                            ),
                            &[&route, &room],
                        )
                        .await?
                    {
                        if over == 0 {
                            break;
                        }
                        let (id, size): (Uuid, i64) = (r.get(0), r.get(1));
                        over = over.saturating_sub(size.max(0) as u64);
                        if !doomed.contains(&id) {
                            doomed.push(id);
                        }
                    }
                }
            }
            if !doomed.is_empty() {
                db.execute("DELETE FROM transitions WHERE message_id = ANY($1)", &[&doomed]).await?;
                db.execute("DELETE FROM deliveries WHERE message_id = ANY($1)", &[&doomed]).await?;
                db.execute("DELETE FROM message_index WHERE message_id = ANY($1)", &[&doomed]).await?;
                db.execute("DELETE FROM messages WHERE id = ANY($1)", &[&doomed]).await?;
            }
            let mut bodies = 0;
            if let Some(age) = policy.body_max_age {
                let cutoff = now - age.0.as_millis() as i64;
                bodies = db
                    .execute(
                        &format!(
                            "UPDATE messages SET body = NULL, out_body = NULL WHERE id IN (
                               SELECT id FROM messages WHERE route = $1 AND updated_at < $2 AND {FINISHED}
                               AND (body IS NOT NULL OR out_body IS NOT NULL) ORDER BY id LIMIT $3)"
                        ),
                        &[&route, &cutoff, &batch],
                    )
                    .await?;
            }
            Ok(Pruned {
                deleted: doomed.len() as u64,
                bodies,
            })
        })
        .await
    }

    async fn reclaim(&self, _pages: u32) -> StoreResult<u64> {
        // PostgreSQL's autovacuum reuses the space of deleted rows; nothing to do here.
        Ok(0)
    }

    async fn check(&self, _full: bool) -> StoreResult<Vec<String>> {
        // PostgreSQL guards its own pages (data checksums, amcheck) and refuses a damaged one
        // with an error of its own; there is no file of ours to read.
        Ok(Vec::new())
    }

    fn damaged(&self) -> Option<String> {
        None
    }
}
