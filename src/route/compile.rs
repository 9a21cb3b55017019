//! A checked route file made runnable: its steps built (scripts compiled, schemas, tables and
//! stylesheets loaded), its search fields and `dedupe` key compiled, its routing rules built,
//! its destinations named. A build error is placed where the user wrote the thing that failed
//! (in a script file, inside an inline script, or at the step).

use super::file::RouteFile;
use super::{Route, Source};
use crate::adapters::outbound::DeliveryOrder;
use crate::config::{yaml, Diagnostic};
use crate::keys::{Dedupe, Index};
use crate::routing::Router;
use crate::steps::{BuildContext, BuildError, BuiltStep, StepConfig};
use std::sync::Arc;

/// Builds `file` into a [`Route`], adding to `problems` (what checking found) everything that
/// fails to build; any problem at all means no route.
pub(super) fn compile(
    file: RouteFile,
    id: String,
    version: String,
    src: &Source<'_>,
    cx: BuildContext,
    mut problems: Vec<Diagnostic>,
) -> Result<Route, Vec<Diagnostic>> {
    let mut steps = Vec::new();
    for (i, config) in file.steps.iter().enumerate() {
        let name = format!("steps[{i}].{}", config.kind());
        match config.build(&cx) {
            Ok(step) => steps.push(BuiltStep {
                name,
                step,
                class: config.class(),
            }),
            Err(e) => problems.push(step_diagnostic(src, i, &name, e)),
        }
    }
    let (index, dedupe) = keys(&file, src, &mut problems);
    let router = match Router::build(&file.to, file.route.as_ref()) {
        Ok(r) => Some(Arc::new(r)),
        Err((name, e)) => {
            let place = yaml::locate_key(src.text, "when")
                .filter(|_| name.ends_with(".when"))
                .or_else(|| yaml::locate_key(src.text, "route"));
            problems.push(src.at(place, format!("{name}: {}", e.message)));
            None
        }
    };
    let destinations = file.destinations();
    let (Some(router), true) = (router, problems.is_empty()) else {
        return Err(problems);
    };
    // Strict FIFO delivery needs the steps to finish in arrival order.
    let fifo = destinations
        .iter()
        .any(|d| d.config.delivery().ordering == Some(DeliveryOrder::Fifo));
    // A broker inbound keeps up to its window of deliveries unacknowledged until they are
    // committed; steps narrower than that window would hold the broker back, so by default
    // they run as wide as the window.
    let concurrency = file
        .concurrency
        .unwrap_or_else(|| file.from.in_flight().map_or(4, |window| window.max(4)));
    let aggregate = file.steps.iter().enumerate().find_map(|(i, c)| match c {
        StepConfig::Aggregate(c) => c.build(&cx).ok().map(|a| (i, Arc::new(a))),
        _ => None,
    });
    Ok(Route {
        id,
        description: file.description,
        version,
        file: src.path.to_path_buf(),
        from: file.from,
        steps,
        destinations,
        router,
        split_first: match file.steps.first() {
            Some(StepConfig::Split(c)) => c.build(&cx).ok().map(Arc::new),
            _ => None,
        },
        aggregate,
        on_error: file.on_error,
        retention: file.retention,
        index: Arc::new(index),
        dedupe,
        throttle: file.throttle,
        concurrency: if fifo { 1 } else { concurrency },
        context: cx,
    })
}

/// The route's compiled search fields (`index`) and `dedupe` key.
fn keys(
    file: &RouteFile,
    src: &Source<'_>,
    problems: &mut Vec<Diagnostic>,
) -> (Index, Option<Arc<Dedupe>>) {
    let mut index = Index::default();
    if file.index.is_empty() && file.dedupe.is_none() {
        return (index, None);
    }
    let limits = crate::script::Limits::default();
    let engine = crate::steps::script_options::plain_engine();
    let compile = |expr: &str| {
        crate::script::Script::compile_expression(engine.clone(), &limits, expr)
            .map_err(|e| e.message)
    };
    for (name, expr) in &file.index {
        let compiled = expr
            .as_str()
            .ok_or_else(|| "write the expression as a string".to_string())
            .and_then(compile);
        match compiled {
            Ok(s) => index.0.push((name.clone(), s)),
            Err(e) => problems.push(src.at_key(name, format!("index.{name}: {e}"))),
        }
    }
    let dedupe = file.dedupe.as_ref().and_then(|d| match compile(&d.key) {
        Ok(key) => Some(Arc::new(Dedupe {
            key,
            source: d.key.clone(),
            window: d.window.0,
        })),
        Err(e) => {
            problems.push(src.at(
                yaml::locate_in_section(src.text, "dedupe", "key"),
                format!("dedupe.key: {e}"),
            ));
            None
        }
    });
    (index, dedupe)
}

/// Places a step's build error: in the script file, at the script's position inside the
/// route file when the script is inline, or at the step's entry.
fn step_diagnostic(src: &Source<'_>, index: usize, name: &str, e: BuildError) -> Diagnostic {
    let message = format!("{name}: {}", e.message);
    let step_line = yaml::locate_list_item(src.text, "steps", index);
    if let Some(pos) = e.script {
        if let Some(file) = pos.file {
            return Diagnostic {
                file,
                line: pos.line,
                column: pos.column,
                message,
            };
        }
        let inline = step_line
            .and_then(|(l, _)| yaml::locate_inline_script(src.text, l, pos.line, pos.column));
        if inline.is_some() {
            return src.at(inline, message);
        }
    }
    src.at(step_line, message)
}
