//! "Stored" means on the disk: watched with strace on the real engine, each HTTP sender is
//! answered only after a sync of the store's log that began once its message was written
//! into the log. An answer from the page cache (a relaxed `synchronous`, an answer sent
//! before the commit's sync) would survive a crash of the process and not a power cut, so no
//! crash test sees it; this one does. It also sees each commit reach the log in one write.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One system call as strace printed it: which thread, when it began and ended, and its line.
#[derive(Debug, Clone)]
struct Call {
    start: f64,
    end: f64,
    name: String,
    line: String,
}

/// Parses `strace -f -ttt -T -y` output, joining each `<unfinished ...>` with its
/// `<... resumed>` (matched by thread).
fn calls(out: &str) -> Vec<Call> {
    let mut done = Vec::new();
    let mut open: std::collections::HashMap<String, Call> = Default::default();
    for raw in out.lines() {
        let (pid, rest) = match raw.strip_prefix("[pid ") {
            Some(r) => match r.split_once("] ") {
                Some((p, rest)) => (p.trim().to_string(), rest),
                None => continue,
            },
            None => match raw.split_once(' ') {
                Some((p, rest)) if p.chars().all(|c| c.is_ascii_digit()) => (p.to_string(), rest),
                _ => ("main".to_string(), raw),
            },
        };
        let Some((t, call)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<f64>() else { continue };
        let took = call
            .rsplit_once('<')
            .and_then(|(_, d)| d.strip_suffix('>'))
            .and_then(|d| d.parse::<f64>().ok())
            .unwrap_or(0.0);
        if let Some(r) = call.strip_prefix("<... ") {
            if let Some(mut c) = open.remove(&pid) {
                // `t` is when the call returned and `took` its whole length from its start:
                // `t + took` would put the end of a long sync after answers that followed it
                // (the test failed so on a loaded machine, where syncs are often split).
                c.end = c.start + took;
                c.line.push_str(r);
                done.push(c);
            }
            continue;
        }
        let name: String = call.chars().take_while(|c| *c != '(').collect();
        let c = Call {
            start: t,
            end: t + took,
            name,
            line: call.to_string(),
        };
        if call.ends_with("<unfinished ...>") {
            open.insert(pid, c);
        } else {
            done.push(c);
        }
    }
    done.sort_by(|a, b| a.start.total_cmp(&b.start));
    done
}

/// One POST on a connection of its own, answered `202`.
fn post(addr: &str, body: &str) {
    let answer = net::post_once(addr, "/in", Some("application/json"), body);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

#[test]
fn each_sender_is_answered_after_the_log_holding_its_message_is_synced() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("SKIPPED: strace is not installed (apt-get install strace; .ci/run does)");
        return;
    }
    let ws = Workspace::new();
    ws.write_route(
        "in.yaml",
        "from:\n  http: { listen: 127.0.0.1:0, paths: [/in] }\nsteps:\n  - transform: { script: 'body.seen = true;' }\nroute:\n  rules:\n    - when: 'false'\n      to:\n        - file: { path: outbox }\n",
    );
    let engine = ws.start();
    let addr = ws.http_addr();
    let trace = ws.path("strace.out");
    let mut strace = Command::new("strace")
        .args(["-f", "-ttt", "-T", "-y", "-s", "200000", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=pwrite64,write,writev,sendto,sendmsg,fsync,fdatasync",
            "-p",
            &engine.pid().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strace");
    // Attached once strace has seen the engine answer (a loaded machine may take a while).
    let seen = wait_until(Duration::from_secs(30), || {
        post(&addr, "{\"warm\": true}");
        std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("HTTP/1.1 202"))
    });
    assert!(seen, "strace did not attach to the engine within 30 s");
    let warm = std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .matches("HTTP/1.1 202")
        .count();
    // Sequential requests, each body with a mark of its own to find its page in the log.
    let marks: Vec<String> = (0..12).map(|i| format!("durability-mark-{i:04}")).collect();
    for mark in &marks {
        post(&addr, &format!("{{\"mark\": \"{mark}\"}}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let status = strace.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = strace.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    engine.stop();
    let out = std::fs::read_to_string(&trace).unwrap_or_default();
    assert!(
        out.contains("-wal>"),
        "strace saw no write to the store's log ({status}): {err}\n{}",
        &out[..out.len().min(3000)]
    );
    let calls = calls(&out);
    let answers: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name != "pwrite64" && c.line.contains("HTTP/1.1 202"))
        .collect();
    // The marked requests' answers, after the warm-up's.
    let answers = &answers[warm.min(answers.len())..];
    assert_eq!(answers.len(), marks.len(), "one 202 per request");
    let syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| (c.name == "fdatasync" || c.name == "fsync") && c.line.contains("-wal>"))
        .collect();
    for (mark, answer) in marks.iter().zip(answers.iter()) {
        let written = calls
            .iter()
            .find(|c| {
                c.line.contains("-wal>")
                    && c.name.starts_with("pwrite")
                    && c.line.contains(mark.as_str())
            })
            .unwrap_or_else(|| panic!("{mark}: its page was not seen written into the log"));
        assert!(
            written.end <= answer.start,
            "{mark}: answered before it was written"
        );
        let synced = syncs
            .iter()
            .any(|s| s.start >= written.end && s.end <= answer.start);
        // The commit's frames went to the log in one write (`store/sqlite/log_writes.rs`):
        // no other write to the log since the sync before it.
        let since = syncs
            .iter()
            .filter(|s| s.end <= written.start)
            .map(|s| s.end)
            .fold(0.0, f64::max);
        let writes = calls
            .iter()
            .filter(|c| {
                c.name.starts_with("pwrite")
                    && c.line.contains("-wal>")
                    && c.start >= since
                    && c.end <= written.end
            })
            .count();
        assert_eq!(
            writes, 1,
            "{mark}: its commit took {writes} writes to the log"
        );
        assert!(
            synced,
            "{mark}: answered at {:.6} without a sync of the log between its write (ended {:.6}) and the answer; syncs: {:?}",
            answer.start,
            written.end,
            syncs
                .iter()
                .map(|s| (s.start, s.end))
                .filter(|(a, _)| (a - answer.start).abs() < 0.05)
                .collect::<Vec<_>>()
        );
    }
}
