//! `defrag`: Maintenance.Defragment on each endpoint (or, with `--cluster`, on every member),
//! printing what etcdctl prints. raftkv defragments online, so this is safe under load.

use clap::Args;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::DefragmentRequest;

use super::cluster::target_endpoints;
use super::conn::{dial, DEADLINE};
use super::format::{emit, emit_err};
use super::{CtlError, CtlResult, GlobalArgs, EXIT_ERROR};

/// `defrag` arguments.
#[derive(Args, Debug, Clone)]
pub(crate) struct DefragArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Use all endpoints from the cluster member list.
    #[arg(long)]
    pub(crate) cluster: bool,
}

async fn defragment(g: &GlobalArgs, endpoint: &str) -> Result<(), CtlError> {
    let ch = dial(endpoint, g.dial_timeout).await?;
    let mut client = MaintenanceClient::new(ch);
    match tokio::time::timeout(g.command_timeout, client.defragment(DefragmentRequest {})).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(s.into()),
        Err(_) => Err(CtlError::new(EXIT_ERROR, DEADLINE)),
    }
}

/// `defrag [--cluster]`: one member at a time, as etcdctl does; exits 1 if any failed.
pub(crate) async fn defrag(a: DefragArgs) -> CtlResult {
    let mut failures = 0;
    for ep in target_endpoints(&a.global, a.cluster).await? {
        match defragment(&a.global, &ep).await {
            Ok(()) => emit(&format!("Finished defragmenting etcd member[{ep}]\n")),
            Err(e) => {
                emit_err(&format!(
                    "Failed to defragment etcd member[{ep}] ({})\n",
                    e.message
                ));
                failures += 1;
            }
        }
    }
    if failures > 0 {
        return Err(CtlError::new(EXIT_ERROR, ""));
    }
    Ok(())
}
