//! Adapters connect routes to the outside world: [`inbound`] adapters receive messages and
//! hand them to the store; [`outbound`] adapters deliver processed messages. One file per
//! adapter kind.

pub mod broker;
pub mod database;
pub mod fs;
pub mod ftp;
pub mod inbound;
pub mod outbound;
pub mod remote;
pub mod sftp;
