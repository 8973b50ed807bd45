//! An in-process [`Transport`]: nodes in one process hand messages straight to each other's
//! handles. For tests, benchmarks and single-process clusters; snapshots are streamed through
//! memory on a short-lived thread.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use raft::prelude::Message;

use crate::core::SnapshotSource;
use crate::node::{NodeHandle, SnapshotDone, Transport};

/// A cloneable in-process network. Create it, start every node with a clone, then
/// [`Loopback::connect`] the handles.
pub struct Loopback<O> {
    peers: Arc<OnceLock<HashMap<u64, NodeHandle<O>>>>,
}

impl<O> Clone for Loopback<O> {
    fn clone(&self) -> Self {
        Loopback {
            peers: Arc::clone(&self.peers),
        }
    }
}

impl<O> Default for Loopback<O> {
    fn default() -> Self {
        Loopback {
            peers: Arc::new(OnceLock::new()),
        }
    }
}

impl<O: Send + 'static> Loopback<O> {
    /// A network with no nodes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the nodes (once); messages sent before this are dropped, as on a network.
    pub fn connect(&self, nodes: impl IntoIterator<Item = NodeHandle<O>>) -> bool {
        self.peers
            .set(nodes.into_iter().map(|n| (n.id(), n)).collect())
            .is_ok()
    }

    fn peer(&self, id: u64) -> Option<&NodeHandle<O>> {
        self.peers.get()?.get(&id)
    }
}

impl<O: Send + 'static> Transport for Loopback<O> {
    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            if let Some(n) = self.peer(m.to) {
                n.step(m);
            }
        }
    }

    fn send_snapshot(&self, msg: Message, mut data: Box<dyn SnapshotSource>, done: SnapshotDone) {
        let Some(peer) = self.peer(msg.to).cloned() else {
            done(false);
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("raft-loopback-snapshot".into())
            .spawn(move || {
                let mut buf = Vec::new();
                let ok = match data.write_to(&mut buf) {
                    Ok(()) => {
                        peer.install_snapshot_blocking(msg, Box::new(std::io::Cursor::new(buf)))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot stream failed");
                        false
                    }
                };
                done(ok);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a snapshot stream");
        }
    }
}
