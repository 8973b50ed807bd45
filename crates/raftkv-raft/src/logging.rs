//! Bridges raft-rs's `slog` logging into `tracing`, so one `RUST_LOG` filter governs everything.
//! Records arrive under the `raft` target with their key-value pairs as one `kv` field.

use std::fmt::{self, Write as _};

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

/// A `slog::Drain` that re-emits every record as a `tracing` event.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

/// A `slog::Logger` whose records go to `tracing`, tagged with the Raft node id.
pub fn logger(node: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("raft_id" => node))
}

struct KvString(String);

impl Serializer for KvString {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvString(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let kv = kv.0;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", kv = %kv, "{msg}"),
            Level::Warning => tracing::warn!(target: "raft", kv = %kv, "{msg}"),
            Level::Info => tracing::info!(target: "raft", kv = %kv, "{msg}"),
            Level::Debug => tracing::debug!(target: "raft", kv = %kv, "{msg}"),
            Level::Trace => tracing::trace!(target: "raft", kv = %kv, "{msg}"),
        }
        Ok(())
    }
}
