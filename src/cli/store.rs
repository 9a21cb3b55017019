//! `switchyard messages`, `backup` and `store check`: what operators do with the store from
//! the command line.

use super::{MessagesCommand, StoreArgs};
use crate::store::sqlite::SqliteStore;
use crate::store::StoreLocation;
use std::path::PathBuf;
use std::process::ExitCode;

pub(super) fn messages(command: MessagesCommand, store: StoreArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let store = crate::store::open(&store.location()?, Default::default(), true)
            .await
            .map_err(|e| e.0)?;
        match command {
            MessagesCommand::List {
                route,
                state,
                since,
                until,
                text,
                field,
                id,
                error,
                limit,
                json,
            } => {
                let rows = store
                    .search(&crate::store::Search {
                        route,
                        state,
                        since,
                        until,
                        text,
                        field,
                        id_prefix: id,
                        error,
                        limit,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.0)?;
                if json {
                    for m in &rows {
                        println!("{}", crate::message_views::json_row(m));
                    }
                } else {
                    print!("{}", crate::message_views::table(&rows));
                }
                Ok(())
            }
            MessagesCommand::Show { id, json } => match store.details(id).await.map_err(|e| e.0)? {
                None => Err(format!("no message {id}")),
                Some(d) if json => {
                    println!("{}", crate::message_views::details_json(&d));
                    Ok(())
                }
                Some(d) => {
                    print!("{}", crate::message_views::details_text(&d));
                    Ok(())
                }
            },
            MessagesCommand::Replay {
                id,
                destination,
                route,
                state,
                limit,
            } => {
                let lines = crate::message_views::replay(
                    store.as_ref(),
                    id,
                    destination.as_deref(),
                    route,
                    state,
                    limit,
                )
                .await?;
                lines.iter().for_each(|l| println!("{l}"));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn backup(file: PathBuf, force: bool, store: StoreArgs) -> ExitCode {
    if file.exists() && !force {
        eprintln!(
            "error: {} exists; give another file, or --force to replace it",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let result = store.location().and_then(|location| match location {
        StoreLocation::Sqlite(path) => {
            if !path.exists() {
                return Err(format!("no store at {} (set --data or --store)", path.display()));
            }
            SqliteStore::open_shared(&path)
                .and_then(|s| s.backup(&file))
                .map_err(|e| e.0)
        }
        StoreLocation::Postgres(_) => Err(
            "`switchyard backup` copies a SQLite store; back a PostgreSQL store up with pg_dump (see docs/store.md)"
                .into(),
        ),
    });
    match result {
        Ok(()) => {
            println!("store copied to {}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn store_check(quick: bool, store: StoreArgs) -> ExitCode {
    let path = match store.location() {
        Ok(StoreLocation::Sqlite(path)) => path,
        Ok(StoreLocation::Postgres(_)) => {
            println!("a PostgreSQL store is checked by PostgreSQL itself (data checksums, amcheck); nothing to read here");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !path.exists() {
        eprintln!(
            "error: no store at {} (set --data or --store)",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let started = std::time::Instant::now();
    match crate::store::sqlite::check_file(&path, !quick, None) {
        Ok(crate::store::sqlite::Checked::Damaged(problems)) => {
            for p in &problems {
                println!("{}: {p}", path.display());
            }
            eprintln!(
                "error: {}",
                crate::store::sqlite::damage_report(
                    &path,
                    &problems,
                    "An engine refuses it at start; a running one stops its intake at its next check."
                )
            );
            ExitCode::FAILURE
        }
        Ok(_) => {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!(
                "ok: {} ({} check of {:.1} MiB in {:.1} s, no damage)",
                path.display(),
                if quick { "quick" } else { "full" },
                size as f64 / (1u64 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.0);
            ExitCode::FAILURE
        }
    }
}
