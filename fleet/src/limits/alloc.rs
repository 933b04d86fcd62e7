//! The arithmetic of sharing a limit among workers, kept apart from SQL and tasks so it can be
//! tested on its own: refilling the fleet's token bucket, and granting a worker its slots of a
//! fleet-wide concurrency cap.

use std::time::Duration;

/// How many tokens the fleet's bucket of a rate holds at most: what the fleet may start at
/// once after a quiet spell (the "one small burst"). Two lease ticks of the rate, so a worker
/// taking its batch a little late does not lose refill, and at least one token.
pub fn burst(per_sec: f64, tick: Duration) -> f64 {
    (per_sec * tick.as_secs_f64() * 2.0).max(1.0)
}

/// The bucket after `elapsed` seconds of refill at `per_sec`, capped at `burst`. `tokens` may
/// include what a worker gives back.
pub fn refill(tokens: f64, elapsed: f64, per_sec: f64, burst: f64) -> f64 {
    (tokens.max(0.0) + elapsed.max(0.0) * per_sec).min(burst)
}

/// Whole tokens a worker asking for `want` gets from a bucket holding `available`.
pub fn take(available: f64, want: u32) -> u32 {
    available.max(0.0).floor().min(want as f64) as u32
}

/// Another worker's lease on a concurrency cap, as the table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Slots it holds (at least its running jobs).
    pub held: u32,
    /// Slots it would use: its running jobs plus those waiting for a slot.
    pub wanted: u32,
}

/// A worker's grant of a cap of `limit` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Jobs it may have running: it starts one only while it runs fewer.
    pub slots: u32,
    /// What it records as held: never below what it runs, so a lowered limit counts the jobs
    /// that run on until they end, and nobody else is granted their slots meanwhile.
    pub held: u32,
}

/// The slots a worker running `running` jobs and wanting `wanted` gets of `limit`, the others
/// holding `peers`. It gets what is free, but while some other worker wants more than it holds,
/// no more than a fair share (the limit over the workers that want any), so one busy worker
/// cannot keep the whole cap: it gives back slots as its jobs end.
pub fn grant_slots(limit: u32, running: u32, wanted: u32, peers: &[Peer]) -> Grant {
    let others: u32 = peers.iter().map(|p| p.held).sum();
    let mut slots = wanted.min(limit.saturating_sub(others));
    if peers.iter().any(|p| p.wanted > p.held) {
        let wanting = 1 + peers.iter().filter(|p| p.wanted > 0).count() as u32;
        slots = slots.min(limit.div_ceil(wanting));
    }
    Grant {
        slots,
        held: slots.max(running),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_the_burst() {
        let b = burst(10.0, Duration::from_millis(500));
        assert_eq!(b, 10.0);
        assert_eq!(burst(0.01, Duration::from_millis(500)), 1.0);
        assert_eq!(refill(0.0, 0.5, 10.0, b), 5.0);
        assert_eq!(refill(4.0, 60.0, 10.0, b), 10.0, "capped");
        assert_eq!(refill(-1.0, 0.1, 10.0, b), 1.0);
        assert_eq!(take(5.7, 3), 3);
        assert_eq!(take(2.7, 30), 2);
        assert_eq!(take(0.4, 1), 0);
    }

    /// Three workers always asking for more than there is, each taking its batch once per
    /// tick: over a minute the fleet gets the rate, plus at most one burst.
    #[test]
    fn workers_asking_every_tick_get_the_rate_between_them() {
        let (per_sec, tick) = (10.0, Duration::from_millis(500));
        let b = burst(per_sec, tick);
        let mut bucket = b; // a full bucket after a quiet spell: the one burst
        let mut got = [0u32; 3];
        let step = tick.as_secs_f64() / 3.0;
        for i in 0..(60 * 2 * 3) {
            bucket = refill(bucket, step, per_sec, b);
            let t = take(bucket, 1000);
            bucket -= t as f64;
            got[i % 3] += t;
        }
        let total: u32 = got.iter().sum();
        assert!((600..=600 + b as u32).contains(&total), "{total}");
        // Who asks first after a refill gets a little more; every worker gets a real share.
        assert!(
            got.iter().all(|&g| g > 100),
            "each worker got a share: {got:?}"
        );
    }

    #[test]
    fn slots_never_exceed_the_limit_and_are_shared() {
        // Alone: what it wants, up to the limit.
        assert_eq!(grant_slots(5, 0, 8, &[]).slots, 5);
        assert_eq!(grant_slots(5, 0, 2, &[]).slots, 2);
        // The rest of the cap when others hold some.
        let p = |held, wanted| Peer { held, wanted };
        assert_eq!(grant_slots(5, 0, 8, &[p(3, 3)]).slots, 2);
        assert_eq!(grant_slots(5, 0, 8, &[p(5, 5)]).slots, 0);
        // Another wants more than it holds: a fair share, but running jobs stay counted.
        let g = grant_slots(5, 5, 8, &[p(0, 4)]);
        assert_eq!(g, Grant { slots: 3, held: 5 });
        let g = grant_slots(5, 2, 8, &[p(2, 4)]);
        assert_eq!(g, Grant { slots: 3, held: 3 });
        // A lowered limit: nothing new starts while the running ones are above it.
        assert_eq!(grant_slots(2, 4, 6, &[]), Grant { slots: 2, held: 4 });
    }

    /// Workers granting in turn, each starting what its grant allows and finishing one job
    /// per round: the sum of running jobs never passes the cap, and every worker gets slots.
    #[test]
    fn turns_of_three_workers_stay_under_the_cap() {
        let limit = 5;
        let mut running = [0u32; 3];
        let mut held = [0u32; 3];
        let mut ran = [0u32; 3];
        for round in 0..300 {
            let w = round % 3;
            running[w] = running[w].saturating_sub(1); // one of its jobs ended
            let peers: Vec<Peer> = (0..3)
                .filter(|&o| o != w)
                .map(|o| Peer {
                    held: held[o],
                    wanted: running[o] + 10,
                })
                .collect();
            let g = grant_slots(limit, running[w], running[w] + 10, &peers);
            held[w] = g.held;
            let start = g.slots.saturating_sub(running[w]);
            running[w] += start;
            ran[w] += start;
            assert!(
                running.iter().sum::<u32>() <= limit,
                "round {round}: {running:?}"
            );
            assert!(held.iter().sum::<u32>() <= limit, "round {round}: {held:?}");
        }
        assert!(ran.iter().all(|&r| r > 50), "{ran:?}");
    }
}
