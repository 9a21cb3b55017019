//! The `switchyard` command line: `run` the engine, `check` route files.

use crate::config::{values, Diagnostic};
use crate::engine::Engine;
use crate::route;
use crate::route::endpoints::Endpoints;
use crate::settings::{RunArgs, Settings};
use crate::store::sqlite::SqliteStore;
use crate::store::StoreLocation;
use crate::store::{MessageState, Store};
use crate::telemetry;
use crate::test_runner;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An integration engine: routes messages from inbound adapters through steps to destinations, tracking every message in a transactional store."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every route in the routes directory until Ctrl-C or SIGTERM.
    Run {
        #[command(flatten)]
        args: RunArgs,
    },
    /// Validate route files; prints `file:line:column: message` for each problem.
    Check {
        /// Route files or directories (default: the routes directory).
        paths: Vec<PathBuf>,
        /// Directory checked when no path is given.
        #[arg(long, env = "SWITCHYARD_ROUTES", default_value = "routes")]
        routes: PathBuf,
        /// Directory of named endpoints the routes may use.
        #[arg(long, env = "SWITCHYARD_ADAPTERS", default_value = "adapters")]
        adapters: PathBuf,
    },
    /// Find messages in the store, see everything about one, send them again.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Look after the store itself: `store check` reads it for damage.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy the store to FILE while the engine runs (SQLite's online backup).
    Backup {
        /// Where the copy goes; an existing file is kept unless `--force`.
        file: PathBuf,
        /// Replace FILE when it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Follow the processing log, filtered; readable lines, or `--json` to pass them through.
    Tail {
        /// Directory of the processing log.
        #[arg(long, env = "SWITCHYARD_LOGS", default_value = "logs")]
        logs: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Only this message: its id, the start of it, or its end (the 8 characters the
        /// readable lines show).
        #[arg(long = "message")]
        message: Option<String>,
        /// Only events with this outcome (`delivered`, `failed`, `dead`, `retry`, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only warnings, errors, and failed, dead or retried messages.
        #[arg(long)]
        errors: bool,
        /// Only events since this long ago (`10m`, `2h`) or this time (RFC 3339).
        #[arg(long, value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
        /// Print the JSON lines as they are.
        #[arg(long)]
        json: bool,
        /// Print what is there and stop, instead of waiting for more.
        #[arg(long)]
        no_follow: bool,
    },
    /// Run a route's steps without the store or adapters: on one input (`ROUTE --input FILE`),
    /// or as route test files (`*.test.yaml`, or directories of them); or, with `--replay`, run
    /// a route's stored messages through a candidate route file and show what it would change.
    Test {
        /// A route file with `--input`; otherwise test files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The input to run through the route's steps.
        #[arg(long)]
        input: Option<PathBuf>,
        /// A header for the input, `name=value`; repeatable.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Directory of named endpoints the routes may use.
        #[arg(long, env = "SWITCHYARD_ADAPTERS", default_value = "adapters")]
        adapters: PathBuf,
        /// Replay the stored messages of the route (the candidate file's id, or `--route`)
        /// through the candidate route file given as the path, nothing delivered, and show
        /// per message what would differ from what the route did. Exit 1 when anything does.
        #[arg(long)]
        replay: bool,
        /// With `--replay`: the route whose messages to replay (default: the candidate's id).
        #[arg(long, requires = "replay")]
        route: Option<String>,
        /// With `--replay`: messages received since this long ago (`1h`) or this time.
        #[arg(long, value_parser = parse_since, requires = "replay")]
        since: Option<std::time::SystemTime>,
        /// With `--replay`: at most this many messages, newest first.
        #[arg(long, default_value_t = 100, requires = "replay")]
        limit: usize,
        /// With `--replay`: a header name, or a JSON pointer into the body (`/processedAt`),
        /// that may differ (times, generated ids); repeatable.
        #[arg(long, requires = "replay")]
        ignore: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the JSON Schema of route files (or, with `--endpoint`, of endpoint files), for
    /// editors: point a YAML language server at it (docs/routes.md#editor-support).
    Schema {
        /// The schema of named endpoint files (`adapters/*.yaml`) instead of route files.
        #[arg(long)]
        endpoint: bool,
        /// Write both schemas into this directory (`route.schema.json`,
        /// `endpoint.schema.json`) instead of printing one.
        #[arg(long, value_name = "DIR", conflicts_with = "endpoint")]
        write: Option<PathBuf>,
    },
}

/// Where the store is: the settings file and `--data`, as for `run`.
#[derive(Debug, Clone, clap::Args)]
struct StoreArgs {
    /// Settings file (default `switchyard.yaml` when it exists).
    #[arg(long, env = "SWITCHYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of the message store (default `data`).
    #[arg(long, env = "SWITCHYARD_DATA", global = true)]
    data: Option<PathBuf>,
    /// The store: a SQLite file or a PostgreSQL URL, as for `run`.
    #[arg(long, env = "SWITCHYARD_STORE", global = true)]
    store: Option<String>,
}

impl StoreArgs {
    fn location(&self) -> Result<StoreLocation, String> {
        let args = RunArgs {
            config: self.config.clone(),
            data: self.data.clone(),
            store: self.store.clone(),
            ..RunArgs::default()
        };
        Settings::resolve(&args)
            .map(|s| s.store)
            .map_err(|d| d.to_string())
    }
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Read every page and index of a SQLite store for damage, without changing it (the
    /// engine may run meanwhile). Exit status 1 when damage is found.
    Check {
        /// Only SQLite's quick check (no matching of indexes to tables): what the engine
        /// runs at start and while running.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MessagesCommand {
    /// Messages, newest first, filtered.
    List {
        #[arg(long)]
        route: Option<String>,
        /// `received`, `delivering`, `delivered`, `failed`, `filtered`, `unrouted`, `split`, `dead`, `duplicate`.
        #[arg(long, value_parser = parse_state)]
        state: Option<MessageState>,
        /// Received since this long ago (`10m`, `2h`) or this time (RFC 3339).
        #[arg(long, value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
        /// Received until this long ago or this time.
        #[arg(long, value_parser = parse_since)]
        until: Option<std::time::SystemTime>,
        /// Text in the headers or the body.
        #[arg(long)]
        text: Option<String>,
        /// An index field, `name=value` (see the route's `index:`): a look-up, not a scan.
        #[arg(long, value_parser = parse_header)]
        field: Option<(String, String)>,
        /// A message id or its first hex digits (`0193a4f2`).
        #[arg(long, value_parser = parse_id_prefix)]
        id: Option<String>,
        /// Text in the message's last error.
        #[arg(long)]
        error: Option<String>,
        #[arg(long, default_value = "50")]
        limit: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One message: headers, bodies, every transition and delivery attempt.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Send messages through again: one by id, or all of a route in a state.
    Replay {
        /// The message; or use --route and --state.
        id: Option<Uuid>,
        /// Re-deliver to this destination only (`to[0]`) instead of running the steps again.
        #[arg(long)]
        destination: Option<String>,
        #[arg(long)]
        route: Option<String>,
        #[arg(long, value_parser = parse_state)]
        state: Option<MessageState>,
        /// At most this many messages with --route/--state.
        #[arg(long, default_value = "1000")]
        limit: usize,
    },
}

fn parse_id_prefix(s: &str) -> Result<String, String> {
    crate::store::id_range(s).map(|_| s.to_string())
}

fn parse_state(s: &str) -> Result<MessageState, String> {
    MessageState::parse(s).ok_or_else(|| {
        format!("unknown state `{s}`; use received, delivering, delivered, failed, filtered, unrouted, split or dead")
    })
}

fn messages(command: MessagesCommand, store: StoreArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let store = crate::store::open(&store.location()?, Default::default(), true)
            .await
            .map_err(|e| e.0)?;
        match command {
            MessagesCommand::List {
                route,
                state,
                since,
                until,
                text,
                field,
                id,
                error,
                limit,
                json,
            } => {
                let rows = store
                    .search(&crate::store::Search {
                        route,
                        state,
                        since,
                        until,
                        text,
                        field,
                        id_prefix: id,
                        error,
                        limit,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.0)?;
                if json {
                    for m in &rows {
                        println!("{}", crate::message_views::json_row(m));
                    }
                } else {
                    print!("{}", crate::message_views::table(&rows));
                }
                Ok(())
            }
            MessagesCommand::Show { id, json } => match store.details(id).await.map_err(|e| e.0)? {
                None => Err(format!("no message {id}")),
                Some(d) if json => {
                    println!("{}", crate::message_views::details_json(&d));
                    Ok(())
                }
                Some(d) => {
                    print!("{}", crate::message_views::details_text(&d));
                    Ok(())
                }
            },
            MessagesCommand::Replay {
                id,
                destination,
                route,
                state,
                limit,
            } => {
                let lines = crate::message_views::replay(
                    store.as_ref(),
                    id,
                    destination.as_deref(),
                    route,
                    state,
                    limit,
                )
                .await?;
                lines.iter().for_each(|l| println!("{l}"));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn backup(file: PathBuf, force: bool, store: StoreArgs) -> ExitCode {
    if file.exists() && !force {
        eprintln!(
            "error: {} exists; give another file, or --force to replace it",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let result = store.location().and_then(|location| match location {
        StoreLocation::Sqlite(path) => {
            if !path.exists() {
                return Err(format!("no store at {} (set --data or --store)", path.display()));
            }
            SqliteStore::open_shared(&path)
                .and_then(|s| s.backup(&file))
                .map_err(|e| e.0)
        }
        StoreLocation::Postgres(_) => Err(
            "`switchyard backup` copies a SQLite store; back a PostgreSQL store up with pg_dump (see docs/store.md)"
                .into(),
        ),
    });
    match result {
        Ok(()) => {
            println!("store copied to {}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn store_check(quick: bool, store: StoreArgs) -> ExitCode {
    let path = match store.location() {
        Ok(StoreLocation::Sqlite(path)) => path,
        Ok(StoreLocation::Postgres(_)) => {
            println!("a PostgreSQL store is checked by PostgreSQL itself (data checksums, amcheck); nothing to read here");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !path.exists() {
        eprintln!(
            "error: no store at {} (set --data or --store)",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let started = std::time::Instant::now();
    match crate::store::sqlite::check_file(&path, !quick, None) {
        Ok(crate::store::sqlite::Checked::Damaged(problems)) => {
            for p in &problems {
                println!("{}: {p}", path.display());
            }
            eprintln!(
                "error: {}",
                crate::store::sqlite::damage_report(
                    &path,
                    &problems,
                    "An engine refuses it at start; a running one stops its intake at its next check."
                )
            );
            ExitCode::FAILURE
        }
        Ok(_) => {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!(
                "ok: {} ({} check of {:.1} MiB in {:.1} s, no damage)",
                path.display(),
                if quick { "quick" } else { "full" },
                size as f64 / (1u64 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.0);
            ExitCode::FAILURE
        }
    }
}

fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    s.parse::<values::Since>().map(|s| s.0)
}

fn schema(endpoint: bool, write: Option<PathBuf>) -> ExitCode {
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

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not `name=value`"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            paths,
            routes,
            adapters,
        } => check(paths, routes, &Endpoints::load(&adapters)),
        Command::Messages { command, store } => messages(command, store),
        Command::Schema { endpoint, write } => schema(endpoint, write),
        Command::Backup { file, force, store } => backup(file, force, store),
        Command::Store {
            command: StoreCommand::Check { quick },
            store,
        } => store_check(quick, store),
        Command::Tail {
            logs,
            route,
            message,
            state,
            errors,
            since,
            json,
            no_follow,
        } => {
            let filter = crate::tail::Filter {
                route,
                message,
                state,
                errors,
                since,
            };
            let path = logs.join(telemetry::LOG_FILE);
            match crate::tail::run(path, filter, crate::tail::Style::auto(json), !no_follow) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Test {
            paths,
            input,
            headers,
            adapters,
            replay,
            route,
            since,
            limit,
            ignore,
            store,
        } => {
            let endpoints = Endpoints::load(&adapters);
            if replay {
                let since = since.unwrap_or_else(|| {
                    std::time::SystemTime::now() - std::time::Duration::from_secs(3600)
                });
                return test_replay(&paths, &endpoints, store, route, since, limit, ignore);
            }
            match input {
                Some(input) => test_one(&paths, &input, headers, &endpoints),
                None => test_files(&paths, &endpoints),
            }
        }
        Command::Run { args } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

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

fn check(paths: Vec<PathBuf>, routes: PathBuf, endpoints: &Endpoints) -> ExitCode {
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

fn test_one(
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
fn test_replay(
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

fn test_files(paths: &[PathBuf], endpoints: &Endpoints) -> ExitCode {
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let dirs = Settings::resolve(&args).map_err(|d| anyhow::anyhow!("{d}"))?;
    let (drain, admin) = (dirs.drain, dirs.admin.clone());
    let _log_guard = telemetry::init(Some(&dirs.logs), dirs.rotation, dirs.log_level.as_deref())?;
    let files = route::route_files(&dirs.routes).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the routes directory {}: {e} (set --routes or SWITCHYARD_ROUTES)",
            dirs.routes.display()
        )
    })?;
    let (routes, problems) = route::load_all(&files, &Endpoints::load(&dirs.adapters));
    if !problems.is_empty() {
        for d in &problems {
            tracing::error!("{d}");
        }
        anyhow::bail!(
            "{} problem(s) in the route files; `switchyard check` lists them",
            problems.len()
        );
    }
    if routes.is_empty() {
        anyhow::bail!("no route files (*.yaml) in {}", dirs.routes.display());
    }
    let store: Arc<dyn Store> = crate::store::open(&dirs.store, dirs.claims.clone(), false).await?;
    tracing::info!(store = %dirs.store, node = %dirs.claims.node, logs = %dirs.logs.join(telemetry::LOG_FILE).display(), "store open");
    let engine = match Engine::start(routes, store.clone()).await {
        Ok(e) => Arc::new(e),
        Err(e) => {
            store.close().await?;
            return Err(e);
        }
    };
    crate::reload::watch_routes(&engine, dirs.routes.clone(), dirs.adapters.clone());
    engine.keep_store_bounded(dirs.retention_every);
    engine.watch_store(dirs.store_check_every);
    let admin_stop = tokio_util::sync::CancellationToken::new();
    if let Some(admin) = admin {
        let listener = tokio::net::TcpListener::bind(&admin.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {} for the admin API: {e}", admin.listen)
            })?;
        tracing::info!(listen = %listener.local_addr()?, "admin API ready");
        if admin.token.is_none() {
            tracing::warn!("the admin API has no token (set SWITCHYARD_ADMIN_TOKEN): anyone who reaches it can pause routes and replay messages");
        }
        let access = crate::admin::Access {
            token: admin.token,
            read_token: admin.read_token,
            log: dirs.logs.join(telemetry::LOG_FILE),
            node: dirs.claims.node.clone(),
        };
        tokio::spawn(crate::admin::serve(
            listener,
            access,
            engine.clone(),
            admin_stop.clone(),
        ));
    }
    wait_for_signal().await;
    admin_stop.cancel();
    engine.shutdown(drain).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
