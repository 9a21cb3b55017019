//! The `ftp` adapters against a real FTP server (pyftpdlib from PyPI, started per test on a
//! free port, installed when missing): files taken from a partner's directory once settled
//! and removed only after the commit; uploads renamed into place whole, retried through a
//! server that was down; FTPS (explicit TLS) with the server's certificate checked against a
//! private CA, and refused without it.

mod common;

use common::net::{ensure_python_package, free_port, test_ca};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SERVER: &str = r#"
import sys, logging
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer
root, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
logging.basicConfig(level=logging.WARNING)
auth = DummyAuthorizer()
auth.add_user("partner", "s3cret", root, perm="elradfmwMT")
if cert:
    handler = TLS_FTPHandler
    handler.certfile = cert
    handler.keyfile = key
    handler.tls_control_required = True
    handler.tls_data_required = True
else:
    handler = FTPHandler
handler.authorizer = auth
FTPServer(("127.0.0.1", port), handler).serve_forever()
"#;

/// A pyftpdlib server for user `partner` / `s3cret` on `root`; FTPS when `tls` holds the
/// certificate and key. Stopped when dropped.
struct Ftpd {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Ftpd {
    fn start(root: &Path, tls: Option<(PathBuf, PathBuf)>) -> Ftpd {
        // Both, whichever this server needs: pip replacing a package (pyopenssl brings a new
        // `cryptography`) while another test's server imports it makes that server fail to
        // start on a fresh machine.
        ensure_python_package("pyftpdlib", "pyftpdlib");
        ensure_python_package("OpenSSL", "pyopenssl");
        let mut f = Ftpd {
            child: None,
            port: free_port(),
            root: root.to_path_buf(),
            tls,
        };
        f.spawn();
        f
    }

    fn spawn(&mut self) {
        let (cert, key) = match &self.tls {
            Some((c, k)) => (c.display().to_string(), k.display().to_string()),
            None => (String::new(), String::new()),
        };
        let child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(&self.root)
            .arg(self.port.to_string())
            .args([cert, key])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pyftpdlib");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "the FTP server did not start"
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ftpd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

#[test]
fn settled_files_are_taken_from_an_ftp_directory_and_moved_after_the_commit() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("outgoing/done")).unwrap();
    for i in 0..30 {
        std::fs::write(
            root.path().join(format!("outgoing/inv-{i:02}.xml")),
            format!("<invoice n=\"{i}\"/>"),
        )
        .unwrap();
    }
    let ftpd = Ftpd::start(root.path(), None);
    let ws = Workspace::new();
    ws.write_route(
        "invoices.yaml",
        &format!(
            r#"from:
  ftp:
    url: "ftp://partner@127.0.0.1:{port}/outgoing"
    password: "${{PARTNER_FTP_PASSWORD}}"
    pattern: "inv-*.xml"
    interval: 200ms
    settle: 500ms
    move_to: outgoing/done
to:
  - file: {{ path: outbox, name: "{{{{original_name}}}}" }}
"#,
            port = ftpd.port
        ),
    );
    let engine = ws.start_with_env(&[("PARTNER_FTP_PASSWORD", "s3cret")]);
    assert!(
        wait_until(Duration::from_secs(60), || ws.files("outbox").len() == 30),
        "{} of 30; {:?}",
        ws.files("outbox").len(),
        ws.log_events()
            .iter()
            .filter(|e| e["level"] != "INFO")
            .collect::<Vec<_>>()
    );
    assert!(wait_until(Duration::from_secs(10), || names(
        &root.path().join("outgoing")
    ) == ["done"]));
    assert_eq!(names(&root.path().join("outgoing/done")).len(), 30);
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox").join("inv-07.xml")).unwrap(),
        "<invoice n=\"7\"/>"
    );
    // The attempts are recorded a moment after the files are in place.
    assert!(
        wait_until(Duration::from_secs(10), || ws.count("delivered") == 30),
        "{:?}",
        ws.states()
    );
    engine.stop();
}

/// HTTP in, FTPS out, the server's certificate from a private CA: every message arrives whole
/// under its name, also those sent while the server was down; without the CA the server is
/// refused and nothing is uploaded.
#[test]
fn uploads_over_ftps_are_renamed_into_place_and_retried_through_an_outage() {
    let root = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = test_ca(certs.path());
    let mut ftpd = Ftpd::start(root.path(), Some((cert, key)));
    let ws = Workspace::new();
    let port = ftpd.port;
    let route = |ca: &str| {
        format!(
            r#"from:
  http: {{ listen: "127.0.0.1:0" }}
to:
  - ftp:
      url: "ftps://partner@127.0.0.1:{port}/incoming/orders"
      password: s3cret
      {ca}
      name: "order-{{{{header.http.header.x-order}}}}.json"
      create_dirs: true
      delivery: {{ retry: {{ max_attempts: 100, backoff: 200ms, max_backoff: 1s }} }}
"#
        )
    };
    ws.write_route(
        "upload.yaml",
        &route(&format!("tls: {{ ca: {} }}", ca.display())),
    );
    let engine = ws.start();
    let addr = ws.http_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let post = |i: usize| {
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!("http://{addr}/"))
                .header("x-order", i.to_string())
                .body(format!(
                    "{{\"order\":{i},\"pad\":\"{}\"}}",
                    "y".repeat(64 * 1024)
                ))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        })
    };
    for i in 0..10 {
        post(i);
    }
    let target = root.path().join("incoming/orders");
    assert!(
        wait_until(Duration::from_secs(30), || names(&target).len() == 10),
        "{:?}; {:?}",
        names(&target),
        ws.log_events()
            .iter()
            .filter(|e| e["level"] != "INFO")
            .collect::<Vec<_>>()
    );
    ftpd.kill();
    for i in 10..20 {
        post(i);
    }
    std::thread::sleep(Duration::from_secs(2));
    ftpd.spawn();
    assert!(
        wait_until(Duration::from_secs(60), || ws.count("delivered") == 20),
        "{:?}",
        ws.states()
    );
    let files = names(&target);
    assert_eq!(
        files.len(),
        20,
        "no temporary file left, none twice: {files:?}"
    );
    let attempts = ws.query_pairs(
        "SELECT outcome, COUNT(*) FROM transitions WHERE event = 'attempt' GROUP BY outcome",
    );
    assert!(
        attempts.keys().any(|o| o != "delivered"),
        "the outage failed no attempt: {attempts:?}"
    );
    for i in 0..20 {
        let body = std::fs::read_to_string(target.join(format!("order-{i}.json"))).unwrap();
        assert!(body.ends_with("\"}"), "order {i} arrived whole");
    }
    engine.stop();

    // The same server without trusting its CA: refused, nothing uploaded.
    let ws = Workspace::new();
    ws.write_route("upload.yaml", &route(""));
    let engine = ws.start();
    let addr = ws.http_addr();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .header("x-order", "99")
            .body("{}")
            .send()
            .await
            .unwrap();
    });
    assert!(wait_until(Duration::from_secs(20), || ws
        .query_pairs(
            "SELECT event, COUNT(*) FROM transitions WHERE event = 'attempt' GROUP BY event"
        )
        .get("attempt")
        .is_some_and(|n| *n >= 2)));
    // The connection's error, as logged and shown in the admin API, names the cause.
    let refused = || {
        ws.log_events()
            .iter()
            .filter(|e| e["message"] == "broker connection down; reconnecting")
            .map(|e| e["error"].to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || refused()
            .iter()
            .any(|e| e.contains("UnknownIssuer"))),
        "{:?}",
        refused()
    );
    assert!(!target.join("order-99.json").exists());
    engine.stop();
}

/// The bundled FTP → SFTP example, as shipped: an invoice dropped in a legacy host's FTP
/// outbox arrives in the partner's SFTP inbox under its name, and moves to `sent` on the FTP
/// side.
#[test]
fn the_bundled_ftp_to_sftp_example_works_as_shipped() {
    let Some(sshd) = common::sshd::Sshd::start() else {
        return;
    };
    let ftp_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ftp_root.path().join("outbox/sent")).unwrap();
    let partner = tempfile::tempdir().unwrap();
    let ftpd = Ftpd::start(ftp_root.path(), None);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ws = Workspace::new();
    std::fs::copy(
        repo.join("examples/routes/legacy-ftp-invoices-to-partner-sftp.yaml"),
        ws.path("routes")
            .join("legacy-ftp-invoices-to-partner-sftp.yaml"),
    )
    .unwrap();
    let (ftp_port, ssh_port) = (ftpd.port.to_string(), sshd.port.to_string());
    let inbox = partner.path().display().to_string();
    let (key, known) = (
        sshd.client_key.display().to_string(),
        sshd.known_hosts.display().to_string(),
    );
    let engine = ws.start_with_env(&[
        ("LEGACY_FTP_USER", "partner"),
        ("LEGACY_FTP_PASSWORD", "s3cret"),
        ("LEGACY_FTP_PORT", ftp_port.as_str()),
        ("ACME_SFTP_USER", "root"),
        ("ACME_SFTP_PORT", ssh_port.as_str()),
        ("ACME_SFTP_INBOX", inbox.as_str()),
        ("ACME_SFTP_KEY", key.as_str()),
        ("ACME_KNOWN_HOSTS", known.as_str()),
    ]);
    std::fs::write(
        ftp_root.path().join("outbox/INV-2026-0042.xml"),
        "<invoice/>",
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(90), || names(partner.path())
            == ["INV-2026-0042.xml"]),
        "{:?}; {:?}",
        names(partner.path()),
        ws.log_events()
            .iter()
            .filter(|e| e["level"] != "INFO")
            .collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read_to_string(partner.path().join("INV-2026-0042.xml")).unwrap(),
        "<invoice/>"
    );
    assert!(wait_until(Duration::from_secs(10), || names(
        &ftp_root.path().join("outbox/sent")
    ) == [
        "INV-2026-0042.xml"
    ]));
    engine.stop();
}
