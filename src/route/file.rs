//! What a route file says: one config struct per section, each key documented here and in
//! `docs/routes.md`. Loading, checking and compiling it into a runnable [`super::Route`] is
//! the parent module's.

use crate::adapters::inbound::InboundConfig;
use crate::adapters::outbound::{OutboundConfig, RetryConfig};
use crate::config::values;
use crate::routing::RoutingConfig;
use crate::steps::{ErrorClass, StepConfig};
use serde::Deserialize;

/// What a route file contains. Every key is documented in `docs/routes.md`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The route's id; defaults to the file name without its extension.
    #[serde(default)]
    pub id: Option<String>,
    /// Free text for people reading the route list.
    #[serde(default)]
    pub description: Option<String>,
    /// The one inbound adapter that feeds this route.
    pub from: InboundConfig,
    /// Steps run in order on every message.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Destinations that always get the processed message, each its own tracked, retried
    /// delivery.
    #[serde(default)]
    pub to: Vec<OutboundConfig>,
    /// Content-based routing: rules with predicates and their destinations.
    #[serde(default)]
    pub route: Option<RoutingConfig>,
    /// Where messages go that failed (as `on_error` says) or whose delivery died.
    #[serde(default)]
    pub dead_letter: Option<OutboundConfig>,
    /// Audit copies of every message as received; they never affect the main flow.
    #[serde(default)]
    pub wire_tap: Vec<OutboundConfig>,
    /// What to do with validation, transform and delivery errors.
    #[serde(default)]
    pub on_error: OnError,
    /// How long finished messages are kept in the store.
    #[serde(default)]
    pub retention: crate::store::Retention,
    /// Search fields extracted when a message is stored: name to a Rhai expression over the
    /// message as received (`order: 'body.order["@id"]'`, `patient: 'hl7(body, "PID-3.1")'`).
    #[serde(default)]
    pub index: serde_json::Map<String, serde_json::Value>,
    /// Idempotent receiver: a message whose key was seen on an earlier message of this route
    /// within the window is recorded as `duplicate` and not processed.
    #[serde(default)]
    pub dedupe: Option<DedupeConfig>,
    /// At most this many messages taken in per time; a sender beyond it waits for its
    /// acknowledgement (backpressure), nothing is buffered.
    #[serde(default)]
    pub throttle: Option<ThrottleConfig>,
    /// How many messages of this route run through the steps at the same time (default 4;
    /// 1 when a destination is `fifo`).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

impl RouteFile {
    /// Every destination the file names, each with the name records and logs give it:
    /// `to[0]` and the routing rules' (`route.rules[1].to[0]`, `route.otherwise[0]`),
    /// `dead_letter`, `wire_tap[0]`.
    pub fn destinations(&self) -> Vec<super::DestinationSpec> {
        use crate::store::DeliveryKind;
        let mut all: Vec<super::DestinationSpec> =
            crate::routing::destination_names(&self.to, self.route.as_ref())
                .into_iter()
                .map(|(name, config)| super::DestinationSpec {
                    name,
                    kind: DeliveryKind::Main,
                    config,
                })
                .collect();
        if let Some(dl) = &self.dead_letter {
            all.push(super::DestinationSpec {
                name: "dead_letter".into(),
                kind: DeliveryKind::DeadLetter,
                config: dl.clone(),
            });
        }
        for (i, tap) in self.wire_tap.iter().enumerate() {
            all.push(super::DestinationSpec {
                name: format!("wire_tap[{i}]"),
                kind: DeliveryKind::WireTap,
                config: tap.clone(),
            });
        }
        all
    }
}

/// The route's `dedupe` section.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// A Rhai expression over the message as received, as for `index` (`body.order.id`,
    /// `headers["http.header.idempotency-key"]`, `hl7(body, "MSH-10")`). A message for which
    /// it fails or gives nothing is recorded as failed.
    pub key: String,
    /// How long a key is remembered (default 24h). Keep `retention.max_age` at least this
    /// long: a message deleted from the store no longer holds its key.
    #[serde(default = "DedupeConfig::default_window")]
    pub window: values::Duration,
}

impl DedupeConfig {
    fn default_window() -> values::Duration {
        values::Duration::from_secs(24 * 3600)
    }
}

/// The route's `throttle` section.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Messages per time: `100/s`, `600/min`.
    pub rate: values::Rate,
    /// Messages that may come in at once after a quiet spell (default: a second's worth of
    /// `rate`, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// What to do when a step fails.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepPolicy {
    /// The message fails (default).
    #[default]
    Fail,
    /// The message fails and its original goes to the `dead_letter` destination.
    DeadLetter,
    /// Run the steps again later (`on_error.retry`); after the last try, fail (and
    /// dead-letter when a `dead_letter` destination is set).
    Retry,
}

/// What to do when a delivery fails.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryPolicy {
    /// Retry by the destination's policy; then the delivery is dead and goes to
    /// `dead_letter` when one is set (default).
    #[default]
    Retry,
    /// No retries: the first failure sends it to `dead_letter`.
    DeadLetter,
    /// No retries and no dead letter: the first failure makes the delivery dead.
    Fail,
}

/// The route's `on_error` section.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OnError {
    /// For `validate` steps: `fail` (default), `dead_letter` or `retry`.
    pub validation: StepPolicy,
    /// For every other step and for routing rules: `fail` (default), `dead_letter` or `retry`.
    pub transform: StepPolicy,
    /// For deliveries: `retry` (default), `dead_letter` or `fail`.
    pub delivery: DeliveryPolicy,
    /// How steps are retried when a policy says `retry`.
    pub retry: RetryConfig,
}

impl OnError {
    pub fn for_class(&self, class: ErrorClass) -> StepPolicy {
        match class {
            ErrorClass::Validation => self.validation,
            ErrorClass::Transform => self.transform,
        }
    }
}
