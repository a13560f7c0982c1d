//! Remote mode: everything of the Cloud Assistant server protocol, built only with the `remote`
//! feature. Tasks come in through the fetch thread as `SourceEvent`s and results leave through
//! the server `Reporter`, so the core (engine, timer, runner, journal) never knows this module
//! exists. Nothing outside `remote` and `cli` imports it.
//!
//! - `transport`: the one HTTP client (ureq + rustls); the only importer of `ureq`.
//! - `tls_policy`: the TLS client's suites, groups and signature algorithms (both TLS users).
//! - `fetch`: the fetch thread, startup retry, the updater gate and `StartupDone`.
//! - `kick` and `kick_bridge`: the notify websocket listener, and kicks → fetch requests.
//! - `reporter`: the server `Reporter` (endpoints, query strings, the 1 + 3 retry rule).
//! - `websocket`: the client side of a websocket to the server (kicks and sessions): dial,
//!   proxy tunnel, TLS, the opening handshake; `ws_conn`: its frames once open.
//! - `session`: shell sessions and port forwarding (Session Manager).
//! - `heartbeat`, `identity` (hybrid keys, signed headers), `sendfile`, `signature`, `update`.
//! - `rsa_key` (the hybrid key: generation, PEM, MD5 signatures) on `bignum` (Montgomery
//!   arithmetic); `sm2` (SM2 signature verification, also on `bignum`); `der` (DER TLVs
//!   and PEM blocks, for both and for `signature`); `hash` (MD5 and SM3, which ring lacks).
//! - `metrics`: metrics events (appendix B), sent for failed sessions.

pub mod bignum;
pub mod der;
pub mod fetch;
pub mod hash;
pub mod heartbeat;
pub mod identity;
pub mod kick;
pub mod kick_bridge;
pub mod metrics;
pub mod reporter;
pub mod rsa_key;
pub mod sendfile;
pub mod session;
pub mod signature;
pub mod sm2;
pub mod spool;
pub mod tls_policy;
pub mod transport;
pub mod trial;
pub mod trust;
pub mod update;
pub mod websocket;
pub mod ws_conn;
