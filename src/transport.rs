//! The HTTP boundary to the control plane. `Http` is what the rest of the agent calls; the ureq
//! implementation (timeouts, TLS roots, proxy, identity headers, retry rule) lives here and is
//! the only place that imports `ureq`. SKELETON: the ureq implementation is being written.

use std::fmt;
use std::time::Duration;

/// The reference's per-request timeout (spec §2.2).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The task-list request's timeout (spec §2.2).
pub const TASK_LIST_TIMEOUT: Duration = Duration::from_secs(8);

/// An answer from the server, whatever its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A request that got no usable answer.
#[derive(Debug)]
pub enum TransportError {
    /// No answer: DNS, connect, TLS, timeout, reset. Retry.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    /// Answered with a status above 400 (400 itself counts as success, spec §11.1). Retry.
    Status(u16),
    /// No server is configured.
    NoServer,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Unreachable(_) => f.write_str("server unreachable"),
            TransportError::Status(code) => write!(f, "server answered HTTP {code}"),
            TransportError::NoServer => f.write_str("no server configured"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Unreachable(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// Requests to the control plane. `path_and_query` starts with `/` and is appended to the
/// server base URL as is (task ids are not escaped, spec §2.3). Implementations add the
/// identity headers and apply `timeout` to the whole request. One attempt per call; callers
/// that retry use `with_retries`.
pub trait Http: Send + Sync {
    fn post(
        &self,
        path_and_query: &str,
        body: &[u8],
        content_type: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError>;
    fn get(&self, path_and_query: &str, timeout: Duration) -> Result<HttpResponse, TransportError>;
}
