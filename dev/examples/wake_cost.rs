//! What the first parallel loop after a stretch of one-thread work costs,
//! with and without `threads::keep_pool_awake` around the stretch (a
//! profiling aid).
use std::time::{Duration, Instant};

use rayon::prelude::*;

fn serial_work(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    rayon::ThreadPoolBuilder::new().build().unwrap().install(|| {
        let mut v = vec![1.0f32; 1 << 16];
        for stretch_us in [20, 150, 400] {
            for awake in [false, true, false, true] {
                let mut total = 0.0;
                for _ in 0..500 {
                    let d = Duration::from_micros(stretch_us);
                    if awake {
                        normlab::threads::keep_pool_awake(|| serial_work(d));
                    } else {
                        serial_work(d);
                    }
                    let t = Instant::now();
                    v.par_chunks_mut(1 << 12).for_each(|c| c.iter_mut().for_each(|x| *x *= 1.0001));
                    total += t.elapsed().as_secs_f64();
                }
                println!(
                    "after {stretch_us:>3} us of one-thread work, pool kept awake: {awake:<5}: parallel loop {:.1} us",
                    total / 500.0 * 1e6
                );
            }
        }
    });
}
