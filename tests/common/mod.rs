//! Test harness: a temporary workspace with routes/, an inbox, an outbox, data/ and logs/,
//! and the real `switchyard` binary running on it.

#![allow(dead_code)]

pub mod brokers;
pub mod net;
pub mod postgres;
pub mod sshd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        for d in ["routes", "inbox", "outbox"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Workspace { dir }
    }

    /// Copies a file of the repository (`examples/...`, `adapters/...`) into the workspace
    /// at `to`, making its directory: a bundled example run as shipped.
    pub fn copy_from_repo(&self, from: &str, to: &str) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = self.path(to);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::copy(repo.join(from), &target)
            .unwrap_or_else(|e| panic!("copy {from} into the workspace: {e}"));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write_route(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.path("routes").join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// Drops a file the way careful writers do: hidden name first, then a rename.
    pub fn drop_file(&self, dir: &str, name: &str, content: &[u8]) {
        let d = self.path(dir);
        let tmp = d.join(format!(".{name}.partial"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, d.join(name)).unwrap();
    }

    pub fn files(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(dir))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Starts `switchyard run` in the workspace. Its console output goes to `console.log`
    /// (a file, not a pipe nobody reads, which would block the engine once full).
    pub fn start(&self) -> Engine {
        self.start_with_env(&[])
    }

    /// Starts the engine with extra environment variables (secrets for `${...}`).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Engine {
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("console.log"))
            .unwrap();
        // BENCH_ENGINE: another build of the engine (an earlier commit's, for a before/after
        // table in one run).
        let bin = std::env::var("BENCH_ENGINE")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| BIN.to_string());
        let child = Command::new(bin)
            .arg("run")
            .current_dir(self.dir.path())
            .env("SWITCHYARD_LOG", "info")
            .env_remove("SWITCHYARD_ROUTES")
            .env_remove("SWITCHYARD_DATA")
            .env_remove("SWITCHYARD_LOGS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(console)
            .spawn()
            .expect("start switchyard");
        Engine {
            child: Some(child),
            console: self.path("console.log"),
        }
    }

    /// The address an HTTP listener bound to (from the processing log), waiting for it.
    pub fn http_addr(&self) -> String {
        let mut found = None;
        wait_until(Duration::from_secs(20), || {
            found = self
                .log_events()
                .iter()
                .find(|e| e["message"] == "HTTP listener ready")
                .and_then(|e| e["listen"].as_str().map(str::to_string));
            found.is_some()
        });
        found.expect("the HTTP listener never became ready")
    }

    /// The address the HTTP listener of `route` bound to (from the processing log), other
    /// than any named in `old` (addresses or URLs: a restarted engine binds another port),
    /// waiting for it.
    pub fn route_listener(&self, route: &str, old: &[&str]) -> String {
        let mut found = None;
        wait_until(Duration::from_secs(20), || {
            found = self
                .log_events()
                .iter()
                .filter(|e| e["message"] == "HTTP listener ready" && e["route"] == route)
                .filter_map(|e| e["listen"].as_str().map(str::to_string))
                .rfind(|a| !old.iter().any(|o| o.contains(a.as_str())));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("route {route}'s HTTP listener never became ready"))
    }

    /// The admin API's address (from the processing log), waiting for it.
    pub fn admin_addr(&self) -> String {
        let mut found = None;
        wait_until(Duration::from_secs(20), || {
            found = self
                .log_events()
                .iter()
                .find(|e| e["message"] == "admin API ready")
                .and_then(|e| e["listen"].as_str().map(str::to_string));
            found.is_some()
        });
        found.expect("admin API never ready")
    }

    /// The JSON-lines processing log, parsed.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("logs/switchyard.jsonl"))
            .unwrap_or_default()
            .lines()
            // The engine may be writing the last line right now.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Runs a command to completion in the workspace.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run switchyard")
    }

    /// Message counts by state, read straight from the store file.
    pub fn states(&self) -> BTreeMap<String, u64> {
        self.query_pairs("SELECT state, COUNT(*) FROM messages GROUP BY state")
    }

    pub fn query_pairs(&self, sql: &str) -> BTreeMap<String, u64> {
        let path = self.path("data/switchyard.db");
        if !path.exists() {
            return BTreeMap::new();
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = match conn.prepare(sql) {
            Ok(s) => s,
            Err(_) => return BTreeMap::new(), // schema not created yet
        };
        // Rows whose first column is NULL (an error not recorded yet) are left out.
        stmt.query_map([], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .unwrap()
        .filter_map(|r| {
            let (k, v) = r.unwrap();
            k.map(|k| (k, v))
        })
        .collect()
    }

    pub fn count(&self, state: &str) -> u64 {
        self.states().get(state).copied().unwrap_or(0)
    }
}

pub struct Engine {
    child: Option<Child>,
    console: PathBuf,
}

impl Engine {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Resident memory now (`VmRSS`) or at its peak so far (`VmHWM`), in KiB, from /proc.
    pub fn memory_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM, then wait for a graceful exit; returns its status and console output. An
    /// engine still running 60 s later (past the default drain time of 30 s) fails the test with the end
    /// of its console, instead of hanging the run.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill(2) on a child we started and have not reaped yet.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return (status, self.console());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                let console = self.console();
                let tail: Vec<&str> = console.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "the engine did not exit within 60 s of SIGTERM; the end of its console:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself (a start-up error, say).
    pub fn wait_exit(mut self, timeout: Duration) -> Option<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let mut c = self.child.take().unwrap();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return Some((status, self.console()));
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// An XML order of about `size` bytes: a header and many small lines, the shape of an ERP
/// export (`xml_to_json`'s worst case is many small elements, each its own JSON object).
pub fn large_order(size: usize) -> Vec<u8> {
    let mut xml = String::with_capacity(size + 256);
    xml.push_str("<order id=\"1\"><customer>ACME &amp; Sons</customer><lines>");
    let mut i = 0;
    while xml.len() < size {
        xml.push_str(&format!(
            "<line sku=\"A{i}\" qty=\"{}\"><price>1.50</price><text>Widget number {i}</text></line>",
            i % 9 + 1
        ));
        i += 1;
    }
    xml.push_str("</lines></order>");
    xml.into_bytes()
}

pub fn order_xml(n: usize) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<order id=\"{n}\"><customer>C{n}</customer><line sku=\"A\">1</line></order>\n"
    )
}

/// A route from `inbox/` through xml_to_json to `outbox/`, with short timings for tests.
pub fn xml_route(extra_to: &str) -> String {
    format!(
        r#"from:
  file:
    path: inbox
    pattern: "*.xml"
    settle: 200ms
    poll_interval: 300ms
steps:
  - xml_to_json: {{}}
to:
  - file:
      path: outbox
      name: "{{{{original_stem}}}}.json"
{extra_to}"#
    )
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
