//! A remote directory, as SFTP ([`crate::adapters::sftp`]) and FTP ([`crate::adapters::ftp`])
//! both offer it: listed, read, removed from, renamed in, written to. The `sftp` and `ftp`
//! inbounds poll one through [`crate::adapters::inbound::remote`], their outbounds upload
//! into one through [`crate::adapters::outbound::remote`]; a protocol only connects and
//! carries these few requests.

use async_trait::async_trait;

/// A file in a remote listing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// Seconds since 1970, as the server reports it.
    pub mtime: u64,
}

/// A logged-in session on a remote server. Requests may come from several deliveries at once;
/// a protocol that can carry one at a time (FTP) queues them.
#[async_trait]
pub trait Remote: Send + Sync {
    /// The plain files of `dir` (not directories, links or the like).
    async fn list(&self, dir: &str) -> Result<Vec<Listed>, String>;
    async fn read(&self, path: &str) -> Result<Vec<u8>, String>;
    /// Writes `data` as `path`, whole, and closes it.
    async fn write(&self, path: &str, data: &[u8]) -> Result<(), String>;
    /// Renames; fails when `to` exists (as SFTP's rename does).
    async fn rename(&self, from: &str, to: &str) -> Result<(), String>;
    async fn remove(&self, path: &str) -> Result<(), String>;
    /// Creates `dir`, ignoring an existing one.
    async fn make_dir(&self, dir: &str);
}

/// How a route reaches its server: a new session on each call.
#[async_trait]
pub trait Connect: Send + Sync {
    async fn connect(&self) -> Result<Box<dyn Remote>, String>;
    /// The server and directory without credentials, for logs and the admin API.
    fn name(&self) -> String;
    /// The remote directory.
    fn dir(&self) -> &str;
}

/// A remote path inside `dir`.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "." || dir.is_empty() {
        name.to_string()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

/// Creates `path` and its parents, ignoring those that exist.
pub async fn make_dirs(remote: &dyn Remote, path: &str) {
    let mut made = String::new();
    for part in path.split('/') {
        if part.is_empty() {
            if made.is_empty() {
                made.push('/');
            }
            continue;
        }
        if !made.is_empty() && !made.ends_with('/') {
            made.push('/');
        }
        made.push_str(part);
        if part != "." {
            remote.make_dir(&made).await;
        }
    }
}
