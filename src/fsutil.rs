//! File-system helpers. STUB: replaced by the local-source work.
