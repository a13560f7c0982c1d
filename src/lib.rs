//! assistd: a small, synchronous host agent that runs commands for the Cloud Assistant
//! control plane, or from a local task directory. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod clockwatch;
pub mod config;
pub mod engine;
pub mod fsutil;
pub mod heartbeat;
pub mod identity;
pub mod kick;
pub mod logging;
pub mod model;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod sendfile;
pub mod signals;
pub mod signature;
pub mod source;
pub mod timer;
pub mod transport;
pub mod update;
