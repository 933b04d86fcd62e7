//! What this worker knows about one delivery's lease: when it ends (receipt plus the
//! visibility timeout, moved by every successful extend), and from that how long a settle
//! that could not reach the broker may be tried again (docs/decisions.md, "A failed settle is
//! retried while the lease holds").

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The lease on one delivery as seen from here. Shared by the heartbeat (which moves it) and
/// the settle (which must stop retrying before it ends).
#[derive(Debug)]
pub struct LeaseClock {
    visibility: Duration,
    until: Mutex<Instant>,
}

impl LeaseClock {
    /// A lease taken now for `visibility`. The runner starts one as soon as it has the
    /// delivery; the broker's clock started at the receive, a moment earlier, which the
    /// margin in [`retry_deadline`](Self::retry_deadline) covers.
    pub fn started(visibility: Duration) -> Self {
        LeaseClock {
            visibility,
            until: Mutex::new(Instant::now() + visibility),
        }
    }

    /// The visibility timeout each renewal asks for.
    pub fn visibility(&self) -> Duration {
        self.visibility
    }

    /// An extend asked for at `asked` succeeded: the broker holds the lease until
    /// `asked + visibility` at least (counted from the request, not the reply, so a slow reply
    /// never makes the lease look longer than it is).
    pub fn renewed(&self, asked: Instant) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        *until = (*until).max(asked + self.visibility);
    }

    /// When the lease ends.
    pub fn until(&self) -> Instant {
        *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether half the lease has gone by since it was last renewed (the heartbeat's rhythm).
    pub fn renewal_due(&self, now: Instant) -> bool {
        now + self.visibility / 2 >= self.until()
    }

    /// The last moment a retried settle may start. After the lease ends the broker may hand
    /// the message to another worker, which would then run it a second time, so retries stop
    /// a margin before that: a tenth of the visibility timeout, at least a second (clock
    /// differences, the receive's own round trip), but never more than half of it.
    pub fn retry_deadline(&self) -> Instant {
        let margin = (self.visibility / 10)
            .max(Duration::from_secs(1))
            .min(self.visibility / 2);
        self.until() - margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_is_a_margin_before_the_lease_ends() {
        let clock = LeaseClock::started(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(clock.until(), t0 + Duration::from_secs(30));
        assert_eq!(clock.retry_deadline(), t0 + Duration::from_secs(27));

        let short = LeaseClock::started(Duration::from_secs(4));
        assert_eq!(short.retry_deadline(), t0 + Duration::from_secs(3));
        let tiny = LeaseClock::started(Duration::from_millis(800));
        assert_eq!(tiny.retry_deadline(), t0 + Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_moves_the_lease_from_the_request() {
        let clock = LeaseClock::started(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!clock.renewal_due(t0 + Duration::from_secs(4)));
        assert!(clock.renewal_due(t0 + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(6)).await;
        clock.renewed(t0 + Duration::from_secs(5));
        assert_eq!(clock.until(), t0 + Duration::from_secs(15));
        // A late report of an older renewal never shortens it.
        clock.renewed(t0 + Duration::from_secs(1));
        assert_eq!(clock.until(), t0 + Duration::from_secs(15));
        assert!(!clock.renewal_due(Instant::now()));
    }
}
