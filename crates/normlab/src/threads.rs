//! Keeping the thread pool ready across stretches of one-thread work.
//!
//! Between two parallel layers, rayon's other threads wait for work by
//! spinning a little and then sleeping; waking a sleeping thread on these
//! virtual machines takes 10-40 microseconds. A model's small layers (BN1d,
//! sigmoid, a small linear layer) and SGD's update run on one thread, often
//! long enough for the other to fall asleep, and the parallel layer after
//! them paid the wake-up: after 150 µs of one-thread work, the first
//! parallel loop took 20.8 µs, 6.7 µs with the pool kept awake
//! (`dev/examples/wake_cost.rs`, 2 threads). It also lets the linear layers
//! split their matrix products in two, which lost time while each split
//! had to wake the other thread first.
//!
//! The helpers take the pool's jobs while they wait, so a whole training
//! step runs inside one [`keep_pool_awake`]: its dozen parallel passes then
//! never find the other thread asleep (bn-lenet, 2 threads: 0.70 -> 0.665
//! s per epoch over six alternated epochs).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a helper goes on spinning with no job to take: a bound, so
/// that a caller that forgets to return (or runs long one-thread work, such
/// as writing a checkpoint) does not keep other cores busy for nothing,
/// while a long run of parallel passes (a ResNet's 35 ms prediction, a
/// VGG's 100 ms training step) keeps its helpers to the end. The gaps
/// between one layer's parallel pass and the next are tens of
/// microseconds.
const IDLE_SPIN: Duration = Duration::from_millis(2);

thread_local! {
    /// Whether this thread is inside `keep_pool_awake` already.
    static KEPT_AWAKE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` on this thread while every other thread of the current
/// rayon pool stays awake: each runs a helper that takes the pool's pending
/// jobs as they come (`rayon::yield_now`) and spins in between, instead of
/// falling asleep, so that the parallel work inside or after `work` starts
/// at once. Results do not change; with one thread, or inside another
/// `keep_pool_awake` on this thread, it just runs `work`.
pub fn keep_pool_awake<R>(work: impl FnOnce() -> R) -> R {
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || KEPT_AWAKE.get() {
        return work();
    }
    let done = Arc::new(AtomicBool::new(false));
    let caller = rayon::current_thread_index();
    for _ in 0..helpers {
        let flag = Arc::clone(&done);
        rayon::spawn(move || {
            // The caller itself may pick its own helper up while it waits
            // inside `work` (a join whose other half was stolen): spinning
            // there would stall `work` until the bound, so it returns.
            if caller.is_some() && rayon::current_thread_index() == caller {
                return;
            }
            let mut last_job = Instant::now();
            while !flag.load(Ordering::Acquire) && last_job.elapsed() < IDLE_SPIN {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    last_job = Instant::now();
                } else {
                    std::hint::spin_loop();
                }
            }
        });
    }
    /// Ends the helpers and the flag however `work` ends, panics included.
    struct Release(Arc<AtomicBool>);
    impl Drop for Release {
        fn drop(&mut self) {
            KEPT_AWAKE.set(false);
            self.0.store(true, Ordering::Release);
        }
    }
    KEPT_AWAKE.set(true);
    let _release = Release(done);
    work()
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
