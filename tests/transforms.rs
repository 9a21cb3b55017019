//! Transformations end to end: `switchyard test` on the bundled examples and on failing test
//! files, `check` on scripts with syntax errors, and the engine failing bad messages with the
//! script's reason while good ones go through.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_bundled_route_tests_pass() {
    let (code, stdout, stderr) = run_in(repo(), &["test", "examples/tests"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("30 passed, 0 failed"), "{stdout}");
}

#[test]
fn a_mismatch_fails_the_run_and_says_where() {
    let ws = Workspace::new();
    ws.write_route(
        "r.yaml",
        "from:\n  file: { path: inbox }\nsteps:\n  - csv_to_json: {}\n  - transform:\n      script: 'body[0].qty = parse_int(body[0].qty) * 2;'\nto:\n  - file: { path: outbox }\n",
    );
    std::fs::write(
        ws.path("r.test.yaml"),
        r#"route: routes/r.yaml
cases:
  - name: doubles the quantity
    body: "sku,qty\nA,21\n"
    expect:
      body: [{ sku: A, qty: 42 }]
  - name: wrong expectation
    body: "sku,qty\nA,21\n"
    expect:
      body: [{ sku: A, qty: 41 }]
  - name: expects a failure that does not come
    body: "sku,qty\nA,1\n"
    expect:
      error: boom
"#,
    )
    .unwrap();
    let (code, stdout, _) = run_in(ws.dir.path(), &["test", "r.test.yaml"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("ok    r.test.yaml: doubles the quantity"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("FAIL  r.test.yaml: wrong expectation\n      at /0/qty: expected 41, got 42"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected a failure containing `boom`, but the steps succeeded"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("1 passed, 2 failed"),
        "{stdout}"
    );
}

#[test]
fn test_with_input_shows_each_step() {
    let (code, stdout, _) = run_in(
        repo(),
        &[
            "test",
            "examples/routes/stock-csv-to-json.yaml",
            "--input",
            "examples/stock/stock-2026-11-26.csv",
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    for part in [
        "steps[0].csv_to_json: ok",
        "header content-type = application/json",
        "steps[1].transform: ok",
        "\"on_hand\": 1200",
        "steps[2].map: ok",
        "\"item_count\": 2",
        "result: ok",
    ] {
        assert!(stdout.contains(part), "missing `{part}` in:\n{stdout}");
    }
    let (code, stdout, _) = run_in(
        repo(),
        &[
            "test",
            "examples/routes/order-xml-to-canonical-json.yaml",
            "--input",
            "examples/orders/broken-order.xml",
            "--header",
            "source=test",
        ],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("steps[0].validate: FAILED: invalid: malformed XML at line 4, column 33"),
        "{stdout}"
    );
}

#[test]
fn check_points_at_script_errors() {
    let ws = Workspace::new();
    // Inline block script: the error is reported at its line in the route file.
    ws.write_route(
        "inline.yaml",
        "from:\n  file: { path: inbox }\nsteps:\n  - set_header: { name: a, value: b }\n  - transform:\n      script: |\n        let total = 0;\n        total += ;\nto:\n  - file: { path: outbox }\n",
    );
    // A script file: the error is reported in that file.
    std::fs::create_dir_all(ws.path("routes/scripts")).unwrap();
    std::fs::write(
        ws.path("routes/scripts/bad.rhai"),
        "let a = 1;\nlet b = a +* 2;\n",
    )
    .unwrap();
    ws.write_route(
        "file.yaml",
        "from:\n  file: { path: inbox2 }\nsteps:\n  - transform: { script_file: scripts/bad.rhai }\nto:\n  - file: { path: outbox }\n",
    );
    ws.write_route(
        "lookup.yaml",
        "from:\n  file: { path: inbox3 }\nsteps:\n  - transform:\n      script: 'body = lookup(\"x\", 1);'\n      lookups: { x: missing.csv }\nto:\n  - file: { path: outbox }\n",
    );
    ws.write_route(
        "schema.yaml",
        "from:\n  file: { path: inbox4 }\nsteps:\n  - validate:\n      json_schema: { type: 12 }\nto:\n  - file: { path: outbox }\n",
    );
    let (code, _, stderr) = run_in(ws.dir.path(), &["check"]);
    assert_eq!(code, 1, "{stderr}");
    for line in [
        "routes/inline.yaml:8:18: steps[1].transform: script syntax error",
        "routes/scripts/bad.rhai:2:",
        "routes/lookup.yaml:4:5: steps[0].transform: lookup table `x` (routes/missing.csv)",
        "routes/schema.yaml:4:5: steps[0].validate: invalid JSON Schema",
    ] {
        assert!(stderr.contains(line), "expected `{line}` in:\n{stderr}");
    }
}

#[test]
fn the_engine_fails_bad_messages_with_the_scripts_reason() {
    let ws = Workspace::new();
    ws.write_route(
        "orders.yaml",
        r#"from:
  file: { path: inbox, settle: 100ms, poll_interval: 200ms }
steps:
  - transform:
      script: |
        if body.qty == 0 { reject("zero quantity") }
        if body.qty < 0 { loop { } }
        body.total = body.qty * body.price;
      limits: { max_operations: 50000 }
to:
  - file: { path: outbox, name: "{{original_stem}}.json" }
"#,
    );
    let engine = ws.start();
    ws.drop_file("inbox", "good.json", br#"{"qty": 3, "price": 2}"#);
    ws.drop_file("inbox", "zero.json", br#"{"qty": 0, "price": 2}"#);
    ws.drop_file("inbox", "loop.json", br#"{"qty": -1, "price": 2}"#);
    ws.drop_file("inbox", "text.json", b"not json at all");
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("failed") == 3
            && ws.count("delivered") == 1),
        "{:?}",
        ws.states()
    );
    let out = std::fs::read_to_string(ws.path("outbox/good.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["total"],
        6
    );
    let errors: Vec<String> = ws
        .query_pairs("SELECT error, 1 FROM messages WHERE state = 'failed'")
        .into_keys()
        .collect();
    let find = |needle: &str| errors.iter().find(|e| e.contains(needle)).cloned();
    assert!(
        find("steps[0].transform: rejected by the script: zero quantity").is_some(),
        "{errors:?}"
    );
    assert!(
        find("stopped after 50000 operations").is_some(),
        "{errors:?}"
    );
    // A body that is not JSON is a string to the script, so `body.qty` fails with a position.
    let text = find("script error at line 1").expect("script error for the text body");
    assert!(text.contains("(message "), "{text}");
    engine.stop();
}

/// A mainframe file with header, detail and trailer lines is read with one layout, changed,
/// and written back with the same layout by the running engine; a line of an unknown kind and a
/// value too wide for its columns fail their messages, saying where.
#[test]
fn fixed_width_files_go_both_ways_with_one_layout() {
    let ws = Workspace::new();
    let layout = r#"
      record_type: { start: 1, width: 1 }
      records:
        H: [ { name: batch, start: 2, width: 6, align: right, pad: "0" } ]
        D: [ { name: sku, start: 2, width: 8 }, { name: qty, start: 10, width: 4, align: right, pad: "0" } ]
        T: [ { name: count, start: 2, width: 3, align: right } ]"#;
    ws.write_route(
        "mainframe.yaml",
        &format!(
            r#"from:
  file: {{ path: inbox, settle: 100ms, poll_interval: 200ms }}
steps:
  - fixed_width:{layout}
  - transform:
      script: |
        for i in 0..body.len() {{
            if body[i].record_type == "D" {{ body[i].qty = parse_int(body[i].qty) * 10; }}
        }}
  - json_to_fixed_width:{layout}
      crlf: true
to:
  - file: {{ path: outbox, name: "{{{{original_name}}}}" }}
"#
        ),
    );
    let engine = ws.start();
    ws.drop_file(
        "inbox",
        "good.DAT",
        b"H000042
DBOLT-M8 0012
DNUT     0003
T  2
",
    );
    ws.drop_file(
        "inbox",
        "unknown.DAT",
        b"H000042
X1
",
    );
    ws.drop_file(
        "inbox",
        "wide.DAT",
        b"H000042
DBOLT-M8 9999
T  1
",
    );
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("failed") == 2
            && ws.count("delivered") == 1),
        "{:?}",
        ws.states()
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/good.DAT")).unwrap(),
        "H000042\r\nDBOLT-M8 0120\r\nDNUT     0030\r\nT  2\r\n"
    );
    let errors: Vec<String> = ws
        .query_pairs("SELECT error, 1 FROM messages WHERE state = 'failed'")
        .into_keys()
        .collect();
    let find = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(
        find("steps[0].fixed_width: line 2: the record type `X` (columns 1–1) is not one of `D`, `H`, `T`"),
        "{errors:?}"
    );
    assert!(
        find("steps[2].json_to_fixed_width: record 2, field `qty`: `99990` is 5 characters, wider than its 4 column(s) (10–13)"),
        "{errors:?}"
    );
    engine.stop();
}

/// A route's test file kept beside it in the routes directory is not taken for a route:
/// `check` passes, and `test` runs it.
#[test]
fn a_test_file_beside_its_route_is_not_a_route() {
    let ws = Workspace::new();
    ws.write_route(
        "upper.yaml",
        "from:\n  file: { path: inbox }\nsteps:\n  - transform: { script: 'body = body.to_upper();' }\nto:\n  - file: { path: outbox }\n",
    );
    std::fs::write(
        ws.path("routes/upper.test.yaml"),
        "route: upper.yaml\ncases:\n  - name: shouts\n    body: \"hello\"\n    headers: { content-type: text/plain }\n    expect:\n      body: \"HELLO\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_in(ws.dir.path(), &["check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("route `upper`") && !stdout.contains("upper.test"),
        "{stdout}"
    );
    let (code, stdout, stderr) = run_in(ws.dir.path(), &["test", "routes/upper.test.yaml"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// A build without libxml2 and libxslt says so when a route wants XSLT, and an XPath call says
/// how to get it, instead of failing obscurely.
#[cfg(not(feature = "xsd"))]
#[test]
fn xslt_and_xpath_without_the_feature_say_which_build_has_them() {
    let ws = Workspace::new();
    ws.write_route(
        "x.yaml",
        "from:\n  file: { path: inbox }\nsteps:\n  - xslt: { stylesheet: s.xsl }\nto:\n  - file: { path: outbox }\n",
    );
    let out = ws.run(&["check", "routes"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        text.contains("x.yaml:4:5") && text.contains("--features xsd"),
        "{text}"
    );
    ws.write_route(
        "x.yaml",
        "from:\n  file: { path: inbox }\nsteps:\n  - transform: { script: 'body = xpath(body, \"/a\");' }\nto:\n  - file: { path: outbox }\n",
    );
    let test = ws.run(&["test", "routes/x.yaml", "--input", "routes/x.yaml"]);
    let text = String::from_utf8_lossy(&test.stdout);
    assert!(
        text.contains("xpath: XPath and XSLT need libxml2"),
        "{text}"
    );
}
