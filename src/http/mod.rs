//! HTTP/1.1 on the wire: request heads (`parse`), chunked request bodies (`chunked`),
//! and response rendering (`respond`). No I/O here; the connection code feeds bytes in
//! and writes bytes out.

pub mod chunked;
pub mod parse;
pub mod respond;
