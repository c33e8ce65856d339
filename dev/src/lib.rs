//! Profiling probes live in `examples/`; this crate holds what several of
//! them share: timing by the thread's CPU time, and the suite's 3x3 shapes.

use std::time::Instant;

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds this thread has run on a CPU: the machine may be shared,
/// and time spent descheduled is not the kernel's.
pub fn cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for the call to write
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Seconds on the clock the per-layer probes read: the thread's CPU time
/// when the rayon pool has one thread (a busy machine disturbs it less
/// than wall time), else wall time since the first call.
pub fn probe_clock() -> f64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if rayon::current_num_threads() == 1 {
        if let Some(ns) = cpu_ns() {
            return ns as f64 * 1e-9;
        }
    }
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// µs per call of `f`: the thread's CPU time where the OS reports it, else wall time.
pub fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let (t, c) = (Instant::now(), cpu_ns());
    for _ in 0..reps {
        f();
    }
    match (c, cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e3 / reps as f64,
        _ => t.elapsed().as_secs_f64() * 1e6 / reps as f64,
    }
}

/// The suite networks' 3x3 stride-1 layers (vgg-bn, resnet-bn) and a few
/// neighbours, as (input channels, output channels, height = width), for
/// the probes of the 3x3 kernels.
pub const SUITE_3X3: &[(usize, usize, usize)] = &[
    (32, 32, 28),
    (32, 64, 14),
    (64, 64, 14),
    (64, 128, 7),
    (128, 128, 7),
    (16, 16, 32),
    (32, 32, 16),
    (64, 64, 8),
    (32, 64, 7),
    (64, 64, 4),
];

/// Whether AVX2 or more is active, the 3x3 kernels' requirement; prints why
/// the probe stops where it is not, and the level where it is.
pub fn kernels_run() -> bool {
    if !normlab::isa::avx2() {
        println!("no AVX2 here (or NORMLAB_ISA=portable): the kernels do not run");
        return false;
    }
    println!("kernels at {}", normlab::isa::active());
    true
}
