//! A PostgreSQL schema of its own for each test (or benchmark run) on a shared server.

/// Creates a fresh schema on the server at `base` and returns a store URL that uses it, with a
/// client whose search path is that schema. Panics with the URL when the server cannot be
/// reached: a run that asked for PostgreSQL must not pass without it.
pub async fn fresh_schema(base: &str, prefix: &str) -> (String, tokio_postgres::Client) {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} cannot be reached: {e}"));
    tokio::spawn(conn);
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path = {schema}"
        ))
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        client,
    )
}

/// The test server's URL from `SWITCHYARD_TEST_POSTGRES`, or `None` with a note saying what
/// was not run (`.ci/run` sets it, so there these suites always run).
pub fn test_server(what: &str) -> Option<String> {
    let url = std::env::var("SWITCHYARD_TEST_POSTGRES").ok();
    if url.is_none() {
        // Once per test binary, and past the test harness's capture, so that a plain
        // `cargo test` says what it skipped.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: SWITCHYARD_TEST_POSTGRES is not set: {what} and the other PostgreSQL tests pass without running; .ci/run sets it"
            );
        });
    }
    url
}
