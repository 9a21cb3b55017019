//! XSD validation for the `validate` step, through libxml2 (cargo feature `xsd`).
//!
//! libxml2's schema and validation contexts are not safe to share between threads, so each
//! `validate` step that uses an XSD owns one thread that holds the compiled schema; messages
//! are handed to it and answered over channels. The body has already passed Switchyard's own
//! XML check (which refuses DOCTYPEs) before libxml2 sees it, and libxml2 parses with network
//! access off, so external entities cannot be reached.

use std::path::Path;
#[cfg(feature = "xsd")]
use std::sync::{mpsc, Mutex};

/// A compiled XSD, ready to check documents.
pub struct Xsd {
    #[cfg(feature = "xsd")]
    jobs: Mutex<mpsc::Sender<(bytes::Bytes, mpsc::Sender<Vec<String>>)>>,
}

#[cfg(not(feature = "xsd"))]
impl Xsd {
    pub fn load(path: &Path) -> Result<Xsd, String> {
        Err(format!(
            "`xsd: {}` needs XSD support, which this build of Switchyard does not have: build it with `cargo build --features xsd` (needs libxml2-dev and libclang-dev)",
            path.display()
        ))
    }

    pub fn check(&self, _body: &bytes::Bytes) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(feature = "xsd")]
impl Xsd {
    /// Compiles the schema at `path` (its imports and includes are resolved relative to it).
    pub fn load(path: &Path) -> Result<Xsd, String> {
        use libxml::schemas::{SchemaParserContext, SchemaValidationContext};
        if !path.is_file() {
            return Err(format!("xsd {} does not exist", path.display()));
        }
        let path_text = path.to_string_lossy().into_owned();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (jobs_tx, jobs_rx) = mpsc::channel::<(bytes::Bytes, mpsc::Sender<Vec<String>>)>();
        std::thread::Builder::new()
            .name("xsd-validator".into())
            .spawn(move || {
                let mut parser = SchemaParserContext::from_file(&path_text);
                let mut ctx = match SchemaValidationContext::from_parser(&mut parser) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(errors) => {
                        let _ = ready_tx.send(Err(describe(&errors).join("; ")));
                        return;
                    }
                };
                // Ends when the step is dropped and its sender with it.
                while let Ok((body, reply)) = jobs_rx.recv() {
                    let _ = reply.send(validate(&mut ctx, &body));
                }
            })
            .map_err(|e| format!("cannot start the XSD thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Xsd {
                jobs: Mutex::new(jobs_tx),
            }),
            Ok(Err(e)) => Err(format!("invalid XSD {}: {e}", path.display())),
            Err(_) => Err(format!("invalid XSD {}", path.display())),
        }
    }

    /// Every way the document breaks the schema (empty when it is valid).
    pub fn check(&self, body: &bytes::Bytes) -> Vec<String> {
        let (tx, rx) = mpsc::channel();
        let sent = self
            .jobs
            .lock()
            .map(|jobs| jobs.send((body.clone(), tx)).is_ok())
            .unwrap_or(false);
        if !sent {
            return vec!["the XSD validator is not running".into()];
        }
        rx.recv()
            .unwrap_or_else(|_| vec!["the XSD validator stopped".into()])
    }
}

#[cfg(feature = "xsd")]
fn validate(ctx: &mut libxml::schemas::SchemaValidationContext, body: &[u8]) -> Vec<String> {
    use libxml::parser::{Parser, ParserOptions};
    let options = ParserOptions {
        recover: false,
        no_net: true,
        ..ParserOptions::default()
    };
    let doc = match Parser::default().parse_string_with_options(body, options) {
        Ok(d) => d,
        Err(e) => return vec![format!("libxml2 cannot parse the document: {e:?}")],
    };
    match ctx.validate_document(&doc) {
        Ok(()) => Vec::new(),
        Err(errors) => describe(&errors),
    }
}

#[cfg(feature = "xsd")]
fn describe(errors: &[libxml::error::StructuredError]) -> Vec<String> {
    let mut out: Vec<String> = errors
        .iter()
        .map(|e| {
            let msg = e.message.as_deref().unwrap_or("error").trim().to_string();
            match e.line {
                Some(l) if l > 0 => format!("line {l}: {msg}"),
                _ => msg,
            }
        })
        .collect();
    if out.is_empty() {
        out.push("the document does not match the XSD".into());
    }
    out
}
