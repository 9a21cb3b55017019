//! Content-based routing: which destinations a processed message goes to.
//!
//! `to:` destinations always get the message. The `route:` section adds ordered rules, each a
//! Rhai predicate (`when:`) with its destinations, and `otherwise:`. In mode `first` the first
//! matching rule wins; in mode `all` every matching rule adds its destinations (a recipient
//! list). A message that ends up with no destination at all is recorded as `unrouted`.

use crate::adapters::outbound::OutboundConfig;
use crate::message::Message;
use crate::script::{body_to_dynamic, Script};
use crate::steps::script_options::plain_engine;
use crate::steps::{BuildError, ScriptPosition};
use serde::Deserialize;

/// How rules combine.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The first rule whose `when` is true decides (default).
    #[default]
    First,
    /// Every rule whose `when` is true adds its destinations.
    All,
}

/// The `route:` section of a route file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// `first` (default) or `all`.
    #[serde(default)]
    pub mode: Mode,
    /// Rules in order.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Destinations for a message no rule matched.
    #[serde(default)]
    pub otherwise: Vec<OutboundConfig>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A Rhai expression over `body`, `headers`, `id` and `route`; the rule matches when it
    /// is `true`.
    pub when: String,
    /// The rule's destinations (several: multicast).
    pub to: Vec<OutboundConfig>,
}

struct Rule {
    when: Script,
    destinations: Vec<String>,
}

/// Routing, built: predicates compiled, destinations named.
pub struct Router {
    mode: Mode,
    always: Vec<String>,
    rules: Vec<Rule>,
    otherwise: Vec<String>,
}

/// The name of each destination a route's `to:` and `route:` declare, with its config.
pub fn destination_names(
    to: &[OutboundConfig],
    routing: Option<&RoutingConfig>,
) -> Vec<(String, OutboundConfig)> {
    let mut out: Vec<(String, OutboundConfig)> = to
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("to[{i}]"), c.clone()))
        .collect();
    if let Some(r) = routing {
        for (i, rule) in r.rules.iter().enumerate() {
            for (j, c) in rule.to.iter().enumerate() {
                out.push((format!("route.rules[{i}].to[{j}]"), c.clone()));
            }
        }
        for (i, c) in r.otherwise.iter().enumerate() {
            out.push((format!("route.otherwise[{i}]"), c.clone()));
        }
    }
    out
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Router {
    /// Builds the router; errors name the rule (`route.rules[1].when: ...`).
    pub fn build(
        to: &[OutboundConfig],
        routing: Option<&RoutingConfig>,
    ) -> Result<Router, (String, BuildError)> {
        let always = (0..to.len()).map(|i| format!("to[{i}]")).collect();
        let Some(r) = routing else {
            return Ok(Router {
                mode: Mode::First,
                always,
                rules: Vec::new(),
                otherwise: Vec::new(),
            });
        };
        let limits = crate::script::Limits::default();
        let engine = plain_engine();
        let mut rules = Vec::new();
        for (i, rule) in r.rules.iter().enumerate() {
            let name = format!("route.rules[{i}].when");
            let when =
                Script::compile_expression(engine.clone(), &limits, &rule.when).map_err(|e| {
                    (
                        name.clone(),
                        BuildError {
                            message: format!("expression error: {}", e.message),
                            script: Some(ScriptPosition {
                                file: None,
                                line: e.line,
                                column: e.column,
                            }),
                        },
                    )
                })?;
            if rule.to.is_empty() {
                return Err((
                    format!("route.rules[{i}].to"),
                    BuildError::new("a rule needs at least one destination in `to`"),
                ));
            }
            rules.push(Rule {
                when,
                destinations: (0..rule.to.len())
                    .map(|j| format!("route.rules[{i}].to[{j}]"))
                    .collect(),
            });
        }
        Ok(Router {
            mode: r.mode,
            always,
            rules,
            otherwise: (0..r.otherwise.len())
                .map(|i| format!("route.otherwise[{i}]"))
                .collect(),
        })
    }

    /// The destinations for `msg`, each once, in declaration order. Empty means unrouted.
    pub fn destinations(&self, msg: &Message) -> Result<Vec<String>, String> {
        let mut out = self.always.clone();
        if self.rules.is_empty() && self.otherwise.is_empty() {
            return Ok(out);
        }
        let body = if self.rules.is_empty() {
            rhai::Dynamic::UNIT
        } else {
            body_to_dynamic(msg)?
        };
        let mut matched = false;
        for (i, rule) in self.rules.iter().enumerate() {
            let (v, _) = rule
                .when
                .run(msg, body.clone())
                .map_err(|e| format!("route.rules[{i}].when: {e}"))?;
            let Some(yes) = v.clone().try_cast::<bool>() else {
                return Err(format!(
                    "route.rules[{i}].when gave {} `{v}`, not true or false",
                    v.type_name()
                ));
            };
            if yes {
                matched = true;
                for d in &rule.destinations {
                    if !out.contains(d) {
                        out.push(d.clone());
                    }
                }
                if self.mode == Mode::First {
                    break;
                }
            }
        }
        if !matched {
            out.extend(self.otherwise.iter().cloned());
        }
        Ok(out)
    }

    /// A one-line description for people (`switchyard test`).
    pub fn describe(&self) -> String {
        format!(
            "{} unconditional destination(s), {} rule(s) ({:?}), {} otherwise",
            self.always.len(),
            self.rules.len(),
            self.mode,
            self.otherwise.len()
        )
    }
}
