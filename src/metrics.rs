//! The process's metrics, fed by the telemetry events: counters and the step-duration
//! histogram go through the `metrics` facade to a Prometheus recorder
//! (`metrics-exporter-prometheus`), which renders `/metrics`; gauges that describe the store
//! (queue depth, dead messages) are set when `/metrics` is read.
//!
//! The facade only writes, so the few numbers the admin API and the console read back — a
//! route's counts since start and its last error — are kept beside it, per route.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

/// Upper bounds of the step-duration buckets, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

const RECEIVED: &str = "switchyard_messages_received_total";
const MESSAGES: &str = "switchyard_messages_total";
const DELIVERIES: &str = "switchyard_deliveries_total";
const STEP_DURATION: &str = "switchyard_step_duration_seconds";
const HANDED_OVER: &str = "switchyard_deliveries_handed_over_total";

/// What one route did since the engine started, for the admin API and the console, and the
/// handles of its counters (registered once, so counting is an atomic add, not a look-up).
#[derive(Default)]
struct Tally {
    received: u64,
    messages: BTreeMap<&'static str, u64>,
    deliveries: BTreeMap<&'static str, u64>,
    last_error: Option<(SystemTime, String)>,
    received_counter: Option<::metrics::Counter>,
    message_counters: HashMap<&'static str, ::metrics::Counter>,
    delivery_counters: HashMap<&'static str, HashMap<String, ::metrics::Counter>>,
    step_histograms: HashMap<String, ::metrics::Histogram>,
}

/// A route's counts since start, as `GET /routes` shows them.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub received: u64,
    pub messages: BTreeMap<&'static str, u64>,
    pub deliveries: BTreeMap<&'static str, u64>,
}

struct Metrics {
    prometheus: PrometheusHandle,
    // One lock per route: the outer map is only written when a route is first seen.
    routes: RwLock<HashMap<String, Arc<Mutex<Tally>>>>,
}

fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), &BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            // Gauges are set on every scrape; one not set for a while belongs to a route or
            // destination that is gone.
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(30)))
            .build_recorder();
        let prometheus = recorder.handle();
        // Another recorder may be installed already (an embedding program's): then ours
        // renders nothing but the gauges, and the numbers go to theirs.
        let _ = ::metrics::set_global_recorder(recorder);
        ::metrics::describe_counter!(RECEIVED, "Messages committed to the store, by route.");
        ::metrics::describe_counter!(
            MESSAGES,
            "Messages that reached a state after their steps or deliveries, by route and state."
        );
        ::metrics::describe_counter!(
            DELIVERIES,
            "Delivery attempts, by route, destination and outcome."
        );
        ::metrics::describe_counter!(
            HANDED_OVER,
            "Deliveries a destination's worker got from the intake in memory instead of claiming them from the store, by route and destination."
        );
        ::metrics::describe_histogram!(
            STEP_DURATION,
            ::metrics::Unit::Seconds,
            "Time each step takes per message, by route and step."
        );
        Metrics {
            prometheus,
            routes: RwLock::new(HashMap::new()),
        }
    })
}

fn tally(route: &str, change: impl FnOnce(&str, &mut Tally)) {
    let m = global();
    let known = m.routes.read().ok().and_then(|r| r.get(route).cloned());
    let entry = match known {
        Some(t) => t,
        None => match m.routes.write() {
            Ok(mut r) => r.entry(route.to_string()).or_default().clone(),
            Err(_) => return,
        },
    };
    let locked = entry.lock();
    if let Ok(mut t) = locked {
        change(route, &mut t);
    }
}

/// A message committed to the store.
pub fn received(route: &str) {
    tally(route, |route, t| {
        t.received += 1;
        t.received_counter
            .get_or_insert_with(|| ::metrics::counter!(RECEIVED, "route" => route.to_string()))
            .increment(1);
    });
}

/// A message that reached `state` (after its steps, or its last delivery).
pub fn message(route: &str, state: &'static str) {
    tally(route, |route, t| {
        *t.messages.entry(state).or_default() += 1;
        t.message_counters
            .entry(state)
            .or_insert_with(
                || ::metrics::counter!(MESSAGES, "route" => route.to_string(), "state" => state),
            )
            .increment(1);
    });
}

/// A delivery attempt and how it ended.
pub fn delivery(route: &str, destination: &str, outcome: &'static str) {
    tally(route, |route, t| {
        *t.deliveries.entry(outcome).or_default() += 1;
        let by_destination = t.delivery_counters.entry(outcome).or_default();
        if let Some(c) = by_destination.get(destination) {
            c.increment(1);
            return;
        }
        let c = ::metrics::counter!(DELIVERIES, "route" => route.to_string(), "destination" => destination.to_string(), "outcome" => outcome);
        c.increment(1);
        by_destination.insert(destination.to_string(), c);
    });
}

/// The counter of deliveries handed to a destination's worker in memory (taken once per
/// worker; counting is then an atomic add).
pub fn handed_over(route: &str, destination: &str) -> ::metrics::Counter {
    global();
    ::metrics::counter!(HANDED_OVER, "route" => route.to_string(), "destination" => destination.to_string())
}

/// How long a step took on one message.
pub fn step(route: &str, step: &str, seconds: f64) {
    tally(route, |route, t| {
        if let Some(h) = t.step_histograms.get(step) {
            h.record(seconds);
            return;
        }
        let h = ::metrics::histogram!(STEP_DURATION, "route" => route.to_string(), "step" => step.to_string());
        h.record(seconds);
        t.step_histograms.insert(step.to_string(), h);
    });
}

/// The newest error of a route, for the admin API and the console.
pub fn error(route: &str, text: &str) {
    tally(route, |_, t| {
        t.last_error = Some((SystemTime::now(), text.to_string()));
    });
}

/// The last error of a route, with when it happened.
pub fn last_error(route: &str) -> Option<(SystemTime, String)> {
    let t = global().routes.read().ok()?.get(route).cloned()?;
    let t = t.lock().ok()?;
    t.last_error.clone()
}

/// A route's counts since the engine started.
pub fn counts(route: &str) -> Counts {
    let t = global()
        .routes
        .read()
        .ok()
        .and_then(|r| r.get(route).cloned());
    let Some(t) = t else {
        return Counts::default();
    };
    let Ok(t) = t.lock() else {
        return Counts::default();
    };
    Counts {
        received: t.received,
        messages: t.messages.clone(),
        deliveries: t.deliveries.clone(),
    }
}

/// A gauge worked out when `/metrics` is read: name, help, labels, value.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// The Prometheus text exposition, after setting `gauges`.
pub fn render(gauges: Vec<Gauge>) -> String {
    let m = global();
    for g in gauges {
        ::metrics::describe_gauge!(g.name, g.help);
        let labels: Vec<::metrics::Label> = g
            .labels
            .into_iter()
            .map(|(k, v)| ::metrics::Label::new(k, v))
            .collect();
        ::metrics::gauge!(g.name, labels).set(g.value);
    }
    m.prometheus.render()
}
