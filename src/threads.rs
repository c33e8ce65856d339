//! Keeping the thread pool ready across stretches of one-thread work.
//!
//! Between two parallel layers, rayon's other threads wait for work by
//! spinning a little and then sleeping; waking a sleeping thread on these
//! virtual machines takes 10-40 microseconds. A model's small layers (BN1d,
//! sigmoid, a small linear layer) and SGD's update run on one thread, often
//! long enough for the other to fall asleep, and the parallel layer after
//! them paid the wake-up: after 150 µs of one-thread work, the first
//! parallel loop took 20.8 µs, 6.7 µs with the pool kept awake
//! (`examples/wake_cost.rs`, 2 threads). It also lets the linear layers
//! split their matrix products in two, which lost time while each split
//! had to wake the other thread first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a helper spins: a bound, so that it cannot hold a thread for
/// long if the work it waits for runs parallel code after all (and the
/// helper then runs on the thread that should finish that work).
const MAX_SPIN: Duration = Duration::from_millis(2);

/// Runs `work` on this thread while one other thread of the current rayon
/// pool spins, so that the parallel work after it starts at once. Results
/// do not change; with one thread it just runs `work`.
pub fn keep_pool_awake<R>(work: impl FnOnce() -> R) -> R {
    if rayon::current_num_threads() < 2 {
        return work();
    }
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    rayon::spawn(move || {
        let start = Instant::now();
        while !flag.load(Ordering::Acquire) && start.elapsed() < MAX_SPIN {
            std::hint::spin_loop();
        }
    });
    let result = work();
    done.store(true, Ordering::Release);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_work_result() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let sums: Vec<u64> = pool.install(|| (1..=100).map(|k| keep_pool_awake(|| (0..=k).sum())).collect());
        assert_eq!((sums[0], sums[99]), (1, 5050));
    }

    /// Parallel work inside the stretch still finishes, even where this
    /// thread ends up running the helper itself (without the bound on its
    /// spinning, that would wait forever).
    #[test]
    fn parallel_work_inside_finishes() {
        use rayon::prelude::*;
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let total: u64 = pool.install(|| {
                (0..20)
                    .map(|_| {
                        keep_pool_awake(|| (0..10_000u32).into_par_iter().with_max_len(64).map(u64::from).sum::<u64>())
                    })
                    .sum()
            });
            assert_eq!(total, 20 * 49_995_000, "{threads} threads");
        }
    }
}
