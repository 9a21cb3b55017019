//! Switchyard: an enterprise integration engine.
//!
//! Data flows one way: an inbound adapter hands a message to the [`store`]; once it is
//! committed the sender is acknowledged; the route's [`steps`] transform it; the result is
//! recorded with one delivery per destination; each destination's worker hands it to an
//! outbound adapter and records the outcome. The [`engine`] wires routes together and owns
//! start-up, resume after a crash, and graceful shutdown.

pub mod adapters;
pub mod admin;
pub mod aggregator;
pub mod cli;
pub mod codec;
pub mod config;
pub mod convert;
pub mod delivery;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod hl7;
pub mod http_answer;
pub mod keys;
pub mod listeners;
pub mod message;
pub mod message_views;
pub mod metrics;
pub mod reload;
pub mod replay_diff;
pub mod route;
pub mod routing;
pub mod script;
pub mod secrets;
pub mod settings;
pub mod steps;
pub mod store;
pub mod tail;
pub mod telemetry;
pub mod template;
pub mod test_runner;
pub mod throttle;
pub mod tls;
