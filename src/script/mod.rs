//! Rhai scripting: the sandboxed engine, compiled scripts, and how a message is shown to a
//! script and read back.
//!
//! A script sees `body` (a map or array when the body is JSON, else a string), `headers` (a
//! map of strings, writable), `id` and `route`. Scripts are compiled once when the route is
//! loaded; a syntax error is a load error with its line and column. At run time the engine
//! enforces limits — operations, call depth, expression depth, string/array/map sizes and a
//! wall-clock timeout — and has no file, network or module access, so an endless loop or a
//! runaway allocation fails the one message, not the engine.

pub mod helpers;
pub mod lookup;

use crate::config::values::{ByteSize, Duration};
use crate::message::Message;
use rhai::{Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

/// Sandbox limits for a step's scripts.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Operations one run may take (default 1,000,000) — stops endless loops.
    pub max_operations: u64,
    /// Deepest function call nesting (default 32).
    pub max_call_depth: usize,
    /// Longest string a script may build (default `16MiB`).
    pub max_string_size: ByteSize,
    /// Most items in one array (default 100,000).
    pub max_array_size: usize,
    /// Most entries in one map (default 100,000).
    pub max_map_size: usize,
    /// Longest one run may take (default `1s`).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_depth: 32,
            max_string_size: ByteSize(16 << 20),
            max_array_size: 100_000,
            max_map_size: 100_000,
            timeout: Duration::from_secs(1),
        }
    }
}

thread_local! {
    /// When the script running on this thread must stop; checked from `on_progress`.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Set by [`within_budget`]: when a script on this thread is stopped so that its work can
    /// be run again elsewhere, and whether that happened.
    static BUDGET: Cell<Option<Instant>> = const { Cell::new(None) };
    static OVER_BUDGET: Cell<bool> = const { Cell::new(false) };
    /// What scripts printed within a budget: logged once the run stands, dropped if it is
    /// run again, so that nothing is logged twice.
    static HELD: RefCell<Vec<Printed>> = const { RefCell::new(Vec::new()) };
}

enum Printed {
    Print(String),
    Debug(String, Position),
}

fn log(p: Printed) {
    match p {
        Printed::Print(s) => tracing::info!(target: "switchyard::script", "{s}"),
        Printed::Debug(s, pos) => {
            tracing::debug!(target: "switchyard::script", position = %pos, "{s}")
        }
    }
}

fn print_or_hold(p: Printed) {
    if BUDGET.with(|b| b.get().is_some()) {
        HELD.with(|h| h.borrow_mut().push(p));
    } else {
        log(p);
    }
}

/// Runs `f` — synchronous work on this thread that may run scripts — with every script
/// stopped once `budget` has passed since the start. `None` when one was: `f`'s result is
/// then partial and to be thrown away, and the work run again without a budget. Lets a
/// thread that must stay responsive try cheap work itself (see `steps::placement`).
pub fn within_budget<R>(budget: std::time::Duration, f: impl FnOnce() -> R) -> Option<R> {
    BUDGET.with(|b| b.set(Some(Instant::now() + budget)));
    OVER_BUDGET.with(|o| o.set(false));
    let result = f();
    BUDGET.with(|b| b.set(None));
    let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
    if OVER_BUDGET.with(|o| o.replace(false)) {
        return None;
    }
    held.into_iter().for_each(log);
    Some(result)
}

/// What `reject("reason")` throws, told apart from script errors when it surfaces.
#[derive(Debug, Clone)]
struct Rejected(String);

/// Builds a sandboxed engine with every helper registered.
pub fn engine(limits: &Limits, tables: Arc<lookup::Tables>) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(limits.max_string_size.0 as usize)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(0)
        .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new())
        .set_strict_variables(true);
    // `eval` would compile code at run time, out of reach of the load-time checks.
    engine.disable_symbol("eval");
    engine.on_progress(|ops| {
        if ops % 1024 != 0 {
            return None;
        }
        let now = Instant::now();
        if BUDGET.with(|b| b.get().is_some_and(|t| now > t)) {
            OVER_BUDGET.with(|o| o.set(true));
            return Some(Dynamic::from("budget"));
        }
        DEADLINE.with(|d| match d.get() {
            Some(t) if now > t => Some(Dynamic::from("timeout")),
            _ => None,
        })
    });
    engine.on_print(|s| print_or_hold(Printed::Print(s.to_string())));
    engine.on_debug(|s, _src, pos| print_or_hold(Printed::Debug(s.to_string(), pos)));
    engine.register_fn(
        "reject",
        |reason: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            Err(EvalAltResult::ErrorRuntime(
                Dynamic::from(Rejected(reason.to_string())),
                Position::NONE,
            )
            .into())
        },
    );
    helpers::register(&mut engine);
    lookup::register(&mut engine, tables);
    engine
}

/// A compile error with its position in the script (1-based).
#[derive(Debug, Clone)]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A compiled script or expression, ready to run on messages.
pub struct Script {
    engine: Arc<Engine>,
    ast: AST,
    limits: Limits,
    /// The script names `headers`: only then are the message's headers made into a map for
    /// it (and read back). Most transforms touch the body alone, and the copy both ways was
    /// a third of a small transform's time.
    uses_headers: bool,
}

/// Why a run did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The script called `reject(reason)`.
    Rejected(String),
    /// The script failed; the text names the script position and the message id.
    Failed(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Rejected(r) => write!(f, "rejected by the script: {r}"),
            RunError::Failed(e) => f.write_str(e),
        }
    }
}

/// The variables a script sees. Names are fixed so `strict_variables` can check scripts at
/// load time.
fn declared_scope(headers: bool) -> Scope<'static> {
    let mut scope = Scope::new();
    scope.push("body", Dynamic::UNIT);
    if headers {
        scope.push("headers", Map::new());
    }
    // Plain variables here, constants at run time: the optimizer would otherwise fold these
    // placeholder values into the compiled script.
    scope.push("id", String::new());
    scope.push("route", String::new());
    scope
}

impl Script {
    /// Compiles a whole script.
    pub fn compile(
        engine: Arc<Engine>,
        limits: &Limits,
        source: &str,
    ) -> Result<Script, CompileError> {
        Script::compile_declaring(engine, limits, source, &[])
    }

    /// Compiles a whole script that also sees the variables `more` (given to
    /// [`Script::run_with`]).
    pub fn compile_declaring(
        engine: Arc<Engine>,
        limits: &Limits,
        source: &str,
        more: &[&'static str],
    ) -> Result<Script, CompileError> {
        Script::build(engine, limits, |engine, headers| {
            let mut scope = declared_scope(headers);
            for name in more {
                scope.push(*name, Dynamic::UNIT);
            }
            engine.compile_with_scope(&scope, source)
        })
    }

    /// Compiles one expression (no statements), as the `map` step uses.
    pub fn compile_expression(
        engine: Arc<Engine>,
        limits: &Limits,
        source: &str,
    ) -> Result<Script, CompileError> {
        Script::build(engine, limits, |engine, headers| {
            engine.compile_expression_with_scope(&declared_scope(headers), source)
        })
    }

    /// `compile` with `headers` in scope gives the script; without them, whether it names
    /// them: variables are strict, so a script that compiles without `headers` never reads them.
    fn build(
        engine: Arc<Engine>,
        limits: &Limits,
        compile: impl Fn(&Engine, bool) -> Result<AST, rhai::ParseError>,
    ) -> Result<Script, CompileError> {
        let ast = compile(&engine, true).map_err(compile_error)?;
        let uses_headers = compile(&engine, false).is_err();
        Ok(Script {
            engine,
            ast,
            limits: limits.clone(),
            uses_headers,
        })
    }

    /// Runs on `msg` with `body` already converted; returns the script's value and the scope
    /// as the script left it.
    pub fn run(&self, msg: &Message, body: Dynamic) -> Result<(Dynamic, Scope<'static>), RunError> {
        self.run_with(msg, body, Vec::new())
    }

    /// As [`Script::run`], with more variables in scope (`answer` for `enrich`'s `merge`).
    pub fn run_with(
        &self,
        msg: &Message,
        body: Dynamic,
        more: Vec<(&'static str, Dynamic)>,
    ) -> Result<(Dynamic, Scope<'static>), RunError> {
        let mut scope = Scope::new();
        scope.push("body", body);
        for (name, value) in more {
            scope.push(name, value);
        }
        if self.uses_headers {
            scope.push("headers", headers_map(msg));
        }
        scope.push_constant("id", msg.id.to_string());
        scope.push_constant("route", msg.route.clone());
        DEADLINE.with(|d| d.set(Some(Instant::now() + self.limits.timeout.0)));
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &self.ast);
        DEADLINE.with(|d| d.set(None));
        match result {
            Ok(v) => Ok((v, scope)),
            Err(e) => Err(self.explain(*e, msg)),
        }
    }

    fn explain(&self, e: EvalAltResult, msg: &Message) -> RunError {
        let inner = e.unwrap_inner();
        if let EvalAltResult::ErrorRuntime(v, _) = inner {
            if let Some(r) = v.clone().try_cast::<Rejected>() {
                return RunError::Rejected(r.0);
            }
        }
        let pos = match inner.position() {
            p if !p.is_none() => p,
            _ => e.position(),
        };
        let what = match inner {
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "stopped after {} operations (limits.max_operations); is there an endless loop?",
                self.limits.max_operations
            ),
            EvalAltResult::ErrorTerminated(..) => format!(
                "stopped after running longer than {:?} (limits.timeout)",
                self.limits.timeout.0
            ),
            other => {
                // The position is reported once, in front, in the engine's own words.
                let text = other.to_string();
                match text.rfind(" (line ") {
                    Some(i) if text.ends_with(')') => text[..i].to_string(),
                    _ => text,
                }
            }
        };
        let at = match (pos.line(), pos.position()) {
            (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
            (Some(l), None) => format!(" at line {l}"),
            _ => String::new(),
        };
        RunError::Failed(format!("script error{at} (message {}): {what}", msg.id))
    }
}

fn compile_error(e: rhai::ParseError) -> CompileError {
    let pos = e.position();
    CompileError {
        line: pos.line().unwrap_or(1),
        column: pos.position().unwrap_or(1),
        message: e.0.to_string(),
    }
}

fn headers_map(msg: &Message) -> Map {
    msg.headers
        .iter()
        .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
        .collect()
}

/// The body as a script sees it: a map or array when it is JSON (by `content-type`, or by
/// its look when there is none), else a string.
pub fn body_to_dynamic(msg: &Message) -> Result<Dynamic, String> {
    let text = msg.body_text()?;
    let looks_json = msg.header("content-type").is_none()
        && matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
    if msg.is_json() || looks_json {
        // Straight from JSON text to script values: no intermediate tree.
        match serde_json::from_str::<Dynamic>(text) {
            Ok(v) => return Ok(v),
            Err(e) if msg.is_json() || e.to_string().starts_with("recursion limit exceeded") => {
                return Err(crate::message::json_error("body", &e))
            }
            Err(_) => {}
        }
    }
    Ok(Dynamic::from(text.to_string()))
}

/// A script value as JSON.
pub fn to_json(v: &Dynamic) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot turn {} into JSON: {e}", v.type_name()))
}

/// Writes the scope's `body` and `headers` back into the message (`headers` only when the
/// script had them: one that never names them leaves the message's as they are).
pub fn write_back(msg: &mut Message, scope: &mut Scope) -> Result<(), String> {
    // Take the values out of the scope rather than copy them: the scope is done with.
    if let Some(headers) = scope.get_mut("headers").map(std::mem::take) {
        let Some(headers) = headers.try_cast::<Map>() else {
            return Err("`headers` must stay a map".into());
        };
        msg.headers = headers
            .into_iter()
            .map(|(k, v)| {
                let v = if v.is_string() {
                    v.into_string().unwrap_or_default()
                } else {
                    v.to_string()
                };
                (k.to_string(), v)
            })
            .collect();
    }
    let body = scope
        .get_mut("body")
        .map(std::mem::take)
        .unwrap_or_default();
    if body.is_map() || body.is_array() {
        let json = serde_json::to_vec(&body)
            .map_err(|e| format!("cannot turn the body into JSON: {e}"))?;
        msg.body = bytes::Bytes::from(json);
        msg.headers
            .insert("content-type".into(), "application/json".into());
    } else if body.is_unit() {
        msg.body = bytes::Bytes::new();
    } else if body.is_string() {
        msg.body = bytes::Bytes::from(body.into_string().unwrap_or_default().into_bytes());
    } else if body.is_blob() {
        msg.body = bytes::Bytes::from(body.cast::<rhai::Blob>());
    } else {
        msg.body = bytes::Bytes::from(body.to_string().into_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn script(source: &str) -> Script {
        let limits = Limits {
            max_operations: 100_000_000,
            ..Limits::default()
        };
        let engine = Arc::new(engine(&limits, Arc::new(lookup::Tables::default())));
        Script::compile(engine, &limits, source).unwrap()
    }

    fn run(s: &Script) -> Result<(Dynamic, Scope<'static>), RunError> {
        s.run(&Message::new("r", bytes::Bytes::new()), Dynamic::UNIT)
    }

    #[test]
    fn a_budget_stops_a_long_script_and_lets_a_short_one_finish() {
        let long = script("let i = 0; while i < 10000000 { i += 1; } i");
        let t = Instant::now();
        assert!(within_budget(Duration::from_micros(250), || run(&long)).is_none());
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        let short = script("40 + 2");
        let (v, _) = within_budget(Duration::from_micros(250), || run(&short))
            .expect("within budget")
            .unwrap();
        assert_eq!(v.as_int().unwrap(), 42);
        // Outside a budget the same long script is only held to its own limits.
        let counted = script("let i = 0; while i < 200000 { i += 1; } i");
        assert_eq!(run(&counted).unwrap().0.as_int().unwrap(), 200_000);
    }

    #[test]
    fn headers_are_given_to_scripts_that_name_them() {
        let mut msg = Message::new("r", bytes::Bytes::from_static(b"{}"));
        msg.headers.insert("k".into(), "v".into());
        let out = |source: &str, given: bool| {
            let mut m = msg.clone();
            let s = script(source);
            assert_eq!(s.uses_headers, given, "{source}");
            let body = body_to_dynamic(&m).unwrap();
            let (_, mut scope) = s.run(&m, body).unwrap();
            write_back(&mut m, &mut scope).unwrap();
            m.headers
        };
        // Not named: the message's headers stay as they were.
        assert_eq!(out("body.x = 1;", false)["k"], "v");
        assert_eq!(out("headers.k2 = headers.k + \"2\";", true)["k2"], "v2");
        // A script's own top-level `headers` replaces them, as when it shadowed the given one.
        let own = out("let headers = #{ only: \"this\" };", false);
        assert_eq!(
            (own.get("k"), own.get("only")),
            (None, Some(&"this".to_string()))
        );
    }

    #[test]
    fn what_a_stopped_run_printed_is_dropped() {
        let long = script("print(\"started\"); let i = 0; while i < 10000000 { i += 1; }");
        assert!(within_budget(Duration::from_micros(250), || run(&long)).is_none());
        assert!(HELD.with(|h| h.borrow().is_empty()));
        let short = script("print(\"done\")");
        assert!(within_budget(Duration::from_millis(250), || run(&short)).is_some());
        assert!(
            HELD.with(|h| h.borrow().is_empty()),
            "logged once the run stood"
        );
    }
}
