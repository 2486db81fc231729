//! holdfast-stress: opens and holds many long-poll or SSE subscriptions against one or
//! more holdfast (or nchan) servers, optionally publishes, and reports how many
//! connections were held, how many deliveries were lost, and the publish-to-receipt
//! latency.
//!
//! Map: [`cli`] (flags → a plan split over worker processes) → [`run`] (the parent:
//! phases, progress, summary) → [`worker`] (this binary again with `--worker`: one mio
//! event loop over its share of the sockets) speaking [`http`]; [`publish`] is the
//! parent's client for the admin listeners. In the library (src/lib.rs), which the
//! bench harness also uses: [`holdfast_stress::report`], what workers and parent
//! exchange and the JSON summary, and [`holdfast_stress::errors`], every kind of
//! failure counted.
//!
//! Why processes: one process may hold at most ~20,000 open files on the machines this
//! is built for, so 200,000 connections need a dozen or more clients. Why source
//! addresses: one (source address, destination) pair has only the ephemeral port range
//! (~28,000) to choose from, and all of 127.0.0.0/8 is local.
#![deny(unsafe_code)]

mod cli;
mod http;
mod publish;
mod run;
mod worker;

use clap::{CommandFactory, Parser};

fn main() {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == "--worker") {
        let spec = argv
            .next()
            .and_then(|s| s.into_string().ok())
            .unwrap_or_default();
        std::process::exit(worker::main(&spec));
    }
    let args = cli::Args::parse();
    let plan = match cli::plan(args) {
        Ok(p) => p,
        Err(msg) => cli::Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit(),
    };
    std::process::exit(run::main(plan));
}
