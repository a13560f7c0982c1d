//! The local journal. STUB: replaced by the journal work.
