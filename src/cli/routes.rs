//! `switchyard check`, `test` and `schema`: what route authors run on their files.

use super::StoreArgs;
use crate::config::Diagnostic;
use crate::route;
use crate::route::endpoints::Endpoints;
use crate::test_runner;
use std::path::PathBuf;
use std::process::ExitCode;

/// Expands directories into their route files.
fn route_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(route::route_files(p).map_err(|e| Diagnostic {
                file: p.clone(),
                line: 1,
                column: 1,
                message: format!("cannot list route directory: {e}"),
            })?);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

pub(super) fn check(paths: Vec<PathBuf>, routes: PathBuf, endpoints: &Endpoints) -> ExitCode {
    let paths = if paths.is_empty() {
        vec![routes]
    } else {
        paths
    };
    let files = match route_files(&paths) {
        Ok(f) => f,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    let (loaded, problems) = route::load_all(&files, endpoints);
    for d in &problems {
        eprintln!("{d}");
    }
    for r in &loaded {
        println!("ok: {} (route `{}`)", r.file.display(), r.id);
    }
    if problems.is_empty() && !files.is_empty() {
        ExitCode::SUCCESS
    } else {
        if files.is_empty() {
            eprintln!(
                "no route files found in {}",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        } else {
            let bad: std::collections::BTreeSet<_> = problems.iter().map(|d| &d.file).collect();
            eprintln!("{} problem(s) in {} file(s)", problems.len(), bad.len());
        }
        ExitCode::FAILURE
    }
}

pub(super) fn test_one(
    paths: &[PathBuf],
    input: &std::path::Path,
    headers: Vec<(String, String)>,
    endpoints: &Endpoints,
) -> ExitCode {
    let [route_file] = paths else {
        eprintln!("with --input, give exactly one route file");
        return ExitCode::FAILURE;
    };
    let route = match route::load_file(route_file, endpoints) {
        Ok(r) => r,
        Err(problems) => {
            problems.iter().for_each(|d| eprintln!("{d}"));
            return ExitCode::FAILURE;
        }
    };
    let body = match std::fs::read(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read input {}: {e}", input.display());
            return ExitCode::FAILURE;
        }
    };
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
    let msg = test_runner::input_message(
        &route,
        body.into(),
        name.as_deref(),
        &headers.into_iter().collect(),
    );
    let mut out = String::new();
    let ok = test_runner::show(&route, msg, &mut out);
    print!("{out}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `test --replay`: see [`crate::replay_diff`].
pub(super) fn test_replay(
    paths: &[PathBuf],
    endpoints: &Endpoints,
    store: StoreArgs,
    route: Option<String>,
    since: std::time::SystemTime,
    limit: usize,
    ignore: Vec<String>,
) -> ExitCode {
    let [route_file] = paths else {
        eprintln!("with --replay, give exactly one route file: the candidate");
        return ExitCode::FAILURE;
    };
    let candidate = match route::load_file(route_file, endpoints) {
        Ok(r) => r,
        Err(problems) => {
            problems.iter().for_each(|d| eprintln!("{d}"));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = crate::replay_diff::Options {
        route: route.unwrap_or_else(|| candidate.id.clone()),
        since,
        limit,
        ignore,
    };
    let result = runtime.block_on(async {
        let store = crate::store::open(&store.location()?, Default::default(), true)
            .await
            .map_err(|e| e.0)?;
        let results = crate::replay_diff::compare(store.as_ref(), &candidate, &opts).await;
        let _ = store.close().await;
        results
    });
    match result {
        Ok(results) => {
            println!(
                "route `{}`: {} message(s) received since {} through {} (version {}), nothing delivered\n",
                opts.route,
                results.len(),
                humantime::format_rfc3339_seconds(since),
                route_file.display(),
                candidate.version
            );
            print!("{}", crate::replay_diff::report(&results));
            let differ = results
                .iter()
                .any(|r| matches!(r.verdict, crate::replay_diff::Verdict::Different(_)));
            if differ {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn test_files(paths: &[PathBuf], endpoints: &Endpoints) -> ExitCode {
    let files = match test_runner::test_files(paths) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("no test files (*.test.yaml) found");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("cannot list test files: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        match test_runner::run_file(file, endpoints) {
            Err(problems) => {
                problems.iter().for_each(|d| println!("ERROR {d}"));
                failed += 1;
            }
            Ok(results) => {
                for r in results {
                    match r.problem {
                        None => {
                            passed += 1;
                            println!("ok    {}: {}", file.display(), r.name);
                        }
                        Some(p) => {
                            failed += 1;
                            println!("FAIL  {}: {}\n      {p}", file.display(), r.name);
                        }
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub(super) fn schema(endpoint: bool, write: Option<PathBuf>) -> ExitCode {
    use crate::route::schema::{to_text, Kind};
    let Some(dir) = write else {
        print!(
            "{}",
            to_text(if endpoint {
                Kind::Endpoint
            } else {
                Kind::Route
            })
        );
        return ExitCode::SUCCESS;
    };
    for kind in [Kind::Route, Kind::Endpoint] {
        let path = dir.join(kind.file_name());
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, to_text(kind)))
        {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
