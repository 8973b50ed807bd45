//! What one benchmark client sends: the workload kinds, key and value generation, and the
//! request each operation becomes.
//!
//! Keys are decimal numbers zero-padded to `--key-size` bytes (`00000042` for key 42 at 8
//! bytes), so a key space of `N` is `N` distinct printable keys of exactly the requested size,
//! easy to inspect with `etcdctl get --prefix ""`. Values are `--val-size` bytes of one fixed
//! pattern (neither side compresses, so the content does not matter).

use clap::ValueEnum;
use raftkv_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// The operation mixes `raftkv bench` can run, named as etcd's benchmark names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Put one key per request.
    Put,
    /// Linearizable single-key range over pre-populated keys.
    Range,
    /// Serializable single-key range over pre-populated keys (answered by the member itself).
    RangeSerializable,
    /// A Txn with no compares and `--txn-ops` puts in `success`.
    TxnPut,
    /// Linearizable single-key ranges and puts, `--rw-ratio` reads per write, over pre-populated
    /// keys; reads and writes are also reported apart.
    Mixed,
    /// `--watchers` watches on one prefix and writers putting under it: event latency (see
    /// `bench::watch`).
    Watch,
    /// `--leases` leases kept alive over `--streams` streams: keep-alive throughput, leases
    /// lost (see `bench::lease`).
    LeaseKeepalive,
}

impl Workload {
    /// The name on the command line and in the reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::RangeSerializable => "range-serializable",
            Workload::TxnPut => "txn-put",
            Workload::Mixed => "mixed",
            Workload::Watch => "watch",
            Workload::LeaseKeepalive => "lease-keepalive",
        }
    }

    /// Whether the workload reads keys that must exist before it starts.
    pub(crate) fn needs_populated_keys(self) -> bool {
        matches!(
            self,
            Workload::Range | Workload::RangeSerializable | Workload::Mixed
        )
    }
}

/// The kind of one request, for the per-kind breakdown of `mixed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// A Range.
    Read,
    /// A Put or a Txn.
    Write,
}

/// One request to send.
#[derive(Debug)]
pub(crate) enum Op {
    /// `KV.Put`.
    Put(PutRequest),
    /// `KV.Range`.
    Range(RangeRequest),
    /// `KV.Txn`.
    Txn(TxnRequest),
}

impl Op {
    /// Read or write.
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            Op::Range(_) => OpKind::Read,
            Op::Put(_) | Op::Txn(_) => OpKind::Write,
        }
    }
}

/// Key and value shapes, shared by every client.
#[derive(Clone, Debug)]
pub(crate) struct KeyGen {
    key_size: usize,
    key_space: u64,
    sequential: bool,
    value: Vec<u8>,
}

impl KeyGen {
    /// Largest key space `key_size` bytes of decimal digits can name.
    pub(crate) fn max_key_space(key_size: usize) -> u64 {
        if key_size >= 19 {
            u64::MAX
        } else {
            // key_size < 19, so the power fits in a u64 (10^18 < 2^64).
            10u64.pow(u32::try_from(key_size).unwrap_or(0))
        }
    }

    /// Keys of `key_size` bytes drawn from `0..key_space` (sequentially by request number, or
    /// uniformly at random), values of `val_size` bytes.
    pub(crate) fn new(key_size: usize, key_space: u64, sequential: bool, val_size: usize) -> Self {
        let value = (0..val_size).map(|i| b'a' + (i % 26) as u8).collect();
        KeyGen {
            key_size,
            key_space,
            sequential,
            value,
        }
    }

    /// The value every put writes.
    pub(crate) fn value(&self) -> &[u8] {
        &self.value
    }

    /// The number of distinct keys.
    pub(crate) fn key_space(&self) -> u64 {
        self.key_space
    }

    /// Key number `n` (taken modulo the key space).
    pub(crate) fn key(&self, n: u64) -> Vec<u8> {
        format!("{:0width$}", n % self.key_space, width = self.key_size).into_bytes()
    }

    /// The key for request number `seq`: `seq` itself with `--seq-keys`, else a random one.
    pub(crate) fn pick(&self, seq: u64, rng: &mut Rng) -> Vec<u8> {
        if self.sequential {
            self.key(seq)
        } else {
            self.key(rng.below(self.key_space))
        }
    }

    /// A put of key number `n`.
    pub(crate) fn put(&self, n: u64) -> PutRequest {
        PutRequest {
            key: self.key(n),
            value: self.value.clone(),
            ..PutRequest::default()
        }
    }

    fn put_key(&self, key: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value: self.value.clone(),
            ..PutRequest::default()
        }
    }

    /// The request number `seq` of a workload sends. `watch` and `lease-keepalive` build their
    /// own requests; here they are plain puts.
    pub(crate) fn op(&self, spec: &OpSpec, seq: u64, rng: &mut Rng) -> Op {
        match spec.workload {
            Workload::Put | Workload::Watch | Workload::LeaseKeepalive => {
                Op::Put(self.put_key(self.pick(seq, rng)))
            }
            Workload::Range | Workload::RangeSerializable => Op::Range(RangeRequest {
                key: self.pick(seq, rng),
                serializable: spec.workload == Workload::RangeSerializable,
                ..RangeRequest::default()
            }),
            Workload::TxnPut => {
                // Txn refuses duplicate keys among its puts: take consecutive keys from the
                // picked one (the key space is validated to be at least `txn_ops`).
                let first = if self.sequential {
                    seq.wrapping_mul(spec.txn_ops as u64)
                } else {
                    rng.below(self.key_space)
                };
                let success = (0..spec.txn_ops as u64)
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::RequestPut(
                            self.put(first.wrapping_add(i)),
                        )),
                    })
                    .collect();
                Op::Txn(TxnRequest {
                    success,
                    ..TxnRequest::default()
                })
            }
            Workload::Mixed => {
                // `rw_ratio` reads per write: a write with probability 1 / (1 + rw_ratio).
                let write = rng.unit() * (1.0 + spec.rw_ratio) < 1.0;
                let key = self.pick(seq, rng);
                if write {
                    Op::Put(self.put_key(key))
                } else {
                    Op::Range(RangeRequest {
                        key,
                        ..RangeRequest::default()
                    })
                }
            }
        }
    }
}

/// The workload parameters that shape each request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpSpec {
    /// Which mix.
    pub(crate) workload: Workload,
    /// Puts per Txn (`txn-put`).
    pub(crate) txn_ops: usize,
    /// Reads per write (`mixed`).
    pub(crate) rw_ratio: f64,
}

/// A small, fast, seedable generator (SplitMix64): one per client, so clients never contend and
/// no dependency is needed for uniform key picks.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is negligible for key spaces far below 2^64).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_wrap_at_the_key_space() {
        let g = KeyGen::new(8, 1000, true, 4);
        assert_eq!(g.key(42), b"00000042");
        assert_eq!(g.key(1042), b"00000042");
        assert_eq!(KeyGen::max_key_space(3), 1000);
        assert_eq!(KeyGen::max_key_space(20), u64::MAX);
    }

    #[test]
    fn txn_put_never_repeats_a_key() {
        let g = KeyGen::new(4, 10, false, 1);
        let spec = OpSpec {
            workload: Workload::TxnPut,
            txn_ops: 10,
            rw_ratio: 1.0,
        };
        let mut rng = Rng::new(7);
        for seq in 0..100 {
            let Op::Txn(t) = g.op(&spec, seq, &mut rng) else {
                panic!("txn-put must send a Txn");
            };
            let mut keys: Vec<_> = t
                .success
                .iter()
                .map(|op| match &op.request {
                    Some(request_op::Request::RequestPut(p)) => p.key.clone(),
                    other => panic!("unexpected op {other:?}"),
                })
                .collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), 10);
        }
    }

    #[test]
    fn mixed_honours_the_read_write_ratio() {
        let g = KeyGen::new(8, 100, false, 1);
        let spec = OpSpec {
            workload: Workload::Mixed,
            txn_ops: 1,
            rw_ratio: 3.0,
        };
        let mut rng = Rng::new(1);
        let writes = (0..40_000)
            .filter(|&s| g.op(&spec, s, &mut rng).kind() == OpKind::Write)
            .count();
        assert!(
            (9_000..11_000).contains(&writes),
            "{writes} writes of 40000"
        );
    }
}
