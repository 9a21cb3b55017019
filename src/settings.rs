//! Engine settings: where routes, endpoints, data and logs are, log rotation, the admin API.
//! Each setting comes from, in order: its command-line flag, its environment variable, the
//! settings file (`switchyard.yaml`, or `--config`), or its default. Relative paths are
//! relative to the working directory.

use crate::config::values::{ByteSize, Duration};
use crate::config::{yaml, Diagnostic};
use crate::store::StoreLocation;
use crate::telemetry::Rotation;
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Settings file (default `switchyard.yaml` when it exists).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of route files (default `routes`).
    #[arg(long, env = "SWITCHYARD_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Directory of named endpoint definitions (default `adapters`).
    #[arg(long, env = "SWITCHYARD_ADAPTERS")]
    pub adapters: Option<PathBuf>,
    /// Directory of the message store, created when missing (default `data`).
    #[arg(long, env = "SWITCHYARD_DATA")]
    pub data: Option<PathBuf>,
    /// The message store: a SQLite file (default `<data>/switchyard.db`) or a PostgreSQL URL
    /// (`postgres://user@host:5432/database`), which several engines (nodes) may share.
    #[arg(long, env = "SWITCHYARD_STORE")]
    pub store: Option<String>,
    /// This node's name in a shared store (default `<host>-<pid>`); unique per running engine.
    #[arg(long, env = "SWITCHYARD_NODE")]
    pub node: Option<String>,
    /// How long this node's claims hold without renewal before another node may take its work
    /// over (default `30s`).
    #[arg(long, env = "SWITCHYARD_LEASE", value_parser = parse_duration)]
    pub lease: Option<std::time::Duration>,
    /// Directory of the JSON-lines processing log, created when missing (default `logs`).
    #[arg(long, env = "SWITCHYARD_LOGS")]
    pub logs: Option<PathBuf>,
    /// How long to let work in hand finish at shutdown (default `30s`).
    #[arg(long, value_parser = parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,
    /// Rotate the processing log past this size (default `64MiB`).
    #[arg(long, env = "SWITCHYARD_LOG_MAX_SIZE", value_parser = parse_size)]
    pub log_max_size: Option<u64>,
    /// Rotated log files to keep (default 5).
    #[arg(long)]
    pub log_keep: Option<usize>,
    /// Serve the admin API (health, metrics, routes, pause/resume) on this address.
    #[arg(long, env = "SWITCHYARD_ADMIN")]
    pub admin: Option<String>,
    /// Bearer token the admin API requires (all but /health and /ready).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A second token that may only read: the API's GETs, the console without its actions.
    #[arg(long, env = "SWITCHYARD_ADMIN_READ_TOKEN", hide_env_values = true)]
    pub admin_read_token: Option<String>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<Duration>().map(|d| d.0)
}

/// A duration from the environment variable `name`, if it is set; a clear error when it is
/// not a duration (never a silent default).
fn env_duration(name: &str) -> Result<Option<std::time::Duration>, Diagnostic> {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<Duration>()
            .map(|d| Some(d.0))
            .map_err(|_| Diagnostic {
                file: PathBuf::from(name),
                line: 1,
                column: 1,
                message: format!("`{v}` is not a duration; write one such as 30s or 5m"),
            }),
        Err(_) => Ok(None),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<ByteSize>().map(|b| b.0)
}

/// The settings file, `switchyard.yaml`. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    #[serde(default)]
    pub routes: Option<PathBuf>,
    #[serde(default)]
    pub adapters: Option<PathBuf>,
    #[serde(default)]
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub logs: Option<PathBuf>,
    /// The store: a SQLite file (default `<data>/switchyard.db`) or a PostgreSQL URL.
    #[serde(default)]
    pub store: Option<String>,
    /// This node's name in a shared store (default `<host>-<pid>`).
    #[serde(default)]
    pub node: Option<String>,
    /// How long a node's claims hold without renewal (default `30s`).
    #[serde(default)]
    pub lease: Option<Duration>,
    #[serde(default)]
    pub drain_timeout: Option<Duration>,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub admin: Option<AdminSettings>,
    /// How often the routes' retention runs (default `30s`).
    #[serde(default)]
    pub retention_every: Option<Duration>,
    /// How often a SQLite store's pages are checked for damage while the engine runs
    /// (default `6h`; `0s`: never, only the check at start).
    #[serde(default)]
    pub store_check_every: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Rotate past this size.
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// Rotated files to keep.
    #[serde(default)]
    pub keep: Option<usize>,
    /// Level filter, as `SWITCHYARD_LOG` takes it (`info`, `warn,switchyard::message=info`).
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin API.
    pub listen: String,
    /// Its bearer token; write `${SWITCHYARD_ADMIN_TOKEN}` rather than the token.
    #[serde(default)]
    pub token: Option<String>,
    /// A token that may only read (the API's GETs, the console without its actions).
    #[serde(default)]
    pub read_token: Option<String>,
}

/// The admin listener, resolved: where, and who may do what.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: String,
    /// Needed for everything but `/health` and `/ready` when set.
    pub token: Option<String>,
    /// May read only.
    pub read_token: Option<String>,
}

/// Everything `switchyard run` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub routes: PathBuf,
    pub adapters: PathBuf,
    pub data: PathBuf,
    pub logs: PathBuf,
    pub store: StoreLocation,
    /// This node's name and lease in the store.
    pub claims: crate::store::Claims,
    pub drain: std::time::Duration,
    pub rotation: Rotation,
    pub log_level: Option<String>,
    pub admin: Option<Admin>,
    /// How often retention runs.
    pub retention_every: std::time::Duration,
    /// How often the store's pages are checked while running; zero: only at start.
    pub store_check_every: std::time::Duration,
}

impl Settings {
    pub fn resolve(args: &RunArgs) -> Result<Settings, Diagnostic> {
        let path = args.config.clone().or_else(|| {
            Path::new("switchyard.yaml")
                .exists()
                .then(|| "switchyard.yaml".into())
        });
        let file: SettingsFile = match &path {
            None => SettingsFile::default(),
            Some(p) => {
                let source = std::fs::read_to_string(p).map_err(|e| Diagnostic {
                    file: p.clone(),
                    line: 1,
                    column: 1,
                    message: format!("cannot read the settings file: {e}"),
                })?;
                yaml::parse(p, &source)?
            }
        };
        let pick = |flag: &Option<PathBuf>, from_file: &Option<PathBuf>, default: &str| {
            flag.clone()
                .or_else(|| from_file.clone())
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let data = pick(&args.data, &file.data, "data");
        let defaults = Rotation::default();
        let retention_every = env_duration("SWITCHYARD_RETENTION_EVERY")?;
        let store_check_every = env_duration("SWITCHYARD_STORE_CHECK_EVERY")?;
        Ok(Settings {
            routes: pick(&args.routes, &file.routes, "routes"),
            adapters: pick(&args.adapters, &file.adapters, "adapters"),
            store: match args.store.clone().or_else(|| file.store.clone()) {
                Some(s) => StoreLocation::parse(&s),
                None => StoreLocation::Sqlite(data.join("switchyard.db")),
            },
            claims: {
                let defaults = crate::store::Claims::default();
                crate::store::Claims {
                    node: args
                        .node
                        .clone()
                        .or(file.node.clone())
                        .unwrap_or(defaults.node),
                    lease: args
                        .lease
                        .or(file.lease.map(|d| d.0))
                        .unwrap_or(defaults.lease)
                        .max(std::time::Duration::from_millis(300)),
                }
            },
            logs: pick(&args.logs, &file.logs, "logs"),
            data,
            drain: args
                .drain_timeout
                .or(file.drain_timeout.map(|d| d.0))
                .unwrap_or(std::time::Duration::from_secs(30)),
            rotation: Rotation {
                max_size: args
                    .log_max_size
                    .or(file.log.max_size.map(|b| b.0))
                    .unwrap_or(defaults.max_size),
                keep: args.log_keep.or(file.log.keep).unwrap_or(defaults.keep),
            },
            log_level: file.log.level.clone(),
            retention_every: retention_every
                .or(file.retention_every.map(|d| d.0))
                .unwrap_or(std::time::Duration::from_secs(30)),
            store_check_every: store_check_every
                .or(file.store_check_every.map(|d| d.0))
                .unwrap_or(std::time::Duration::from_secs(6 * 3600)),
            admin: args
                .admin
                .clone()
                .or(file.admin.as_ref().map(|f| f.listen.clone()))
                .map(|listen| Admin {
                    // A bare port is this machine's only: the admin API is not for the world.
                    listen: match listen.trim_start_matches(':').parse::<u16>() {
                        Ok(port) => format!("127.0.0.1:{port}"),
                        Err(_) => listen,
                    },
                    token: args
                        .admin_token
                        .clone()
                        .or(file.admin.as_ref().and_then(|f| f.token.clone())),
                    read_token: args
                        .admin_read_token
                        .clone()
                        .or(file.admin.as_ref().and_then(|f| f.read_token.clone())),
                }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(config: &str, args: RunArgs) -> Settings {
        Settings::resolve(&RunArgs {
            config: Some(PathBuf::from(config)),
            ..args
        })
        .unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn the_example_settings_files_load() {
        let s = resolve("examples/switchyard.yaml", RunArgs::default());
        assert_eq!(
            s.store,
            StoreLocation::Sqlite(PathBuf::from("data/switchyard.db"))
        );
        // Unset variables take their defaults (`${SWITCHYARD_STORE:-...}`).
        let s = resolve("examples/switchyard-postgres.yaml", RunArgs::default());
        assert!(
            matches!(&s.store, StoreLocation::Postgres(url) if url.starts_with("postgres://")),
            "{:?}",
            s.store
        );
        assert_eq!(s.claims.lease, std::time::Duration::from_secs(30));
    }

    #[test]
    fn flags_choose_the_store_node_and_lease() {
        let s = resolve(
            "examples/switchyard.yaml",
            RunArgs {
                store: Some("postgresql://app@db/switchyard".into()),
                node: Some("edge-1".into()),
                lease: Some(std::time::Duration::from_secs(5)),
                ..RunArgs::default()
            },
        );
        assert_eq!(
            s.store,
            StoreLocation::Postgres("postgresql://app@db/switchyard".into())
        );
        assert_eq!(
            (s.claims.node.as_str(), s.claims.lease.as_secs()),
            ("edge-1", 5)
        );
        assert_eq!(
            StoreLocation::parse("/var/lib/switchyard/store.db"),
            StoreLocation::Sqlite(PathBuf::from("/var/lib/switchyard/store.db"))
        );
    }
}
