//! Counters and histograms for `/metrics` (Prometheus text format), fed by the telemetry
//! events: one place records what happens, this keeps the numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// Upper bounds of the step-duration buckets, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), u64>,
    steps: BTreeMap<(String, String), Histogram>,
    last_error: BTreeMap<String, (SystemTime, String)>,
}

#[derive(Default)]
pub struct Metrics(Mutex<Inner>);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: Labels) {
        if let Ok(mut m) = self.0.lock() {
            *m.counters.entry((name, labels)).or_default() += 1;
        }
    }

    pub fn step(&self, route: &str, step: &str, seconds: f64) {
        if let Ok(mut m) = self.0.lock() {
            let h = m
                .steps
                .entry((route.to_string(), step.to_string()))
                .or_default();
            for (i, upper) in BUCKETS.iter().enumerate() {
                if seconds <= *upper {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    pub fn error(&self, route: &str, text: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.last_error
                .insert(route.to_string(), (SystemTime::now(), text.to_string()));
        }
    }

    /// The last error of a route, with when it happened.
    pub fn last_error(&self, route: &str) -> Option<(SystemTime, String)> {
        self.0.lock().ok()?.last_error.get(route).cloned()
    }

    /// Counter values of one metric for one route, by the value of `label`.
    pub fn counts(&self, name: &str, route: &str, label: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        if let Ok(m) = self.0.lock() {
            for ((n, labels), v) in &m.counters {
                if *n != name || !labels.iter().any(|(k, val)| *k == "route" && val == route) {
                    continue;
                }
                let key = labels
                    .iter()
                    .find(|(k, _)| *k == label)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                *out.entry(key).or_default() += v;
            }
        }
        out
    }

    /// Prometheus text exposition, with `gauges` (name, help, labels, value) added.
    pub fn render(&self, gauges: &[(&str, &str, Labels, f64)]) -> String {
        let mut out = String::new();
        let Ok(m) = self.0.lock() else { return out };
        let help: BTreeMap<&str, &str> = [
            ("switchyard_messages_received_total", "Messages committed to the store, by route."),
            ("switchyard_messages_total", "Messages that reached a state after their steps or deliveries, by route and state."),
            ("switchyard_deliveries_total", "Delivery attempts, by route, destination and outcome."),
        ]
        .into_iter()
        .collect();
        let mut last = "";
        for ((name, labels), v) in &m.counters {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}", help.get(name).unwrap_or(&""));
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels));
        }
        if !m.steps.is_empty() {
            let name = "switchyard_step_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Time each step takes per message, by route and step."
            );
            let _ = writeln!(out, "# TYPE {name} histogram");
            for ((route, step), h) in &m.steps {
                let base: Labels = vec![("route", route.clone()), ("step", step.clone())];
                for (i, upper) in BUCKETS.iter().enumerate() {
                    let mut l = base.clone();
                    l.push(("le", upper.to_string()));
                    let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(&l), h.counts[i]);
                }
                let mut l = base.clone();
                l.push(("le", "+Inf".into()));
                let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(&l), h.count);
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(&base), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(&base), h.count);
            }
        }
        let mut last = "";
        for (name, help, labels, value) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", fmt_labels(labels));
        }
        out
    }
}

fn fmt_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}
