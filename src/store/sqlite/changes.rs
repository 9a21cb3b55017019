//! Executing the store's decisions (`store/plan.rs`) on SQLite: transitions, leases,
//! deliveries, aggregate groups and keyed look-ups, as SQL.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn transition(
    conn: &Connection,
    message: &str,
    at: i64,
    event: &str,
    name: Option<&str>,
    outcome: &str,
    duration: Option<Duration>,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO transitions (message_id, at, event, name, outcome, duration_us, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        message,
        at,
        event,
        name,
        outcome,
        duration.map(|d| d.as_micros() as i64),
        detail
    ])?;
    Ok(())
}

/// Takes or renews the lease `name` of `route` for `node`: true when `node` holds it now (it
/// was free, expired, or already this node's).
pub(super) fn take_lease(
    conn: &Connection,
    route: &str,
    name: &str,
    node: &str,
    now: i64,
    lease: i64,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "INSERT INTO destination_leases (route, destination, owner, lease_until) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (route, destination) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
         WHERE destination_leases.owner = excluded.owner OR destination_leases.lease_until < ?5
         RETURNING owner",
    )?
    .query_row(params![route, name, node, now + lease, now], |_| Ok(()))
    .optional()
    .map(|held| held.is_some())
}

pub(super) fn parse_id(text: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Executes one planned change (see [`plan`]); returns the id of a held delivery.
fn apply(
    conn: &Connection,
    change: &Change<'_>,
    now: i64,
    node: &str,
    lease: i64,
) -> rusqlite::Result<Option<i64>> {
    match change {
        Change::Message { ins, held, finish } => {
            let m = &ins.msg;
            let (state, error) = match finish {
                Some(f) => (f.state, f.error.as_deref()),
                None => (ins.state, ins.error.as_deref()),
            };
            let output = finish.as_ref().and_then(|f| f.output);
            let retry_at = finish.as_ref().and_then(|f| f.retry_at);
            conn.prepare_cached(
                "INSERT INTO messages (id, route, route_version, state, received_at, updated_at, headers, body,
                                       error, parent_id, resume_step, next_attempt_at, owner, lease_until,
                                       out_headers, out_body, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                m.id.to_string(),
                m.route,
                ins.route_version,
                state.as_str(),
                millis(m.received_at),
                headers_json(&m.headers),
                &m.body[..],
                error,
                ins.parent.map(|p| p.to_string()),
                ins.resume_step as i64,
                match retry_at {
                    Some(at) => Some(millis(at)),
                    None => ins.scheduled.then_some(now),
                },
                held.then_some(node),
                held.then_some(now + lease),
                output.map(|(h, _)| headers_json(h)),
                output.map(|(_, b)| &b[..]),
                retry_at.is_some() as i64,
            ])?;
        }
        Change::Child { parent, ins } => {
            let m = &ins.msg;
            conn.prepare_cached(
                "INSERT INTO messages (id, route, route_version, state, received_at, updated_at, headers, body,
                                       parent_id, resume_step, next_attempt_at)
                 VALUES (?1, ?2, ?3, 'received', ?4, ?4, ?5, ?6, ?7, ?8, ?4)",
            )?
            .execute(params![
                m.id.to_string(),
                m.route,
                ins.route_version,
                millis(m.received_at),
                headers_json(&m.headers),
                &m.body[..],
                parent.to_string(),
                ins.resume_step as i64,
            ])?;
        }
        Change::Position { route, name, value } => {
            conn.prepare_cached(
                "INSERT INTO positions (route, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (route, name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![route, name, value])?;
        }
        Change::Index {
            message,
            name,
            value,
        } => {
            conn.prepare_cached(
                "INSERT INTO message_index (name, value, message_id) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, value, message.to_string()])?;
        }
        Change::Transition { .. } => insert_lines(conn, &[change], now)?,
        Change::Output {
            message,
            state,
            headers,
            body,
        } => {
            conn.prepare_cached(
                "UPDATE messages SET state = ?2, updated_at = ?3, out_headers = ?4, out_body = ?5, error = NULL
                 WHERE id = ?1",
            )?
            .execute(params![
                message.to_string(),
                state.as_str(),
                now,
                headers_json(headers),
                &body[..]
            ])?;
        }
        Change::State {
            message,
            state,
            error,
        } => set_state(conn, &message.to_string(), now, *state, error.as_deref())?,
        Change::Error { message, error } => {
            conn.prepare_cached("UPDATE messages SET error = ?2 WHERE id = ?1")?
                .execute(params![message.to_string(), error])?;
        }
        Change::Final { message, state } => {
            conn.prepare_cached(
                "UPDATE messages SET state = ?2, updated_at = ?3,
                 error = CASE WHEN ?2 = 'delivered' THEN NULL ELSE error END WHERE id = ?1",
            )?
            .execute(params![message.to_string(), state.as_str(), now])?;
        }
        Change::Retry { message, at, error } => {
            conn.prepare_cached(
                "UPDATE messages SET attempts = attempts + 1, next_attempt_at = ?2, updated_at = ?3, error = ?4,
                 owner = NULL, lease_until = NULL WHERE id = ?1",
            )?
            .execute(params![message.to_string(), millis(*at), now, error])?;
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
            let id = add_delivery(
                conn,
                &message.to_string(),
                route,
                destination,
                (*kind, payload.as_str(), *line),
                now,
                held.then_some((node, now + lease)),
            )?;
            return Ok(id.filter(|_| *held));
        }
        Change::LeaveLines { message, .. } => {
            // Runs after the plan's deliveries took their places: what is left is not routed.
            conn.prepare_cached(
                "DELETE FROM deliveries WHERE message_id = ?1 AND state = 'waiting'",
            )?
            .execute([message.to_string()])?;
        }
        Change::Join {
            message,
            route,
            join,
            bytes,
        } => join_group(conn, *message, route, join, *bytes, now)?,
        Change::Members { group, text } => {
            let group = group.to_string();
            conn.prepare_cached(
                "INSERT INTO transitions (message_id, at, event, name, outcome, duration_us, detail)
                 SELECT i.message_id, ?3, 'state', NULL, 'aggregated', NULL, ?4
                 FROM message_index i JOIN messages m ON m.id = i.message_id
                 WHERE i.name = ?1 AND i.value = ?2 AND m.state = 'aggregating'",
            )?
            .execute(params![plan::GROUP_FIELD, group, now, text])?;
            conn.prepare_cached(
                "UPDATE messages SET state = 'aggregated', updated_at = ?3, error = ?4
                 WHERE state = 'aggregating'
                   AND id IN (SELECT message_id FROM message_index WHERE name = ?1 AND value = ?2)",
            )?
            .execute(params![plan::GROUP_FIELD, group, now, text])?;
        }
    }
    Ok(None)
}

/// A member joins the open group of its key (see [`plan::joined`]).
pub(super) fn join_group(
    conn: &Connection,
    message: Uuid,
    route: &str,
    join: &crate::store::Join,
    bytes: u64,
    now: i64,
) -> rusqlite::Result<()> {
    let (group, members, total, timeout_at): (String, i64, i64, Option<i64>) = conn
        .prepare_cached(
            "INSERT INTO aggregates (group_id, route, key, open_key, members, bytes, opened_at, timeout_at)
             VALUES (?1, ?2, ?3, ?3, 1, ?4, ?5, ?6)
             ON CONFLICT (route, open_key) DO UPDATE
               SET members = aggregates.members + 1, bytes = aggregates.bytes + excluded.bytes
             RETURNING group_id, members, bytes, timeout_at",
        )?
        .query_row(
            params![
                Uuid::now_v7().to_string(),
                route,
                join.key,
                bytes as i64,
                now,
                plan::group_timeout_at(join, now)
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let (members, total) = (members.max(0) as u64, total.max(0) as u64);
    let (due, completed) = plan::joined(join, members, total, timeout_at, now);
    conn.prepare_cached(
        "UPDATE aggregates SET due_at = ?2, completed_by = ?3,
           open_key = CASE WHEN ?3 IS NULL THEN open_key ELSE NULL END
         WHERE group_id = ?1",
    )?
    .execute(params![group, due, completed])?;
    let id = message.to_string();
    conn.prepare_cached("INSERT INTO message_index (name, value, message_id) VALUES (?1, ?2, ?3)")?
        .execute(params![plan::GROUP_FIELD, group, id])?;
    let group = parse_id(&group)?;
    transition(
        conn,
        &id,
        now,
        "aggregate",
        None,
        "joined",
        None,
        Some(&plan::join_text(group, &join.key, members, completed)),
    )
}

/// Executes a plan. Its history lines go in together at the end, a few statements for all of
/// them (see [`insert_lines`]); a message's own lines keep their order, and nothing in a plan
/// reads the history back — except a group's join and its members' lines, which write lines
/// of their own, so the lines before them go in first.
pub(super) fn apply_all(
    conn: &Connection,
    plan: &[Change<'_>],
    now: i64,
    node: &str,
    lease: i64,
) -> rusqlite::Result<Vec<(String, i64)>> {
    let (mut lines, mut held) = (Vec::new(), Vec::new());
    for change in plan {
        match change {
            Change::Transition { .. } => lines.push(change),
            Change::Join { .. } | Change::Members { .. } => {
                insert_lines(conn, &lines, now)?;
                lines.clear();
                apply(conn, change, now, node, lease)?;
            }
            _ => {
                if let (Some(id), Change::Delivery { destination, .. }) =
                    (apply(conn, change, now, node, lease)?, change)
                {
                    held.push((destination.to_string(), id));
                }
            }
        }
    }
    insert_lines(conn, &lines, now)?;
    Ok(held)
}

/// Rows per multi-row insert of history lines, largest first: a few cached statements cover
/// any number of lines (SQLite runs one statement's rows without a step, a reset and a
/// statement look-up each). The inserts are `OR FAIL`: a statement of several rows that may
/// abort halfway otherwise copies every page it changes into a statement journal to undo
/// its own rows; here a failed job's whole transaction is rolled back instead (`writer`).
const LINES_PER_INSERT: [usize; 6] = [32, 8, 4, 3, 2, 1];

/// Inserts history lines (the plan's [`Change::Transition`]s; other changes are not lines
/// and are skipped), in their order.
pub(super) fn insert_lines(
    conn: &Connection,
    lines: &[&Change<'_>],
    now: i64,
) -> rusqlite::Result<()> {
    struct Line<'a> {
        message: String,
        at: i64,
        event: &'a str,
        name: Option<&'a str>,
        outcome: &'a str,
        duration: Option<i64>,
        detail: Option<&'a str>,
    }
    let rows: Vec<Line<'_>> = lines
        .iter()
        .filter_map(|c| match c {
            Change::Transition {
                message,
                at,
                event,
                name,
                outcome,
                duration,
                detail,
            } => Some(Line {
                message: message.to_string(),
                at: at.map(millis).unwrap_or(now),
                event,
                name: *name,
                outcome,
                duration: duration.map(|d| d.as_micros() as i64),
                detail: detail.as_deref(),
            }),
            _ => None,
        })
        .collect();
    let mut rest = &rows[..];
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        LINES_PER_INSERT
            .iter()
            .map(|&size| {
                let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; size].join(", ");
                format!("INSERT OR FAIL INTO transitions (message_id, at, event, name, outcome, duration_us, detail) VALUES {values}")
            })
            .collect()
    });
    for (&size, sql) in LINES_PER_INSERT.iter().zip(sql) {
        while rest.len() >= size {
            let (chunk, after) = rest.split_at(size);
            conn.prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(chunk.iter().flat_map(|l| {
                    [
                        &l.message as &dyn rusqlite::ToSql,
                        &l.at,
                        &l.event,
                        &l.name,
                        &l.outcome,
                        &l.duration,
                        &l.detail,
                    ]
                })))?;
            rest = after;
        }
    }
    Ok(())
}

/// Writes one new message (see [`plan::new_message`]).
pub(super) fn insert_one(
    conn: &Connection,
    ins: &Insert,
    held: bool,
    now: i64,
    node: &str,
    lease: i64,
) -> rusqlite::Result<()> {
    apply_all(conn, &plan::new_message(ins, held), now, node, lease).map(drop)
}

/// The first message of `route` holding one of `keys` (see [`Key`]), with the key it holds.
pub(super) fn first_with_keys<'k>(
    conn: &Connection,
    route: &str,
    keys: &'k [Key],
) -> rusqlite::Result<Option<(String, &'k Key)>> {
    for key in keys {
        let first: Option<String> = conn
            .prepare_cached(
                "SELECT i.message_id FROM message_index i JOIN messages m ON m.id = i.message_id
                 WHERE i.name = ?1 AND i.value = ?2 AND m.route = ?3 AND i.message_id >= ?4
                   AND (?5 OR m.state NOT IN ('failed', 'dead', 'duplicate'))
                 ORDER BY i.message_id LIMIT 1",
            )?
            .query_row(
                params![
                    key.name,
                    key.value,
                    route,
                    key.start().to_string(),
                    key.failures_count()
                ],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(first) = first {
            return Ok(Some((first, key)));
        }
    }
    Ok(None)
}

pub(super) fn add_delivery(
    conn: &Connection,
    message: &str,
    route: &str,
    destination: &str,
    (kind, payload, line): (DeliveryKind, &str, Line),
    now: i64,
    held: Option<(&str, i64)>,
) -> rusqlite::Result<Option<i64>> {
    if line == Line::InPlace {
        let kept = conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'pending', kind = ?3, payload = ?4, next_attempt_at = ?5, updated_at = ?5
                 WHERE message_id = ?1 AND destination = ?2 AND state = 'waiting'",
            )?
            .execute(params![message, destination, kind.as_str(), payload, now])?;
        if kept > 0 {
            // A FIFO line's place (never held: FIFO destinations read their lines in order).
            return Ok(None);
        }
    }
    let state = match line {
        Line::Kept => "waiting",
        Line::End | Line::InPlace => "pending",
    };
    let (owner, lease_until) = held.unzip();
    conn.prepare_cached(
        "INSERT INTO deliveries (message_id, route, destination, kind, payload, state, next_attempt_at, updated_at,
                                 owner, lease_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
    )?
    .execute(params![message, route, destination, kind.as_str(), payload, state, now, owner, lease_until])?;
    Ok(Some(conn.last_insert_rowid()))
}

pub(super) fn set_state(
    conn: &Connection,
    id: &str,
    now: i64,
    state: MessageState,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE messages SET state = ?2, updated_at = ?3, error = ?4 WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), now, error])?;
    Ok(())
}
