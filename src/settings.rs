//! Where the engine finds its routes and keeps its data and logs. Each directory has a flag
//! and an environment variable; relative paths are relative to the working directory.

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct Dirs {
    /// Directory of route files (one route per `*.yaml`).
    #[arg(long, env = "SWITCHYARD_ROUTES", default_value = "routes")]
    pub routes: PathBuf,
    /// Directory of named endpoint definitions.
    #[arg(long, env = "SWITCHYARD_ADAPTERS", default_value = "adapters")]
    pub adapters: PathBuf,
    /// Directory of the message store (created when missing).
    #[arg(long, env = "SWITCHYARD_DATA", default_value = "data")]
    pub data: PathBuf,
    /// Directory of the JSON-lines processing log (created when missing).
    #[arg(long, env = "SWITCHYARD_LOGS", default_value = "logs")]
    pub logs: PathBuf,
}

impl Dirs {
    /// The embedded store's file.
    pub fn store_file(&self) -> PathBuf {
        self.data.join("switchyard.db")
    }
}
