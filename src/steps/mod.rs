//! Steps: the ordered processing a route applies to each message after it is stored.
//!
//! Each step is a config struct (the `kind: { options }` entry of a route's `steps:` list) and
//! a [`StepConfig::build`] into a running [`Step`]. Building happens when the route file is
//! loaded — scripts are compiled, schemas and lookup tables read — so every mistake is found
//! by `switchyard check`, and nothing is compiled per message. Building has no side effects.

pub mod aggregate;
pub mod csv_to_json;
pub mod enrich;
pub mod filter;
pub mod fixed_width;
pub mod hl7;
pub mod json_to_csv;
pub mod json_to_xml;
pub mod map;
pub mod script_options;
pub mod set_header;
pub mod split;
pub mod transform;
pub mod validate;
pub mod xml_to_json;
pub mod xsd;
pub mod xslt;

use crate::message::Message;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One entry of a route's `steps:` list.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepConfig {
    /// Sets one header to a static or templated value.
    SetHeader(set_header::Config),
    /// Runs a Rhai script on the message.
    Transform(transform::Config),
    /// Checks the message against a JSON Schema, XML well-formedness or a script predicate.
    Validate(validate::Config),
    /// Builds a new JSON body field by field from paths and expressions.
    Map(map::Config),
    /// XML body to JSON.
    XmlToJson(xml_to_json::Config),
    /// JSON body to XML.
    JsonToXml(json_to_xml::Config),
    /// CSV body to a JSON array.
    CsvToJson(csv_to_json::Config),
    /// JSON array body to CSV.
    JsonToCsv(json_to_csv::Config),
    /// Fixed-width text records to a JSON array.
    FixedWidth(fixed_width::Config),
    /// A JSON array of records to fixed-width text, with the reader's layout.
    JsonToFixedWidth(fixed_width::WriteConfig),
    /// Drops messages on purpose, with a recorded reason.
    Filter(filter::Config),
    /// Turns one message into many (lines, CSV rows, JSON array items, XML elements).
    Split(split::Config),
    /// Parses HL7 v2, sets headers from MSH, optionally maps the body to JSON.
    Hl7(hl7::Config),
    /// Calls an HTTP endpoint and puts its answer into the JSON body.
    Enrich(enrich::Config),
    /// Combines messages that share a key into one (a group kept in the store).
    Aggregate(aggregate::Config),
    /// Transforms an XML body with an XSLT 1.0 stylesheet.
    Xslt(xslt::Config),
}

/// What building any component of a route may need — every step's, inbound's and outbound's
/// `build` takes it: where the route file is (for relative file names), the connections to
/// backends that only the layers above steps can make, and the listening sockets that outlive
/// a route version.
#[derive(Clone, Default)]
pub struct BuildContext {
    /// The directory of the route file.
    pub dir: PathBuf,
    /// Makes database queries (`enrich` with `query`); `None` where none may be made.
    pub databases: Option<enrich::query::Connect>,
    /// Where HTTP and TCP inbounds take their listening sockets (handed over between versions).
    pub listeners: Arc<crate::listeners::Listeners>,
}

impl fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("dir", &self.dir)
            .field("databases", &self.databases.is_some())
            .finish_non_exhaustive()
    }
}

impl BuildContext {
    pub fn new(dir: impl Into<PathBuf>) -> BuildContext {
        BuildContext {
            dir: dir.into(),
            ..BuildContext::default()
        }
    }

    pub fn resolve(&self, file: &Path) -> PathBuf {
        self.dir.join(file)
    }
}

/// Why a step could not be built; `script` points into a script when the problem is there.
#[derive(Debug, Clone)]
pub struct BuildError {
    pub message: String,
    pub script: Option<ScriptPosition>,
}

/// A position in a script: in its own file (`script_file`) or inline in the route file.
#[derive(Debug, Clone)]
pub struct ScriptPosition {
    pub file: Option<PathBuf>,
    pub line: usize,
    pub column: usize,
}

impl BuildError {
    pub fn new(message: impl Into<String>) -> BuildError {
        BuildError {
            message: message.into(),
            script: None,
        }
    }
}

impl StepConfig {
    /// The kind as written in route files.
    pub fn kind(&self) -> &'static str {
        match self {
            StepConfig::SetHeader(_) => "set_header",
            StepConfig::Transform(_) => "transform",
            StepConfig::Validate(_) => "validate",
            StepConfig::Map(_) => "map",
            StepConfig::XmlToJson(_) => "xml_to_json",
            StepConfig::JsonToXml(_) => "json_to_xml",
            StepConfig::CsvToJson(_) => "csv_to_json",
            StepConfig::JsonToCsv(_) => "json_to_csv",
            StepConfig::FixedWidth(_) => "fixed_width",
            StepConfig::JsonToFixedWidth(_) => "json_to_fixed_width",
            StepConfig::Filter(_) => "filter",
            StepConfig::Split(_) => "split",
            StepConfig::Hl7(_) => "hl7",
            StepConfig::Enrich(_) => "enrich",
            StepConfig::Aggregate(_) => "aggregate",
            StepConfig::Xslt(_) => "xslt",
        }
    }

    /// Which `on_error` setting applies when this step fails.
    pub fn class(&self) -> ErrorClass {
        match self {
            StepConfig::Validate(_) | StepConfig::Hl7(_) => ErrorClass::Validation,
            _ => ErrorClass::Transform,
        }
    }

    pub fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        Ok(match self {
            StepConfig::SetHeader(c) => Arc::new(c.build(cx)?),
            StepConfig::Transform(c) => Arc::new(c.build(cx)?),
            StepConfig::Validate(c) => Arc::new(c.build(cx)?),
            StepConfig::Map(c) => Arc::new(c.build(cx)?),
            StepConfig::XmlToJson(c) => Arc::new(c.build(cx)?),
            StepConfig::JsonToXml(c) => Arc::new(c.build(cx)?),
            StepConfig::CsvToJson(c) => Arc::new(c.build(cx)?),
            StepConfig::JsonToCsv(c) => Arc::new(c.build(cx)?),
            StepConfig::FixedWidth(c) => Arc::new(c.build(cx)?),
            StepConfig::JsonToFixedWidth(c) => Arc::new(c.build(cx)?),
            StepConfig::Filter(c) => Arc::new(c.build(cx)?),
            StepConfig::Split(c) => Arc::new(c.build(cx)?),
            StepConfig::Hl7(c) => Arc::new(c.build(cx)?),
            StepConfig::Enrich(c) => Arc::new(c.build(cx)?),
            StepConfig::Aggregate(c) => Arc::new(c.build(cx)?),
            StepConfig::Xslt(c) => Arc::new(c.build(cx)?),
        })
    }
}

/// A running step. Steps are synchronous and CPU-bound — but for `enrich`, which waits for
/// its HTTP answer — and the engine runs them on blocking threads, unless the message is
/// small and the route's steps cheap to stop (see [`placement`]).
pub trait Step: Send + Sync {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError>;

    /// Like `apply`, for steps that may also stop the message on purpose (`filter`) or turn
    /// it into several (`split`).
    fn control(&self, msg: &mut Message) -> Result<Flow, StepError> {
        self.apply(msg).map(|()| Flow::Continue)
    }

    /// What running the step may cost, which decides where the engine runs it (see
    /// [`placement`]).
    fn cost(&self) -> Cost {
        Cost::Open
    }
}

/// What running a step may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cost {
    /// A short pass over the message: no script, no look-up, no I/O.
    Pass,
    /// Runs scripts (and passes): unbounded in general, but the sandbox can stop a script
    /// part-way (`script::within_budget`).
    Script,
    /// Anything else: I/O, an external library, a fan-out.
    Open,
}

/// Largest body whose steps may run where the message arrived: parsing this much takes
/// tens of microseconds, about what the hand-over to a blocking thread and back costs.
pub const IN_PLACE_BYTES: usize = 8 * 1024;

/// Where a route's steps run for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the thread that received it: every step is a [`Cost::Pass`].
    InPlace,
    /// On the thread that received it, with its scripts stopped at a small budget (and the
    /// message then run again on a blocking thread).
    InPlaceWithinBudget,
    /// On a blocking thread.
    OffThread,
}

/// Where `steps` run for a message of `body` bytes: a small message through passes and
/// scripts only stays where it arrived, since the hand-over to a blocking thread and back
/// would cost more than the steps; anything else goes to a blocking thread.
pub fn placement(steps: &[BuiltStep], body: usize) -> Placement {
    if body > IN_PLACE_BYTES {
        return Placement::OffThread;
    }
    match steps.iter().map(|s| s.step.cost()).max() {
        None | Some(Cost::Pass) => Placement::InPlace,
        Some(Cost::Script) => Placement::InPlaceWithinBudget,
        Some(Cost::Open) => Placement::OffThread,
    }
}

/// What happens after a step.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Drop the message, with this reason.
    Filter(String),
    /// Replace the message with these children; they carry on from the next step.
    Split(Vec<Message>),
    /// The message joins its aggregate group and ends here; the group carries on from the
    /// next step once complete.
    Aggregate(crate::store::Join),
}

/// The kind of error, for the route's `on_error` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Validation,
    Transform,
}

/// Why a step failed the message; shown to people, so it says what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError(pub String);

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StepError {}

impl From<String> for StepError {
    fn from(s: String) -> Self {
        StepError(s)
    }
}

/// A step whose configuration was built, with the name it is recorded under.
#[derive(Clone)]
pub struct BuiltStep {
    /// `steps[0].transform` and the like.
    pub name: String,
    pub step: Arc<dyn Step>,
    pub class: ErrorClass,
}

impl fmt::Debug for BuiltStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What one step did to a message.
#[derive(Debug, Clone)]
pub struct StepRun {
    pub name: String,
    pub duration: std::time::Duration,
    pub error: Option<String>,
}

/// How a run of the steps ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every step passed.
    Done,
    /// A filter dropped the message.
    Filtered(String),
    /// A split made children, which carry on from step `resume_at`.
    Split {
        children: Vec<Message>,
        resume_at: usize,
    },
    /// An `aggregate` step took the message into its group.
    Aggregate(crate::store::Join),
    /// A step failed: `steps[N].kind: reason`.
    Failed { error: String, class: ErrorClass },
}

/// Applies `steps[from..]` in order, stopping at the first failure, filter or split;
/// `observe` sees each step's outcome and the message as that step left it.
pub fn run_all(
    steps: &[BuiltStep],
    from: usize,
    msg: Message,
    mut observe: impl FnMut(&StepRun, &Message),
) -> (Message, Vec<StepRun>, Outcome) {
    let mut current = msg;
    let mut runs = Vec::with_capacity(steps.len());
    for (index, built) in steps.iter().enumerate().skip(from) {
        let started = std::time::Instant::now();
        // A bug in a step must fail the message, not take the engine down.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            built.step.control(&mut current)
        }))
        .unwrap_or_else(|_| {
            Err(StepError(
                "the step panicked (a bug in Switchyard; please report it)".into(),
            ))
        });
        let (error, flow) = match result {
            Ok(flow) => (None, flow),
            Err(e) => (Some(e.0), Flow::Continue),
        };
        let run = StepRun {
            name: built.name.clone(),
            duration: started.elapsed(),
            error,
        };
        observe(&run, &current);
        let failure = run.error.as_ref().map(|e| format!("{}: {e}", run.name));
        runs.push(run);
        if let Some(error) = failure {
            let class = built.class;
            return (current, runs, Outcome::Failed { error, class });
        }
        match flow {
            Flow::Continue => {}
            Flow::Filter(reason) => {
                return (
                    current,
                    runs,
                    Outcome::Filtered(format!("{}: {reason}", built.name)),
                )
            }
            Flow::Split(children) => {
                return (
                    current,
                    runs,
                    Outcome::Split {
                        children,
                        resume_at: index + 1,
                    },
                )
            }
            Flow::Aggregate(join) => return (current, runs, Outcome::Aggregate(join)),
        }
    }
    (current, runs, Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(yaml: &[&str]) -> Vec<BuiltStep> {
        yaml.iter()
            .enumerate()
            .map(|(i, y)| {
                let cfg: StepConfig = crate::config::yaml::parse_str(y).unwrap();
                BuiltStep {
                    name: format!("steps[{i}].{}", cfg.kind()),
                    step: cfg.build(&BuildContext::default()).unwrap(),
                    class: cfg.class(),
                }
            })
            .collect()
    }

    #[test]
    fn small_messages_through_passes_and_scripts_stay_in_place() {
        use Placement::*;
        let passes = steps(&["hl7: {}", "set_header: { name: a, value: b }"]);
        assert_eq!(placement(&passes, 0), InPlace);
        assert_eq!(placement(&passes, IN_PLACE_BYTES), InPlace);
        assert_eq!(placement(&passes, IN_PLACE_BYTES + 1), OffThread);
        assert_eq!(placement(&[], 10), InPlace, "no steps: routing only");
        let scripted = steps(&["hl7: {}", "transform: { script: 'body' }"]);
        assert_eq!(placement(&scripted, 10), InPlaceWithinBudget);
        assert_eq!(placement(&scripted, IN_PLACE_BYTES + 1), OffThread);
        let calls = steps(&[
            "transform: { script: 'body' }",
            "enrich: { url: 'http://127.0.0.1:1/', into: x }",
        ]);
        assert_eq!(placement(&calls, 10), OffThread);
    }
}
