//! `switchyard test`: runs a route's steps without the store or any adapter.
//!
//! Two uses: `switchyard test ROUTE --input FILE` shows what each step makes of one input, and
//! `switchyard test FILE.test.yaml...` runs route test files — inputs with the output or the
//! failure they must give — and fails on any mismatch, for route authors' own CI.

use crate::config::{yaml, Diagnostic};
use crate::message::{Headers, Message};
use crate::route::{self, Route};
use crate::steps::{self, Outcome, StepRun};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

mod compare;
pub use compare::json_difference;
use compare::{compare_json, first_text_difference, Expected};

/// A route test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The route under test, relative to the test file.
    pub route: PathBuf,
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows, for the report.
    pub name: String,
    /// The input body from a file, relative to the test file.
    #[serde(default)]
    pub input: Option<PathBuf>,
    /// The input body inline (instead of `input`).
    #[serde(default)]
    pub body: Option<String>,
    /// Headers the message arrives with. `file.name` defaults to the input file's name.
    #[serde(default)]
    pub headers: Headers,
    /// Instead of one input: the members of one aggregate group, in order. Each runs the
    /// steps up to the route's `aggregate` step and must join the same group; the group is
    /// combined and runs the rest, and `expect` is about the group's message.
    #[serde(default)]
    pub group: Vec<Member>,
    /// What the steps must produce.
    pub expect: Expect,
}

/// One member of a case's aggregate group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The body from a file, relative to the test file.
    #[serde(default)]
    pub input: Option<PathBuf>,
    /// The body inline.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: Headers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The output body: text, or a map or list compared as JSON.
    #[serde(default)]
    pub body: Option<crate::config::yaml::Value>,
    /// The output body from a file, relative to the test file.
    #[serde(default)]
    pub body_file: Option<PathBuf>,
    /// Headers the output must have, with these values (others are not checked).
    #[serde(default)]
    pub headers: Headers,
    /// The message must fail, with an error containing this text.
    #[serde(default)]
    pub error: Option<String>,
    /// The destinations routing must pick, by name (`to[0]`, `route.rules[1].to[0]`, ...).
    #[serde(default)]
    pub destinations: Option<Vec<String>>,
    /// The message must be filtered, with a reason containing this text.
    #[serde(default)]
    pub filtered: Option<String>,
    /// The message must be unrouted (no rule matched and no `otherwise`).
    #[serde(default)]
    pub unrouted: bool,
    /// A split must make this many children (each then runs the remaining steps).
    #[serde(default)]
    pub children: Option<usize>,
    /// The route's `dedupe` key of the input (checked before the steps, as at intake).
    #[serde(default)]
    pub dedupe_key: Option<String>,
    /// The message must join the aggregate group of this key (the `aggregate` step). A test
    /// runs one message, so the group's combined message is not run.
    #[serde(default)]
    pub aggregate_key: Option<String>,
}

/// Where a message ended up in a simulated run.
#[derive(Debug)]
pub enum End {
    Routed {
        msg: Message,
        destinations: Vec<String>,
    },
    Unrouted {
        msg: Message,
    },
    Filtered(String),
    Failed(String),
    /// Each child's own end, in order.
    Split(Vec<End>),
    /// Joined the aggregate group of `key` (and completes it, by `when`).
    Aggregated {
        key: String,
        closes: bool,
    },
}

/// Runs `msg` through the route's steps from `from` and through routing, as the engine
/// would, without storing or sending anything. `observe` sees each step.
pub fn simulate(
    route: &Route,
    msg: Message,
    from: usize,
    observe: &mut dyn FnMut(&StepRun, &Message),
) -> End {
    let (out, _, outcome) = steps::run_all(&route.steps, from, msg, |r, m| observe(r, m));
    match outcome {
        Outcome::Failed { error, .. } => End::Failed(error),
        Outcome::Filtered(reason) => End::Filtered(reason),
        Outcome::Split {
            children,
            resume_at,
        } => End::Split(
            children
                .into_iter()
                .map(|c| simulate(route, c, resume_at, &mut |_, _| {}))
                .collect(),
        ),
        Outcome::Aggregate(join) => End::Aggregated {
            key: join.key,
            closes: join.closes,
        },
        Outcome::Done => match route.router.destinations(&out) {
            Err(e) => End::Failed(e),
            Ok(d) if d.is_empty() => End::Unrouted { msg: out },
            Ok(destinations) => End::Routed {
                msg: out,
                destinations,
            },
        },
    }
}

/// The message a test input becomes: the same headers the file adapter would set.
pub fn input_message(route: &Route, body: Bytes, name: Option<&str>, headers: &Headers) -> Message {
    let mut msg = Message::new(&route.id, body);
    if let Some(name) = name {
        msg.headers.insert("file.name".into(), name.to_string());
        msg.headers
            .insert("file.size".into(), msg.body.len().to_string());
    }
    for (k, v) in headers {
        msg.headers.insert(k.clone(), v.clone());
    }
    msg
}

/// Shows each step's effect on one input. Returns whether the steps succeeded.
pub fn show(route: &Route, msg: Message, out: &mut String) -> bool {
    let _ = writeln!(
        out,
        "route `{}` ({}), input of {} bytes",
        route.id,
        route.file.display(),
        msg.body.len()
    );
    let mut before = msg.headers.clone();
    let mut before_body = msg.body.clone();
    let end = simulate(route, msg, 0, &mut |run: &StepRun, m: &Message| {
        match &run.error {
            None => {
                let _ = writeln!(
                    out,
                    "\n{}: ok ({:.3} ms)",
                    run.name,
                    run.duration.as_secs_f64() * 1e3
                );
            }
            Some(e) => {
                let _ = writeln!(out, "\n{}: FAILED: {e}", run.name);
                return;
            }
        }
        for (k, v) in &m.headers {
            if before.get(k) != Some(v) {
                let _ = writeln!(out, "  header {k} = {v}");
            }
        }
        for k in before.keys().filter(|k| !m.headers.contains_key(*k)) {
            let _ = writeln!(out, "  header {k} removed");
        }
        before = m.headers.clone();
        if m.body == before_body {
            let _ = writeln!(out, "  body unchanged");
        } else {
            let _ = write!(out, "  body:\n{}", indent(&preview(m)));
            before_body = m.body.clone();
        }
    });
    let _ = writeln!(out);
    describe_end(&end, out, "")
}

/// Prints where a message ended; returns whether it ended well.
fn describe_end(end: &End, out: &mut String, prefix: &str) -> bool {
    match end {
        End::Routed { destinations, .. } => {
            let _ = writeln!(
                out,
                "{prefix}result: ok; would be delivered to {}",
                destinations.join(", ")
            );
            true
        }
        End::Unrouted { .. } => {
            let _ = writeln!(
                out,
                "{prefix}result: unrouted (no rule matched and there is no `otherwise`)"
            );
            true
        }
        End::Filtered(reason) => {
            let _ = writeln!(out, "{prefix}result: filtered: {reason}");
            true
        }
        End::Failed(e) => {
            let _ = writeln!(out, "{prefix}result: failed: {e}");
            false
        }
        End::Aggregated { key, closes } => {
            let _ = writeln!(
                out,
                "{prefix}result: joins the aggregate group of key `{key}`{}",
                if *closes {
                    " and completes it (`when`)"
                } else {
                    ""
                }
            );
            true
        }
        End::Split(children) => {
            let _ = writeln!(
                out,
                "{prefix}result: split into {} messages; each ran the remaining steps:",
                children.len()
            );
            let mut ok = true;
            for (i, c) in children.iter().enumerate() {
                if i < 20 {
                    if let End::Routed { msg, .. } | End::Unrouted { msg } = c {
                        let _ = writeln!(out, "  child {}: {}", i + 1, one_line(msg));
                    }
                    ok &= describe_end(c, out, &format!("  child {}: ", i + 1));
                } else {
                    ok &= !matches!(c, End::Failed(_));
                }
            }
            if children.len() > 20 {
                let _ = writeln!(out, "  ... and {} more", children.len() - 20);
            }
            ok
        }
    }
}

fn one_line(m: &Message) -> String {
    let text = String::from_utf8_lossy(&m.body);
    let mut line: String = text.chars().take(120).filter(|c| *c != '\n').collect();
    if text.chars().count() > 120 {
        line.push('…');
    }
    line
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// The body for people: pretty JSON when it is JSON, else text; long bodies are cut.
fn preview(m: &Message) -> String {
    const MAX: usize = 4096;
    let text = match serde_json::from_slice::<Value>(&m.body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&m.body).into_owned(),
    };
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}\n… ({} more bytes)", &text[..cut], text.len() - cut)
    } else {
        text
    }
}

/// The outcome of one case.
pub struct CaseResult {
    pub name: String,
    pub problem: Option<String>,
}

/// Runs a test file; an error means the file itself (or its route) could not be used.
pub fn run_file(
    path: &Path,
    endpoints: &route::endpoints::Endpoints,
) -> Result<Vec<CaseResult>, Vec<Diagnostic>> {
    let diag = |message: String| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message,
        }]
    };
    let source =
        std::fs::read_to_string(path).map_err(|e| diag(format!("cannot read test file: {e}")))?;
    let file: TestFile = yaml::parse(path, &source).map_err(|d| vec![d])?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let route = route::load_file(&base.join(&file.route), endpoints)?;
    let mut results = Vec::new();
    for case in &file.cases {
        let problem = run_case(&route, &base, case).err();
        results.push(CaseResult {
            name: case.name.clone(),
            problem,
        });
    }
    Ok(results)
}

/// A case's input body, from `input` (a file) or `body` (inline), and the file's name.
fn read_input(
    base: &Path,
    input: Option<&Path>,
    body: Option<&str>,
) -> Result<(Bytes, Option<String>), String> {
    match (input, body) {
        (Some(file), None) => {
            let p = base.join(file);
            let bytes =
                std::fs::read(&p).map_err(|e| format!("cannot read input {}: {e}", p.display()))?;
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            Ok((Bytes::from(bytes), name))
        }
        (None, Some(text)) => Ok((Bytes::from(text.to_string()), None)),
        _ => Err("give exactly one of `input` (a file) or `body` (inline)".into()),
    }
}

/// Runs a case's `group` as the engine would run one aggregate group: each member up to the
/// `aggregate` step, the group combined (`aggregate.completed_by` is `test`), then the rest.
fn simulate_group(route: &Route, base: &Path, case: &Case) -> Result<End, String> {
    let (at, step) = route
        .aggregate
        .clone()
        .ok_or("the case has a `group`, but the route has no `aggregate` step")?;
    let mut key = None;
    let mut members = Vec::new();
    for (i, m) in case.group.iter().enumerate() {
        let (body, name) = read_input(base, m.input.as_deref(), m.body.as_deref())
            .map_err(|e| format!("group member {}: {e}", i + 1))?;
        let msg = input_message(route, body, name.as_deref(), &m.headers);
        let (out, _, outcome) = steps::run_all(&route.steps, 0, msg, |_, _| {});
        match outcome {
            Outcome::Aggregate(join) => {
                if key.get_or_insert_with(|| join.key.clone()) != &join.key {
                    return Err(format!(
                        "group member {} joins the group of key `{}`, not `{}`: a case's group has one key",
                        i + 1,
                        join.key,
                        key.unwrap_or_default()
                    ));
                }
                members.push(out);
            }
            Outcome::Failed { error, .. } => {
                return Err(format!("group member {} failed: {error}", i + 1))
            }
            other => {
                return Err(format!(
                    "group member {} did not reach the `aggregate` step ({other:?})",
                    i + 1
                ))
            }
        }
    }
    let group = crate::store::Group {
        id: uuid::Uuid::now_v7(),
        key: key.ok_or("`group` is empty")?,
        completed_by: "test".into(),
        members,
    };
    let (headers, body) = match step.combine(&group) {
        Ok(combined) => combined,
        Err(e) => return Ok(End::Failed(format!("steps[{at}].aggregate: {e}"))),
    };
    let mut msg = Message::new(&route.id, body);
    msg.id = group.id;
    msg.headers = headers;
    Ok(simulate(route, msg, at + 1, &mut |_, _| {}))
}

fn run_case(route: &Route, base: &Path, case: &Case) -> Result<(), String> {
    let expect = &case.expect;
    let end = if case.group.is_empty() {
        let (body, name) = read_input(base, case.input.as_deref(), case.body.as_deref())?;
        let msg = input_message(route, body, name.as_deref(), &case.headers);
        if let Some(wanted) = &expect.dedupe_key {
            let dedupe = route
                .dedupe
                .as_ref()
                .ok_or("`expect.dedupe_key` is given, but the route has no `dedupe`")?;
            let key = dedupe.key(&msg)?;
            if key.value != *wanted {
                return Err(format!("the dedupe key is `{}`, not `{wanted}`", key.value));
            }
        }
        simulate(route, msg, 0, &mut |_, _| {})
    } else if case.input.is_some() || case.body.is_some() {
        return Err("give either `group` or one input (`input` or `body`), not both".into());
    } else {
        simulate_group(route, base, case)?
    };
    let out = match (end, &expect.error) {
        (End::Failed(actual), Some(wanted)) => {
            return if actual.contains(wanted.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "failed as expected, but with `{actual}`, which does not contain `{wanted}`"
                ))
            };
        }
        (End::Failed(actual), None) => return Err(format!("the steps failed: {actual}")),
        (End::Split(children), wanted) => {
            let failures: Vec<String> = children
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c {
                    End::Failed(e) => Some(format!("child {}: {e}", i + 1)),
                    _ => None,
                })
                .collect();
            if let Some(wanted) = wanted {
                return if failures.iter().any(|f| f.contains(wanted.as_str())) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected a failure containing `{wanted}`; child failures: {failures:?}"
                    ))
                };
            }
            if let Some(first) = failures.first() {
                return Err(first.clone());
            }
            return match expect.children {
                Some(n) if n != children.len() => Err(format!(
                    "split into {} children, expected {n}",
                    children.len()
                )),
                _ => Ok(()),
            };
        }
        (_, Some(wanted)) => {
            return Err(format!(
                "expected a failure containing `{wanted}`, but the steps succeeded"
            ))
        }
        (End::Aggregated { key, .. }, _) => {
            return match &expect.aggregate_key {
                Some(w) if *w == key => Ok(()),
                Some(w) => Err(format!("joins the group of key `{key}`, not `{w}`")),
                None => Err(format!(
                    "the message joins the aggregate group of key `{key}`; expect `aggregate_key: {key}` (a test runs one message, not its group)"
                )),
            };
        }
        (End::Filtered(reason), _) => {
            return match &expect.filtered {
                Some(w) if reason.contains(w.as_str()) => Ok(()),
                Some(w) => Err(format!(
                    "filtered with `{reason}`, which does not contain `{w}`"
                )),
                None => Err(format!("the message was filtered: {reason}")),
            };
        }
        (End::Unrouted { msg }, _) => {
            if !expect.unrouted {
                return Err(
                    "the message was unrouted: no rule matched and there is no `otherwise`".into(),
                );
            }
            msg
        }
        (End::Routed { msg, destinations }, _) => {
            if expect.unrouted {
                return Err(format!(
                    "expected unrouted, but it goes to {}",
                    destinations.join(", ")
                ));
            }
            if let Some(want) = &expect.destinations {
                if *want != destinations {
                    return Err(format!(
                        "routed to [{}], expected [{}]",
                        destinations.join(", "),
                        want.join(", ")
                    ));
                }
            }
            msg
        }
    };
    if let Some(w) = &expect.filtered {
        return Err(format!(
            "expected the message to be filtered (`{w}`), but it was not"
        ));
    }
    if let Some(n) = expect.children {
        return Err(format!(
            "expected a split into {n} children, but there was no split"
        ));
    }
    for (k, v) in &expect.headers {
        match out.header(k) {
            Some(actual) if actual == v => {}
            Some(actual) => return Err(format!("header `{k}` is `{actual}`, expected `{v}`")),
            None => return Err(format!("header `{k}` is missing, expected `{v}`")),
        }
    }
    let expected = match (&expect.body, &expect.body_file) {
        (Some(_), Some(_)) => return Err("give `body` or `body_file` in `expect`, not both".into()),
        (Some(crate::config::yaml::Value::String(s)), None) => Some(Expected::Text(s.clone())),
        (Some(other), None) => Some(Expected::Json(
            serde_json::to_value(other).map_err(|e| format!("expected body: {e}"))?,
        )),
        (None, Some(file)) => {
            let p = base.join(file);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Some(Expected::Text(text))
        }
        (None, None) => None,
    };
    match expected {
        None => Ok(()),
        Some(Expected::Json(want)) => compare_json(&want, &out),
        Some(Expected::Text(want)) => match serde_json::from_str::<Value>(&want) {
            Ok(want) if serde_json::from_slice::<Value>(&out.body).is_ok() => {
                compare_json(&want, &out)
            }
            _ => {
                let actual = String::from_utf8_lossy(&out.body);
                if actual.trim_end() == want.trim_end() {
                    Ok(())
                } else {
                    Err(first_text_difference(&want, &actual))
                }
            }
        },
    }
}

/// Test files in the given paths: files as they are, directories' `*.test.yaml`.
pub fn test_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.to_string_lossy().ends_with(".test.yaml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}
