//! HTTP/1.1 on the wire: request heads (`parse`), where a request ends (`framing`),
//! chunked request bodies (`chunked`), and response rendering (`respond`). No I/O here;
//! the servers feed bytes in and write bytes out.

pub mod chunked;
pub mod framing;
pub mod parse;
pub mod respond;
