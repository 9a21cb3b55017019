//! The installation examples of examples/deploy/ as shipped: the service's and the container's
//! settings files run the bundled route, the systemd unit passes `systemd-analyze verify`, and
//! the container file copies only what the repository has (it is built by `.ci/run` where a
//! container engine runs).

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The engine in the layout a settings file describes (routes/, adapters/, data/, logs/ beside
/// it), with the bundled route: an order dropped in is delivered, the admin API answers behind
/// its token, and SIGTERM stops it cleanly.
fn runs_the_bundled_route_with(settings: &str) {
    let ws = Workspace::new();
    ws.copy_from_repo(settings, "switchyard.yaml");
    ws.copy_from_repo(
        "routes/orders-xml-to-json.yaml",
        "routes/orders-xml-to-json.yaml",
    );
    std::fs::create_dir_all(ws.path("examples/inbox")).unwrap();
    // The admin API on a free port instead of the file's 9900: tests run side by side.
    let engine = ws.start_with_env(&[
        ("SWITCHYARD_ADMIN", "127.0.0.1:0"),
        ("SWITCHYARD_ADMIN_TOKEN", "deploy-test"),
    ]);
    let order = std::fs::read(repo().join("examples/orders/order-1001.xml")).unwrap();
    ws.drop_file("examples/inbox", "order-1001.xml", &order);
    assert!(
        wait_until(Duration::from_secs(30), || ws.count("delivered") == 1),
        "{:?}",
        ws.states()
    );
    assert!(ws.path("examples/outbox/order-1001.json").exists());
    assert!(ws.path("data/switchyard.db").exists() && ws.path("logs/switchyard.jsonl").exists());

    let admin = ws.admin_addr();
    let get = |token: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&admin).unwrap();
        write!(
            s,
            "GET /routes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(get("deploy-test").starts_with("HTTP/1.1 200"));
    assert!(get("wrong").starts_with("HTTP/1.1 401"));
    let (status, console) = engine.stop();
    assert!(status.success(), "{console}");
}

#[test]
fn the_service_settings_run_the_bundled_route() {
    runs_the_bundled_route_with("examples/deploy/switchyard.yaml");
}

#[test]
fn the_container_settings_run_the_bundled_route() {
    runs_the_bundled_route_with("examples/deploy/container.yaml");
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(which) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("SKIPPED: systemd-analyze is not installed; examples/deploy/switchyard.service was not verified");
        return;
    };
    assert!(which.status.success());
    let unit = std::fs::read_to_string(repo().join("examples/deploy/switchyard.service")).unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/switchyard run --config /etc/switchyard/switchyard.yaml"
    ));
    // The binary just built instead of the installed one, and a user that exists here.
    let unit = unit
        .replace(
            "/usr/local/bin/switchyard",
            env!("CARGO_BIN_EXE_switchyard"),
        )
        .replace("User=switchyard", "User=root")
        .replace("Group=switchyard", "Group=root");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    // verify exits 0 on unknown keys and bad values, but says so.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_container_file_copies_what_the_repository_has() {
    let text = std::fs::read_to_string(repo().join("examples/deploy/Containerfile")).unwrap();
    let known = [
        "FROM",
        "RUN",
        "COPY",
        "WORKDIR",
        "USER",
        "VOLUME",
        "EXPOSE",
        "STOPSIGNAL",
        "ENTRYPOINT",
        "CMD",
        "ENV",
        "ARG",
        "LABEL",
        "HEALTHCHECK",
    ];
    let mut continued = false;
    let mut copies = 0;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let was_continued = continued;
        continued = trimmed.ends_with('\\');
        if was_continued || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let word = trimmed.split_whitespace().next().unwrap_or_default();
        assert!(
            known.contains(&word),
            "Containerfile:{}: unknown instruction `{word}`",
            n + 1
        );
        if word == "COPY" && !trimmed.contains("--from=") {
            let parts: Vec<&str> = trimmed.split_whitespace().skip(1).collect();
            for src in &parts[..parts.len() - 1] {
                if *src != "." {
                    assert!(
                        repo().join(src).exists(),
                        "Containerfile:{}: `{src}` is not in the repository",
                        n + 1
                    );
                }
            }
            copies += 1;
        }
        if word == "FROM" && trimmed.contains("rust:") {
            // The toolchain image is at least the version Cargo.toml declares.
            let tag = trimmed
                .split("rust:")
                .nth(1)
                .unwrap()
                .split('-')
                .next()
                .unwrap();
            let version =
                |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
            let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
            let declared = cargo
                .lines()
                .find_map(|l| l.strip_prefix("rust-version = \""))
                .unwrap()
                .trim_end_matches('"');
            assert!(
                version(tag) >= version(declared),
                "rust:{tag} is older than rust-version {declared}"
            );
        }
    }
    assert!(
        copies >= 3,
        "the build context, the settings and the routes are copied"
    );
}
