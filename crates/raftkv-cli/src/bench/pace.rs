//! Pacing and progress, shared by every workload: the `--rate` cap on requests sent, and the
//! progress bar on stderr.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::Stop;

/// The `--rate` cap: at most `rate` requests per second in all, spaced evenly.
///
/// It works like a token bucket of burst 1 (etcd's benchmark uses `rate.NewLimiter(rate, 1)`):
/// a sender that comes late gets the next free slot, not the slots it missed, so a stall is
/// never followed by a burst that would distort the latencies measured after it. The std
/// `Mutex` guards one `Instant` and is never held across an `.await`.
#[derive(Clone, Debug)]
pub(crate) struct Pacer {
    /// Time between two requests; `None`: unlimited.
    interval: Option<Duration>,
    /// The earliest time the next request may go.
    next: Arc<Mutex<Instant>>,
}

impl Pacer {
    /// A cap of `rate` requests per second in all; `0` means no cap.
    pub(crate) fn new(rate: f64) -> Self {
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        Pacer {
            interval,
            next: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Takes the next free slot and returns when it is due (`now` or later).
    pub(crate) fn reserve(&self, now: Instant) -> Instant {
        let Some(interval) = self.interval else {
            return now;
        };
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (*next).max(now);
        *next = slot + interval;
        slot
    }

    /// Waits for the next free slot (returns at once when there is no cap).
    pub(crate) async fn wait(&self) {
        if self.interval.is_some() {
            let slot = self.reserve(Instant::now());
            tokio::time::sleep_until(slot.into()).await;
        }
    }
}

/// A progress bar on stderr while a phase runs, drawn only when stderr is a terminal (scripts
/// that capture stderr get nothing). With a request count it fills as requests complete; with a
/// duration it fills with time and counts requests in its message. Dropping it stops its
/// ticker and clears the line.
pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts a bar titled `title` for a phase ending at `stop`; clients add what they
    /// complete to `done`.
    pub(crate) fn start(title: &str, stop: Stop, done: Arc<AtomicU64>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let (len, template) = match stop {
            Stop::Total(n) => (
                n,
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
            ),
            Stop::After(d) => (
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                "{prefix} [{elapsed_precise}/{duration_precise}] {wide_bar} {msg}",
            ),
        };
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(title.to_owned());
        let start = Instant::now();
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                let n = done.load(Ordering::Relaxed);
                match stop {
                    Stop::Total(_) => ticking.set_position(n),
                    Stop::After(_) => {
                        let elapsed = start.elapsed();
                        ticking
                            .set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                        let rate = n as f64 / elapsed.as_secs_f64().max(1e-3);
                        ticking.set_message(format!("{n} ({rate:.0}/s)"));
                    }
                }
            }
        });
        Progress {
            bar,
            ticker: Some(ticker),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_means_no_wait() {
        let p = Pacer::new(0.0);
        let now = Instant::now();
        assert_eq!(p.reserve(now), now);
        assert_eq!(p.reserve(now), now);
    }

    #[test]
    fn slots_are_spaced_by_the_interval() {
        let p = Pacer::new(100.0);
        let now = Instant::now();
        let a = p.reserve(now);
        let b = p.reserve(now);
        let c = p.reserve(now);
        assert!(a >= now);
        assert_eq!(b - a, Duration::from_millis(10));
        assert_eq!(c - b, Duration::from_millis(10));
    }

    #[test]
    fn a_late_sender_gets_the_next_slot_not_a_burst_of_missed_ones() {
        let p = Pacer::new(100.0);
        let t0 = Instant::now();
        let _ = p.reserve(t0);
        // One second late: 99 slots were missed; the sender goes now and the next one 10 ms on.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(p.reserve(late), late);
        assert_eq!(p.reserve(late), late + Duration::from_millis(10));
    }
}
