//! The part of holdfast-stress that other crates use: [`report`], what worker and
//! parent processes exchange and the JSON summary the run writes (`--json`), and
//! [`errors`], the error kinds that summary counts. The bench harness (tools/bench)
//! reads the summary back with [`report::Summary`] itself, so the writer and the
//! reader cannot drift apart. And [`startup`], the parser of the lines a server prints
//! on stdout when it starts (`listening public=ADDR`, ...), for everything that starts
//! a server: the bench harness, the end-to-end tests (tests/common) and the smoke tests.
//! Everything else (flags, the parent, the workers) is the `holdfast-stress` binary,
//! src/main.rs.
#![deny(unsafe_code)]

pub mod errors;
pub mod report;
pub mod startup;
