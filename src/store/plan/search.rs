//! Searching: an id prefix as a range of ids, the first id of a time, and a search as
//! conditions the backends write in their SQL.

use super::*;

/// The range of ids that start with `prefix` (hex digits; dashes and case ignored), or why
/// it is not an id prefix.
pub fn id_range(prefix: &str) -> Result<(Uuid, Uuid), String> {
    let hex: String = prefix.chars().filter(|c| *c != '-').collect();
    if hex.is_empty() || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{prefix}` is not the start of a message id (hex digits, such as 0193a4f2)"
        ));
    }
    let pad = |c: char| format!("{hex:c<32}").replace('c', &c.to_string());
    let (lo, hi) = (pad('0'), pad('f'));
    let parse = |h: &str| u128::from_str_radix(h, 16).map(Uuid::from_u128);
    match (parse(&lo), parse(&hi)) {
        (Ok(lo), Ok(hi)) => Ok((lo, hi)),
        _ => Err(format!("`{prefix}` is not the start of a message id")),
    }
}

/// The lowest UUIDv7 possible at `t`: ids at or above it were made at `t` or later.
pub(crate) fn first_id_at(t: SystemTime) -> Uuid {
    Uuid::from_u128((crate::store::millis(t).max(0) as u128) << 80)
}

/// The conditions of `search`; those it leaves unset are left out (not `? IS NULL OR ...`,
/// which keeps a database from using any index).
pub(crate) fn search(search: &crate::store::Search) -> Vec<Condition<'_>> {
    let ms = |t: SystemTime| crate::store::millis(t).max(0) as u128;
    let mut out = Vec::new();
    if let Some((name, value)) = &search.field {
        out.push(Condition::Field(name, value));
    }
    if let Some(route) = &search.route {
        out.push(Condition::Route(route));
    }
    if let Some(state) = search.state {
        out.push(Condition::State(state.as_str()));
    }
    if let Some(since) = search.since {
        out.push(Condition::Since(first_id_at(since), ms(since) as i64));
    }
    if let Some(until) = search.until {
        let t = ms(until);
        out.push(Condition::Until(
            Uuid::from_u128((t << 80) | ((1u128 << 80) - 1)),
            t as i64,
        ));
    }
    if let Some(parent) = search.parent {
        out.push(Condition::Parent(parent));
    }
    if let Some((lo, hi)) = search.id_prefix.as_deref().and_then(|p| id_range(p).ok()) {
        out.push(Condition::Ids(lo, hi));
    }
    if let Some(before) = search.before {
        out.push(Condition::Before(before));
    }
    if let Some(text) = &search.text {
        out.push(Condition::Text(text));
    }
    if let Some(error) = &search.error {
        out.push(Condition::Error(error));
    }
    out
}
