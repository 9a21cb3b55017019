//! XSD validation end to end (only with `--features xsd`): the example route tests pass.
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
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}
