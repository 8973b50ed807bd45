//! The dispatcher's clock: the system clock, or a manual one that tests move by hand (to cross a
//! daylight-saving change in a second instead of a season).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A source of "now" that can be slept on.
#[derive(Clone, Debug)]
pub enum Clock {
    /// Wall-clock time.
    System,
    /// Time that moves only when [`ManualClock::set`] is called.
    Manual(ManualClock),
}

impl Clock {
    /// The current instant.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(m) => *m.now.borrow(),
        }
    }

    /// Waits until the clock reads `at` or later.
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        match self {
            Clock::System => loop {
                let left = at - Utc::now();
                match left.to_std() {
                    Ok(d) if !d.is_zero() => tokio::time::sleep(d).await,
                    _ => return,
                }
            },
            Clock::Manual(m) => {
                let mut rx = m.now.subscribe();
                let _ = rx.wait_for(|now| *now >= at).await;
            }
        }
    }
}

/// A clock set by hand; clones share it.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Arc::new(watch::channel(at).0),
        }
    }

    /// Moves the clock (forward or back) to `at`, waking sleepers it passes.
    pub fn set(&self, at: DateTime<Utc>) {
        self.now.send_replace(at);
    }
}
