//! libxml2 and libxslt end to end (only with `--features xsd`): XSD validation, XPath and
//! XSLT — the example route tests pass, and the XSLT example runs as shipped on real files.
#![cfg(feature = "xsd")]

mod common;

#[test]
fn the_xsd_example_route_tests_pass() {
    let out = std::process::Command::new(common::BIN)
        .args(["test", "examples/xsd"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");
}

#[test]
fn the_xslt_example_runs_as_shipped_on_real_files() {
    let ws = common::Workspace::new();
    ws.copy_from_repo("examples/xsd/order-xslt.yaml", "routes/order-xslt.yaml");
    ws.copy_from_repo(
        "examples/xsd/stylesheets/order-to-invoice.xsl",
        "routes/stylesheets/order-to-invoice.xsl",
    );
    let engine = ws.start();
    std::fs::create_dir_all(ws.path("examples/xsd/orders-in")).unwrap();
    for n in ["order-1001.xml", "order-1002.xml"] {
        let xml = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/orders")
                .join(n),
        )
        .unwrap();
        ws.drop_file("examples/xsd/orders-in", n, &xml);
    }
    ws.drop_file(
        "examples/xsd/orders-in",
        "empty.xml",
        b"<order id=\"9\"><customer code=\"X\">X</customer></order>",
    );
    let done = || {
        ws.files("examples/xsd/invoices").len() == 1
            && ws.files("examples/xsd/invoices-large").len() == 1
            && ws.count("filtered") == 1
    };
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), done),
        "{:?}",
        ws.states()
    );
    let invoice = std::fs::read_to_string(ws.path("examples/xsd/invoices/order-1001.xml")).unwrap();
    assert!(
        invoice.contains(r#"<invoice number="INV-1001" issuer="ACME-BILLING""#),
        "{invoice}"
    );
    assert!(invoice.contains("<pieces>400</pieces>"), "{invoice}");
    // The XPath search field was stored with each message.
    let listed = ws.run(&["messages", "list", "--field", "order=1002"]);
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(out.contains("1 message(s)"), "{out}");
    engine.stop();
}
