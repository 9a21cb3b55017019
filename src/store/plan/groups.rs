//! The aggregator's part of a plan: when a group times out, a member joining, a group emitted
//! as one message.

use super::*;

/// A new group's timeout (unix ms), when the step has one.
pub(crate) fn group_timeout_at(join: &Join, now: i64) -> Option<i64> {
    join.timeout.map(|t| now + t.as_millis() as i64)
}

/// After a member joined a group that now has `members` members and `bytes` bytes: when
/// the group is due to time out (the earlier of its timeout and its idle time), and what
/// completed it, if it is complete now.
pub(crate) fn joined(
    join: &Join,
    members: u64,
    bytes: u64,
    timeout_at: Option<i64>,
    now: i64,
) -> (Option<i64>, Option<&'static str>) {
    let completed = if join.closes {
        Some("when")
    } else if join.count.is_some_and(|c| members >= c) {
        Some("count")
    } else if bytes >= join.size {
        Some("size")
    } else {
        None
    };
    if completed.is_some() {
        return (Some(now), completed);
    }
    let idle = join.idle.map(|i| now + i.as_millis() as i64);
    let due = match (timeout_at, idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (due, None)
}

/// The line a member's history gets when it joins its group.
pub(crate) fn join_text(group: Uuid, key: &str, members: u64, completed: Option<&str>) -> String {
    match completed {
        Some(by) => format!(
            "joined aggregate group {group} (key `{key}`) as member {members}; the group is complete ({by})"
        ),
        None => format!("joined aggregate group {group} (key `{key}`) as member {members}"),
    }
}

/// What emitting a group writes, beside ending the group's own row: the message it became
/// (due for the steps after the `aggregate` step at once) and the end of its members.
pub(crate) fn emitted<'a>(
    ins: &'a Insert,
    members: i64,
    key: &str,
    completed_by: &str,
) -> Vec<Change<'a>> {
    let group = ins.msg.id;
    let mut plan = new_message(ins, false);
    plan.push(Change::Transition {
        message: group,
        at: None,
        event: "aggregate",
        name: None,
        outcome: "combined",
        duration: None,
        detail: Some(Cow::Owned(format!(
            "combined from the {members} members of its group (key `{key}`, complete by {completed_by}); find them with the search field {GROUP_FIELD}={group}"
        ))),
    });
    plan.push(Change::Members {
        group,
        text: format!(
            "combined with the other members of its group into message {group} ({members} in all)"
        ),
    });
    plan
}
