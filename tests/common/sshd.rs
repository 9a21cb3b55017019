//! A real OpenSSH server for the SFTP tests: Debian's `sshd` on a free port of 127.0.0.1, with
//! a host key and a client key made for the test, serving the machine's files to the test
//! user (root) through `internal-sftp`. Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The client's private key (Ed25519, no passphrase).
    pub client_key: PathBuf,
    /// A known_hosts file with the server's key for `[127.0.0.1]:port`.
    pub known_hosts: PathBuf,
    /// The server key's fingerprint, `SHA256:…`.
    pub fingerprint: String,
    config: PathBuf,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Starts a server, or says why the SFTP tests cannot run (`.ci/run` installs
    /// `openssh-server`, so there they always do).
    pub fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: {SSHD} is not installed (Debian openssh-server): the SFTP tests pass without running; .ci/run installs it"
                );
            });
            return None;
        }
        // sshd insists on its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        let client_key = dir.path().join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let port = super::net::free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\n\
                 StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
                host = host_key.display(),
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let public: Vec<&str> = public.split_whitespace().collect();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {} {}\n", public[0], public[1]),
        )
        .unwrap();
        let fp = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(host_key.with_extension("pub"))
            .output()
            .unwrap();
        let fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let mut sshd = Sshd {
            child: None,
            port,
            dir,
            client_key,
            known_hosts,
            fingerprint,
            config,
        };
        sshd.spawn();
        Some(sshd)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
        let port = self.port;
        assert!(
            super::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "sshd did not start: {}",
            std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
        );
    }

    /// Kills the server and every session process it started (SIGKILL): transfers in flight
    /// are cut.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Sessions are the listener's descendants (each in a session of its own, so not
            // in its process group): kill them first, while they can still be found.
            let mut pids = vec![c.id()];
            let mut i = 0;
            while i < pids.len() {
                let out = Command::new("pgrep")
                    .args(["-P", &pids[i].to_string()])
                    .output();
                if let Ok(out) = out {
                    pids.extend(
                        String::from_utf8_lossy(&out.stdout)
                            .split_whitespace()
                            .filter_map(|p| p.parse::<u32>().ok()),
                    );
                }
                i += 1;
            }
            for pid in pids.iter().skip(1).rev() {
                // SAFETY: kill(2) on processes this server started.
                unsafe {
                    libc::kill(*pid as i32, libc::SIGKILL);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// An `auth`/`host_key` pair for a route: the client key, and the known_hosts file.
    pub fn route_keys(&self) -> String {
        format!(
            "auth: {{ key: {} }}\n    host_key: {{ known_hosts: {} }}",
            self.client_key.display(),
            self.known_hosts.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}
