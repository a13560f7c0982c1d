//! Session Manager (spec aliyun-sessions): interactive shells and TCP port forwarding over a
//! websocket to the server, one thread per session. It never touches tasks, the registry or
//! the engine: sessions come from the fetch thread and end with their own status report.
//!
//! - `frame`: the 60-byte binary frame and its payloads.

pub mod frame;
