//! The client against an in-process three-member raftkv cluster, by topic: KV and txns, watch
//! (history, live, resume across the loss of the watched member), leases, locks and elections,
//! failover and error mapping.

mod cluster;
mod concurrency;
mod kv;
mod lease;
mod lease_headers;
mod watch;
