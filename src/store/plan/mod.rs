//! What each write changes, decided once for both backends.
//!
//! A store write is planned here as a list of row changes; `sqlite` and `postgres` only
//! execute a plan in their own SQL. So which rows a new message or the steps' outcome
//! touches — its transitions, its deliveries, its state — cannot drift apart between the
//! backends.

mod groups;
mod search;

pub(crate) use groups::*;
pub use search::id_range;
pub(crate) use search::{first_id_at, search};

use super::{
    Attempt, AttemptOutcome, DeliveryKind, Insert, Join, MessageState, Processed, StepRecord,
};
use crate::message::Headers;
use bytes::Bytes;
use std::borrow::Cow;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// Which body a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// The message as received (wire taps, dead-letter copies of step failures).
    In,
    /// The message as the steps left it.
    Out,
}

impl Payload {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Payload::In => "in",
            Payload::Out => "out",
        }
    }
}

/// Where a new delivery row stands in its destination's line (the order of delivery ids,
/// which FIFO destinations deliver in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// At the end, due at once.
    End,
    /// At the end, `waiting` for the steps of a message committed before they ran: the FIFO
    /// destination's head stops there until they have.
    Kept,
    /// In the place kept for it when its message was committed (a `waiting` row becomes
    /// `pending`), or at the end when none was kept.
    InPlace,
}

/// One row change.
#[derive(Debug)]
pub(crate) enum Change<'a> {
    /// A new message's row; `held`: this node processes it and holds it from the start;
    /// `finish`: its steps ran already, and the row is written with their outcome.
    Message {
        ins: &'a Insert,
        held: bool,
        finish: Option<Finish<'a>>,
    },
    /// A message made by a split, scheduled for the steps after the split.
    Child { parent: Uuid, ins: &'a Insert },
    /// The route's inbound position, written with the message that reached it.
    Position {
        route: &'a str,
        name: &'a str,
        value: &'a str,
    },
    /// A search field of a message.
    Index {
        message: Uuid,
        name: &'a str,
        value: &'a str,
    },
    /// A line of the message's history. `at: None` is the write's own time.
    Transition {
        message: Uuid,
        at: Option<SystemTime>,
        event: &'static str,
        name: Option<&'a str>,
        outcome: &'a str,
        duration: Option<Duration>,
        detail: Option<Cow<'a, str>>,
    },
    /// The steps' result and the state it leads to.
    Output {
        message: Uuid,
        state: MessageState,
        headers: &'a Headers,
        body: &'a Bytes,
    },
    /// A new state, with its error or reason.
    State {
        message: Uuid,
        state: MessageState,
        error: Option<Cow<'a, str>>,
    },
    /// The error of a message whose delivery died; its state stays until its last delivery.
    Error { message: Uuid, error: String },
    /// The final state of a message whose last open delivery ended.
    Final { message: Uuid, state: MessageState },
    /// The steps run again at `at`.
    Retry {
        message: Uuid,
        at: SystemTime,
        error: &'a str,
    },
    /// A pending delivery, due at once (or a place kept, see [`Line`]). `held`: claimed by
    /// this node in the same write (its worker gets it in memory); the backend reports its id.
    Delivery {
        message: Uuid,
        route: &'a str,
        destination: &'a str,
        kind: DeliveryKind,
        payload: Payload,
        line: Line,
        held: bool,
    },
    /// The places kept for a message in lines it does not go to after all (filtered, failed,
    /// routed elsewhere, split). Never one of `routed`, so that it may run in any order with
    /// the deliveries of the same plan.
    LeaveLines { message: Uuid, routed: Vec<&'a str> },
    /// The message joins the open group of its key in its route's `aggregate` step (one is
    /// opened when there is none); the backend reports the group's count and size to
    /// [`joined`], which says whether the group completes.
    Join {
        message: Uuid,
        route: &'a str,
        join: &'a Join,
        bytes: u64,
    },
    /// The members of `group` end: combined into the group's message.
    Members { group: Uuid, text: String },
}

/// What the steps made of a new message, written into its row as it is inserted.
#[derive(Debug)]
pub(crate) struct Finish<'a> {
    pub state: MessageState,
    /// The message as the steps left it.
    pub output: Option<(&'a Headers, &'a Bytes)>,
    pub error: Option<Cow<'a, str>>,
    /// The steps run again then (`on_error: retry`); the message stays `received`.
    pub retry_at: Option<SystemTime>,
}

/// A new message: its row, its `received` transition, its search fields, its wire taps, and
/// its places in the lines of the route's FIFO destinations (its steps have not run yet).
pub(crate) fn new_message(ins: &Insert, held: bool) -> Vec<Change<'_>> {
    let m = &ins.msg;
    let mut plan = vec![
        Change::Message {
            ins,
            held,
            finish: None,
        },
        Change::Transition {
            message: m.id,
            at: Some(m.received_at),
            event: "received",
            name: None,
            outcome: ins.state.as_str(),
            duration: None,
            detail: ins.error.as_deref().map(Cow::Borrowed),
        },
    ];
    plan.extend(ins.index.iter().map(|(name, value)| Change::Index {
        message: m.id,
        name,
        value,
    }));
    plan.extend(ins.position.iter().map(|(name, value)| Change::Position {
        route: &m.route,
        name,
        value,
    }));
    plan.extend(ins.wire_taps.iter().map(|tap| Change::Delivery {
        message: m.id,
        route: &m.route,
        destination: tap,
        kind: DeliveryKind::WireTap,
        payload: Payload::In,
        line: Line::End,
        held: false,
    }));
    if ins.state == MessageState::Received {
        plan.extend(ins.fifo.iter().map(|d| Change::Delivery {
            message: m.id,
            route: &m.route,
            destination: d,
            kind: DeliveryKind::Main,
            payload: Payload::Out,
            line: Line::Kept,
            held: false,
        }));
    }
    plan
}

/// A new message whose steps ran before its commit: [`new_message`] and [`steps_outcome`],
/// with the outcome's change to the message's own row folded into the row's insert — the
/// row is written once, and every change of the plan is an insert.
pub(crate) fn processed_message<'a>(
    ins: &'a Insert,
    steps: &'a [StepRecord],
    result: &'a Processed,
) -> (Vec<Change<'a>>, MessageState) {
    let id = ins.msg.id;
    let (mut outcome, state) = steps_outcome(id, &ins.msg.route, steps, result, false);
    // Only here, where the message's whole life so far is this one write, are deliveries
    // held for the caller: it hands them to their workers once the write commits.
    if let Processed::Routed { held, .. } = result {
        for change in &mut outcome {
            if let Change::Delivery {
                destination,
                kind: DeliveryKind::Main,
                held: h,
                ..
            } = change
            {
                *h = held.iter().any(|d| d == destination);
            }
        }
    }
    let mut finish = Finish {
        state,
        output: None,
        error: None,
        retry_at: None,
    };
    let mut rest = Vec::with_capacity(outcome.len());
    for change in outcome {
        match change {
            Change::Output {
                message,
                headers,
                body,
                ..
            } if message == id => finish.output = Some((headers, body)),
            Change::State { message, error, .. } if message == id => finish.error = error,
            Change::Retry { message, at, error } if message == id => {
                finish.retry_at = Some(at);
                finish.error = Some(Cow::Borrowed(error));
            }
            other => rest.push(other),
        }
    }
    let mut plan = new_message(ins, false);
    // Its steps ran: it goes straight to the end of its lines, no place kept.
    plan.retain(|c| {
        !matches!(
            c,
            Change::Delivery {
                line: Line::Kept,
                ..
            }
        )
    });
    if let Some(Change::Message { finish: f, .. }) = plan.first_mut() {
        *f = Some(finish);
    }
    plan.extend(rest);
    (plan, state)
}

/// The steps' outcome for message `id` of `route`: a transition per step, the result, the
/// deliveries it makes, and the state it ends in. `stored`: the message was committed before
/// its steps ran, so it may hold places in FIFO lines, taken or left here.
pub(crate) fn steps_outcome<'a>(
    id: Uuid,
    route: &'a str,
    steps: &'a [StepRecord],
    result: &'a Processed,
    stored: bool,
) -> (Vec<Change<'a>>, MessageState) {
    let mut plan: Vec<Change<'a>> = steps
        .iter()
        .map(|s| Change::Transition {
            message: id,
            at: None,
            event: "step",
            name: Some(&s.step),
            outcome: if s.ok { "ok" } else { "error" },
            duration: Some(s.duration),
            detail: s.detail.as_deref().map(Cow::Borrowed),
        })
        .collect();
    let delivery = |destination: &'a str, kind, payload| Change::Delivery {
        message: id,
        route,
        destination,
        kind,
        payload,
        line: match (stored, kind) {
            (true, DeliveryKind::Main) => Line::InPlace,
            _ => Line::End,
        },
        held: false,
    };
    let state = match result {
        Processed::Routed {
            headers,
            body,
            destinations,
            ..
        } if destinations.is_empty() => {
            // Nowhere to deliver (a route that only replies): done once its steps are.
            plan.push(Change::Output {
                message: id,
                state: MessageState::Delivered,
                headers,
                body,
            });
            plan.push(entered(id, MessageState::Delivered));
            MessageState::Delivered
        }
        Processed::Routed {
            headers,
            body,
            destinations,
            ..
        } => {
            plan.push(Change::Output {
                message: id,
                state: MessageState::Delivering,
                headers,
                body,
            });
            plan.extend(
                destinations
                    .iter()
                    .map(|d| delivery(d, DeliveryKind::Main, Payload::Out)),
            );
            MessageState::Delivering
        }
        Processed::Unrouted { headers, body } => {
            plan.push(Change::Output {
                message: id,
                state: MessageState::Unrouted,
                headers,
                body,
            });
            MessageState::Unrouted
        }
        Processed::Filtered { reason } => {
            plan.push(Change::State {
                message: id,
                state: MessageState::Filtered,
                error: Some(Cow::Borrowed(reason)),
            });
            MessageState::Filtered
        }
        Processed::Failed { error, dead_letter } => {
            plan.push(Change::State {
                message: id,
                state: MessageState::Failed,
                error: Some(Cow::Borrowed(error)),
            });
            if let Some(dl) = dead_letter {
                plan.push(delivery(dl, DeliveryKind::DeadLetter, Payload::In));
            }
            MessageState::Failed
        }
        Processed::Retry {
            error,
            next_attempt_at,
        } => {
            plan.push(Change::Retry {
                message: id,
                at: *next_attempt_at,
                error,
            });
            plan.push(Change::Transition {
                message: id,
                at: None,
                event: "state",
                name: None,
                outcome: "retry",
                duration: None,
                detail: Some(Cow::Borrowed(error)),
            });
            // Still waiting for its steps: no `state` transition.
            return (plan, MessageState::Received);
        }
        Processed::Split { children } => {
            for ins in children {
                plan.push(Change::Child { parent: id, ins });
                plan.extend(ins.index.iter().map(|(name, value)| Change::Index {
                    message: ins.msg.id,
                    name,
                    value,
                }));
                plan.push(Change::Transition {
                    message: ins.msg.id,
                    at: None,
                    event: "received",
                    name: None,
                    outcome: "received",
                    duration: None,
                    detail: Some(Cow::Owned(format!("split from {id}"))),
                });
            }
            plan.push(Change::State {
                message: id,
                state: MessageState::Split,
                error: Some(Cow::Owned(format!(
                    "split into {} messages",
                    children.len()
                ))),
            });
            MessageState::Split
        }
        Processed::Aggregate {
            headers,
            body,
            join,
        } => {
            // The body is kept as the step found it: the group is combined from these.
            plan.push(Change::Output {
                message: id,
                state: MessageState::Aggregating,
                headers,
                body,
            });
            plan.push(Change::Join {
                message: id,
                route,
                join,
                bytes: body.len() as u64,
            });
            MessageState::Aggregating
        }
    };
    if stored {
        let routed = match result {
            Processed::Routed { destinations, .. } => {
                destinations.iter().map(String::as_str).collect()
            }
            _ => Vec::new(),
        };
        plan.push(Change::LeaveLines {
            message: id,
            routed,
        });
    }
    plan.push(entered(id, state));
    (plan, state)
}

/// The search field under which a member is found by its group's id (which is also the id
/// of the message the group becomes): `messages list --field aggregate=<id>`.
pub(crate) const GROUP_FIELD: &str = "aggregate";

/// The transition of a message into `state`.
fn entered(message: Uuid, state: MessageState) -> Change<'static> {
    Change::Transition {
        message,
        at: None,
        event: "state",
        name: None,
        outcome: state.as_str(),
        duration: None,
        detail: None,
    }
}

/// What an attempt writes into its delivery's row.
#[derive(Debug)]
pub(crate) struct DeliveryOutcome<'a> {
    /// `pending` (tried again later), `delivered` or `dead`.
    pub state: &'static str,
    /// When it is due again; `None`: the write's own time.
    pub next_attempt_at: Option<SystemTime>,
    pub error: Option<&'a str>,
}

impl DeliveryOutcome<'_> {
    /// Delivered or dead: the delivery is over, and may have been its message's last.
    pub(crate) fn ended(&self) -> bool {
        self.state != "pending"
    }
}

/// A receipt is kept up to this many characters.
const RECEIPT: usize = 300;

fn cut(s: &str, n: usize) -> Cow<'_, str> {
    match s.char_indices().nth(n) {
        Some((at, _)) => Cow::Owned(format!("{}…", &s[..at])),
        None => Cow::Borrowed(s),
    }
}

/// An attempt: its delivery's new values and the attempt's transition.
pub(crate) fn attempt(a: &Attempt) -> (DeliveryOutcome<'_>, Change<'_>) {
    let (state, next_attempt_at, error, outcome) = match &a.outcome {
        AttemptOutcome::Delivered => ("delivered", None, None, "delivered"),
        AttemptOutcome::Retry {
            error,
            next_attempt_at,
        } => (
            "pending",
            Some(*next_attempt_at),
            Some(error.as_str()),
            "retry",
        ),
        AttemptOutcome::Dead { error, .. } => ("dead", None, Some(error.as_str()), "dead"),
    };
    let detail = match (error, a.receipt.as_deref().filter(|r| !r.is_empty())) {
        (Some(e), _) => format!("attempt {}: {e}", a.number),
        (None, Some(receipt)) => format!("attempt {}: {}", a.number, cut(receipt, RECEIPT)),
        (None, None) => format!("attempt {}", a.number),
    };
    (
        DeliveryOutcome {
            state,
            next_attempt_at,
            error,
        },
        Change::Transition {
            message: a.message,
            at: None,
            event: "attempt",
            name: Some(&a.destination),
            outcome,
            duration: Some(a.duration),
            detail: Some(Cow::Owned(detail)),
        },
    )
}

/// A main delivery of `route` that ended, before its message's deliveries are counted: a
/// dead one records its error on the message and sends the message to the dead letter.
pub(crate) fn main_delivery_ended<'a>(a: &'a Attempt, route: &'a str) -> Vec<Change<'a>> {
    let AttemptOutcome::Dead { error, dead_letter } = &a.outcome else {
        return Vec::new();
    };
    let mut plan = vec![Change::Error {
        message: a.message,
        error: format!("{}: {error}", a.destination),
    }];
    if let Some(dl) = dead_letter {
        plan.push(Change::Delivery {
            message: a.message,
            route,
            destination: dl,
            kind: DeliveryKind::DeadLetter,
            payload: Payload::Out,
            line: Line::End,
            held: false,
        });
    }
    plan
}

/// The end of a message whose main deliveries were counted (`open` still pending, `dead`
/// dead): when none is open, its final state — `dead` if any died — and that transition.
pub(crate) fn message_ended<'a>(
    message: Uuid,
    open: i64,
    dead: i64,
) -> Option<(Vec<Change<'a>>, MessageState)> {
    if open > 0 {
        return None;
    }
    let state = if dead > 0 {
        MessageState::Dead
    } else {
        MessageState::Delivered
    };
    Some((
        vec![Change::Final { message, state }, entered(message, state)],
        state,
    ))
}

/// One condition of a search, in the order that lets the store use its indexes: an index
/// field first (a look-up), then route and state (`messages (route, state, id)`), then the
/// time range as a range of ids (ids are UUIDv7: they sort by arrival time), so that even a
/// search of a million messages reads only what it returns and a page of neighbours.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition<'a> {
    Field(&'a str, &'a str),
    Route(&'a str),
    State(&'static str),
    /// Ids at or after the first one possible at this time, and `received_at` at or after it.
    Since(Uuid, i64),
    /// Ids at or before the last one possible at this time, and `received_at` at or before it.
    Until(Uuid, i64),
    /// Ids from the first to the last: an id prefix, a range of the primary key.
    Ids(Uuid, Uuid),
    /// Ids before this one: the next page.
    Before(Uuid),
    /// Children of a message (`messages (parent_id)`).
    Parent(Uuid),
    /// Text in the headers or the bodies: a scan of what the other conditions leave.
    Text(&'a str),
    /// Text in the last error: a scan of what the other conditions leave.
    Error(&'a str),
}
