//! Where the service reads the current time.
//!
//! Expiry, windows and cooldowns all depend on "now"; tests drive them with a
//! [`ManualClock`] instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::time::Timestamp;

/// A source of the current instant.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = chrono::Utc::now().timestamp_millis();
        Timestamp::from_millis(millis).expect("the system clock is between 1970 and 9999")
    }
}

/// A clock that only moves when told to; shared by cloning.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn starting_at(instant: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(instant.millis())))
    }

    pub fn advance_seconds(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1000, Ordering::SeqCst);
    }

    pub fn set(&self, instant: Timestamp) {
        self.0.store(instant.millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst)).expect("manual clock in range")
    }
}
