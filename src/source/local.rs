//! The local task directory. STUB: replaced by the local-source work.
