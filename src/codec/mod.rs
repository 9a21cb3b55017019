//! Wire formats for stream transports: how messages are framed on a TCP connection, and how
//! text is converted between the wire's charset and UTF-8 inside the engine.

pub mod charset;
pub mod framing;
