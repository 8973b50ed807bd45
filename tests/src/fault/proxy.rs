//! A fault-injecting TCP proxy: listens on `127.0.0.1:0` and forwards each accepted connection
//! to one target, in a [`Mode`] that can be switched at any time from any thread.
//!
//! Thread-based (an accept thread, two pump threads per connection) so that it runs whatever
//! runtime the test uses, and keeps running while the test thread blocks.
//!
//! - [`Mode::Pass`]: bytes are forwarded as read.
//! - [`Mode::Delay`]: each chunk read is held `fixed + U(0, jitter)` before it is forwarded
//!   (chunks of one direction stay in order, so delays add up under load).
//! - [`Mode::Drop`]: a "reset" partition. Open connections are shut down at once and new ones are
//!   accepted and closed immediately: peers see errors and re-dial.
//! - [`Mode::Blackhole`]: the nasty partition. Connections stay open, what arrives is read and
//!   discarded (counted in [`ProxyStats::discarded_bytes`]), nothing is forwarded and nothing is
//!   answered; new connections are accepted and treated the same. Senders notice only by their
//!   own timeouts (HTTP/2 keep-alive pings).
//!
//! Healing ([`Proxy::heal`], i.e. back to `Pass`) closes the connections that lost bytes in a
//! blackhole: their byte streams now have holes a real network would have retransmitted, and
//! forwarding the rest would only feed the peer garbage. Connections that lost nothing resume.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the proxy waits to connect to its target for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a [`Proxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Forward each chunk after `fixed` plus a uniformly random part of `jitter`.
    Delay {
        /// Added to every chunk.
        fixed: Duration,
        /// Up to this much more, drawn per chunk.
        jitter: Duration,
    },
    /// Close open connections and every new one (peers see resets / EOF).
    Drop,
    /// Read and discard everything, forward and answer nothing, close nothing.
    Blackhole,
}

/// Counters of a [`Proxy`] since it started (a snapshot from [`Proxy::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted (including ones closed at once in [`Mode::Drop`]).
    pub accepted: u64,
    /// Connections closed on arrival because the proxy was in [`Mode::Drop`].
    pub refused: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes forwarded from clients to the target.
    pub bytes_to_target: u64,
    /// Bytes forwarded from the target back to clients.
    pub bytes_to_client: u64,
    /// Bytes read and thrown away in [`Mode::Blackhole`] (both directions).
    pub discarded_bytes: u64,
}

/// A running proxy. Dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    conns: Mutex<Vec<Conn>>,
    next_id: AtomicU64,
    closing: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    to_target: AtomicU64,
    to_client: AtomicU64,
    discarded: AtomicU64,
    /// Jitter's random state (xorshift64).
    rng: Mutex<u64>,
}

/// One proxied connection: clones of both sockets (to shut them down from outside).
#[derive(Debug)]
struct Conn {
    id: u64,
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// Lost bytes in a blackhole: closed on heal.
    holed: Arc<AtomicBool>,
}

impl Conn {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `target`, in [`Mode::Pass`].
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Pass),
            conns: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            to_target: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            rng: Mutex::new(seed),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("proxy-{addr}"))
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address the proxy listens on (dial this instead of the target).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *lock(&self.shared.mode)
    }

    /// Switches to `mode`. [`Mode::Drop`] closes every open connection; leaving
    /// [`Mode::Blackhole`] for any other mode closes the connections that lost bytes.
    pub fn set_mode(&self, mode: Mode) {
        let old = std::mem::replace(&mut *lock(&self.shared.mode), mode);
        let conns = lock(&self.shared.conns);
        match mode {
            Mode::Drop => conns.iter().for_each(Conn::close),
            Mode::Blackhole => {}
            Mode::Pass | Mode::Delay { .. } if old == Mode::Blackhole => conns
                .iter()
                .filter(|c| c.holed.load(Ordering::SeqCst))
                .for_each(Conn::close),
            Mode::Pass | Mode::Delay { .. } => {}
        }
    }

    /// Forwards everything again ([`Mode::Pass`]).
    pub fn heal(&self) {
        self.set_mode(Mode::Pass);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Ordering::SeqCst),
            refused: s.refused.load(Ordering::SeqCst),
            open: lock(&s.conns).len() as u64,
            bytes_to_target: s.to_target.load(Ordering::SeqCst),
            bytes_to_client: s.to_client.load(Ordering::SeqCst),
            discarded_bytes: s.discarded.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        lock(&self.shared.conns).iter().for_each(Conn::close);
        // Wake the accept thread: it sees `closing` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let mode = *lock(&shared.mode);
        if mode == Mode::Drop {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        // A blackholed connection never reaches the target.
        let upstream = if mode == Mode::Blackhole {
            None
        } else {
            match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
                Ok(u) => {
                    let _ = u.set_nodelay(true);
                    Some(u)
                }
                Err(e) => {
                    tracing::debug!(target = %shared.target, error = %e, "proxy: target unreachable");
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
            }
        };
        let spawned = start_conn(&shared, client, upstream, mode == Mode::Blackhole);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "proxy: cannot start connection threads");
        }
    }
}

fn start_conn(
    shared: &Arc<Shared>,
    client: TcpStream,
    upstream: Option<TcpStream>,
    holed: bool,
) -> std::io::Result<()> {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let holed = Arc::new(AtomicBool::new(holed));
    let conn = Conn {
        id,
        client: client.try_clone()?,
        upstream: upstream.as_ref().map(TcpStream::try_clone).transpose()?,
        holed: Arc::clone(&holed),
    };
    lock(&shared.conns).push(conn);
    match upstream {
        Some(up) => {
            let (c2, u2) = (client.try_clone()?, up.try_clone()?);
            spawn_pump(shared, id, client, Some(up), &holed, Direction::ToTarget)?;
            spawn_pump(shared, id, u2, Some(c2), &holed, Direction::ToClient)?;
        }
        None => spawn_pump(shared, id, client, None, &holed, Direction::ToTarget)?,
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToTarget,
    ToClient,
}

fn spawn_pump(
    shared: &Arc<Shared>,
    id: u64,
    src: TcpStream,
    dst: Option<TcpStream>,
    holed: &Arc<AtomicBool>,
    dir: Direction,
) -> std::io::Result<()> {
    let shared = Arc::clone(shared);
    let holed = Arc::clone(holed);
    std::thread::Builder::new()
        .name(format!("proxy-conn-{id}"))
        .spawn(move || {
            pump(&shared, src, dst, &holed, dir);
            // Either side ending ends the connection.
            let mut conns = lock(&shared.conns);
            if let Some(pos) = conns.iter().position(|c| c.id == id) {
                conns.remove(pos).close();
            }
        })?;
    Ok(())
}

/// Copies `src` to `dst` chunk by chunk, applying the mode in force when each chunk arrives.
/// Returns on EOF, an error, a shut-down socket or [`Mode::Drop`].
fn pump(
    shared: &Shared,
    mut src: TcpStream,
    mut dst: Option<TcpStream>,
    holed: &AtomicBool,
    dir: Direction,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mode = *lock(&shared.mode);
        let delay = match mode {
            Mode::Drop => return,
            Mode::Blackhole => {
                holed.store(true, Ordering::SeqCst);
                shared.discarded.fetch_add(n as u64, Ordering::SeqCst);
                continue;
            }
            Mode::Pass => Duration::ZERO,
            Mode::Delay { fixed, jitter } => fixed + shared.jitter(jitter),
        };
        if holed.load(Ordering::SeqCst) {
            // Healed after losing bytes: this connection is being closed.
            return;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let Some(dst) = dst.as_mut() else { return };
        // Counted before the write, so that whoever sees the bytes arrive sees them counted.
        let counter = match dir {
            Direction::ToTarget => &shared.to_target,
            Direction::ToClient => &shared.to_client,
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
        if dst.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

impl Shared {
    /// A uniformly random duration in `[0, max]` (millisecond-ish resolution is plenty).
    fn jitter(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let mut x = lock(&self.rng);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(*x % (nanos + 1))
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test must still be able to clean up).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
