//! Shares the process-wide slot budget among the pools.
//!
//! Every pool first gets its `min` (capped by what it wants), so a low-priority queue is never
//! starved to zero; what is left goes to the critical class, then default, then bulk, each class
//! filling its targets before the next one sees a slot. Inside one class the rest is dealt one
//! slot at a time, so two equal pools split a contended budget evenly instead of first-come.

use runtime::config::Priority;

/// What one pool asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Its priority class.
    pub priority: Priority,
    /// Slots it keeps even when contended.
    pub min: usize,
    /// Slots the control loop wants for it now.
    pub target: usize,
}

/// Slots granted to each demand, in the same order. The sum never exceeds `budget` unless the
/// mins alone do (config validation rules that out; the mins win then, by design).
pub fn allocate(budget: usize, demands: &[Demand]) -> Vec<usize> {
    let mut granted: Vec<usize> = demands.iter().map(|d| d.min.min(d.target)).collect();
    let mut left = budget.saturating_sub(granted.iter().sum());
    for class in [Priority::Critical, Priority::Default, Priority::Bulk] {
        let members: Vec<usize> = (0..demands.len())
            .filter(|&i| demands[i].priority == class)
            .collect();
        while left > 0 {
            let mut gave = false;
            for &i in &members {
                if left > 0 && granted[i] < demands[i].target {
                    granted[i] += 1;
                    left -= 1;
                    gave = true;
                }
            }
            if !gave {
                break;
            }
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(priority: Priority, min: usize, target: usize) -> Demand {
        Demand {
            priority,
            min,
            target,
        }
    }

    #[test]
    fn uncontended_gets_every_target() {
        let g = allocate(
            100,
            &[
                d(Priority::Bulk, 1, 8),
                d(Priority::Critical, 1, 4),
                d(Priority::Default, 2, 20),
            ],
        );
        assert_eq!(g, [8, 4, 20]);
    }

    #[test]
    fn contended_serves_critical_first_and_keeps_mins() {
        let g = allocate(
            10,
            &[
                d(Priority::Bulk, 2, 50),
                d(Priority::Default, 1, 50),
                d(Priority::Critical, 1, 6),
            ],
        );
        assert_eq!(
            g,
            [2, 2, 6],
            "critical filled, default gets the rest, bulk keeps min"
        );
        assert_eq!(g.iter().sum::<usize>(), 10);
    }

    #[test]
    fn equal_pools_split_evenly() {
        let g = allocate(
            9,
            &[d(Priority::Default, 1, 100), d(Priority::Default, 1, 100)],
        );
        assert!(g == [5, 4] || g == [4, 5], "{g:?}");
    }

    #[test]
    fn idle_pools_hold_no_more_than_they_want() {
        let g = allocate(10, &[d(Priority::Critical, 3, 1), d(Priority::Bulk, 0, 0)]);
        assert_eq!(g, [1, 0]);
    }

    #[test]
    fn mins_win_over_a_too_small_budget() {
        let g = allocate(1, &[d(Priority::Critical, 1, 5), d(Priority::Bulk, 1, 5)]);
        assert_eq!(g, [1, 1]);
    }
}
