//! What is checked of a route file before anything is built: its id, that it has somewhere to
//! send messages, that `on_error` has the dead letter it names, the inbound's and every
//! destination's own checks, `concurrency`, and at most one `aggregate` step. Checks that need
//! a step or a script built are `compile`'s.

use super::file::{DeliveryPolicy, RouteFile, StepPolicy};
use super::Source;
use crate::adapters::inbound::http::ResponseMode;
use crate::adapters::inbound::InboundConfig;
use crate::config::{yaml, Diagnostic};
use crate::steps::{BuildContext, StepConfig};

/// Every problem of `file` (whose route id is `id`) that needs no building.
pub(super) fn check(
    file: &RouteFile,
    id: &str,
    src: &Source<'_>,
    cx: &BuildContext,
) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        problems.push(src.at_key(
            "id",
            format!("route id `{id}` may only contain letters, digits, `-`, `_` and `.`"),
        ));
    }
    // An HTTP route in `reply` mode may only answer its callers (a transformation service):
    // its messages end `delivered` with the reply.
    let replies = matches!(&file.from, InboundConfig::Http(h) if h.response == ResponseMode::Reply);
    if file.to.is_empty() && file.route.is_none() && !replies {
        problems.push(src.at_key(
            "to",
            "the route has no destination: add outbound adapters under `to`, or rules under `route` (only an HTTP route with `response: reply` may have none: it answers its callers)".into(),
        ));
    }
    let wants_dead_letter = [file.on_error.validation, file.on_error.transform]
        .contains(&StepPolicy::DeadLetter)
        || file.on_error.delivery == DeliveryPolicy::DeadLetter;
    if wants_dead_letter && file.dead_letter.is_none() {
        problems.push(src.at_key(
            "on_error",
            "`on_error` says `dead_letter`, but the route has no `dead_letter` destination".into(),
        ));
    }
    if let Err(e) = file.from.check(cx) {
        problems.push(src.at_key("from", format!("from.{}: {e}", file.from.kind())));
    }
    if file.concurrency == Some(0) {
        problems.push(src.at_key("concurrency", "`concurrency` must be at least 1".into()));
    }
    let mut aggregates = file
        .steps
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, StepConfig::Aggregate(_)))
        .map(|(i, _)| i);
    if let Some(second) = aggregates.nth(1) {
        problems.push(src.at(
            yaml::locate_list_item(src.text, "steps", second),
            format!(
                "steps[{second}].aggregate: a route has at most one `aggregate` step; combine in one, or pass the combined messages on to another route"
            ),
        ));
    }
    for d in file.destinations() {
        if let Err(e) = d.config.check(cx) {
            let key = d.name.split(['[', '.']).next().unwrap_or("to");
            problems.push(src.at_key(key, format!("{}: {e}", d.name)));
        }
    }
    problems
}
