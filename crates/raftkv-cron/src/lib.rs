//! raftkv-cron: a distributed cron scheduler whose runs are claimed through raftkv transactions
//! and fenced by their revisions.
//!
//! Filled by the scheduler issue; until then it exports nothing.
#![deny(missing_docs)]
