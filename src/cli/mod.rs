//! The `switchyard` command line: the arguments and which command runs. Each command's work is
//! in its own file: `run` in [`run`], route authors' `check`, `test` and `schema` in
//! [`routes`], operators' `messages`, `backup` and `store check` in [`store`].

mod routes;
mod run;
mod store;

use routes::{check, schema, test_files, test_one, test_replay};
use run::run;
use store::{backup, messages, store_check};

use crate::config::values;
use crate::route::endpoints::Endpoints;
use crate::settings::{RunArgs, Settings};
use crate::store::MessageState;
use crate::store::StoreLocation;
use crate::telemetry;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
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

fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    s.parse::<values::Since>().map(|s| s.0)
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
