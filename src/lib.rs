//! assistd: a small, synchronous host agent that runs commands for the Cloud Assistant
//! control plane, or from a local task directory. See ARCHITECTURE.md for the map.
//!
//! The core (everything but `remote`) is the local scheduler; the `remote` feature (on by
//! default) adds the server protocol under `src/remote/`.

pub mod cli;
pub mod clockwatch;
pub mod config;
pub mod control;
pub mod engine;
pub mod error_chain;
pub mod escape;
pub mod fsutil;
pub mod logging;
pub mod model;
pub mod pollthread;
#[cfg(feature = "remote")]
pub mod remote;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod sha256;
pub mod signals;
pub mod source;
pub mod status;
pub mod timer;
