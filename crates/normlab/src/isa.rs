//! Which vector instructions the kernels use, chosen once at run time.
//!
//! normlab is built without `target-cpu` flags (as `cargo install` and a
//! path dependency build it), so the compiler may assume only what every
//! x86-64 CPU has. The hot kernels are compiled three times, for
//! [`Isa::Avx512`], [`Isa::Avx2`] and [`Isa::Portable`] (the `multiversion!`
//! macro of `kernels`, and `#[target_feature]` on the hand-written
//! AVX-512 and AVX2 kernels), and [`active`] picks one: the best this CPU
//! has, capped by the environment variable `NORMLAB_ISA`
//! (`avx512`, `avx2` or `portable`), as PyTorch's `ATEN_CPU_CAPABILITY`
//! caps its kernels.
//!
//! Every version of a kernel computes the same values: multiply-adds are
//! fused in all three, sums keep their order, so the choice of version
//! changes the speed and never the results (tested). Where AVX2 or AVX-512
//! adds a kernel of its own (a convolution in vector lanes), that kernel
//! sums in another order, and a network's results agree to about 1e-6
//! across levels rather than bit for bit.
//!
//! The portable level fuses its multiply-adds through the C library's
//! `fma`, which keeps the values of the other levels but costs a call per
//! multiply-add on x86-64: BN-LeNet trains about 23 times slower at
//! `NORMLAB_ISA=portable` than at `avx2` on the same CPU, and slower still
//! on CPUs without FMA hardware (before Intel's Haswell and AMD's
//! Piledriver), where `fma` is a software routine. On aarch64, where FMA
//! is an instruction of every CPU, the portable level is not slowed.
//!
//! ```
//! let isa = normlab::isa::active();
//! println!("kernels use {isa} (this CPU has {})", normlab::isa::detected());
//! assert!(isa <= normlab::isa::detected());
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// A level of vector instructions, ordered from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// What every CPU of the target architecture has (SSE2 on x86-64).
    Portable,
    /// AVX2 with FMA (x86-64-v3: Intel since Haswell, AMD since Zen).
    Avx2,
    /// AVX-512 F, BW, DQ and VL with FMA (x86-64-v4: Intel Skylake-SP and
    /// later servers, Ice Lake and later clients; AMD Zen 4 and later).
    Avx512,
}

impl Isa {
    /// Every level, from least to most.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name `NORMLAB_ISA` takes: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The level named `name` (as [`Isa::name`] writes it, any case).
    pub fn parse(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            2 => Isa::Avx512,
            1 => Isa::Avx2,
            _ => Isa::Portable,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The environment variable that caps [`active`].
pub const ENV: &str = "NORMLAB_ISA";

/// The best level this CPU (and operating system) supports.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v3 = has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2") && has!("lzcnt") && has!("f16c");
        if v3 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Isa::Avx512;
        }
        if v3 {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// `NORMLAB_ISA` as a level: `Ok(None)` when unset or empty, an error
/// message naming the variable and its values when it names none.
pub fn from_env() -> Result<Option<Isa>, String> {
    match std::env::var(ENV) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Isa::parse(&v)
            .map(Some)
            .ok_or_else(|| format!("{ENV}={v:?} names no instruction set; use avx512, avx2 or portable, or unset it")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{ENV} is not UTF-8; use avx512, avx2 or portable")),
    }
}

/// 0: not chosen yet; otherwise the chosen level's number plus one.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level the kernels use: [`detected`], capped by `NORMLAB_ISA` when it
/// names a level (a value that names none is ignored here; the command
/// line refuses it). Chosen at the first call, then fixed unless
/// [`set_cap`] changes it.
#[inline]
pub fn active() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let cap = from_env().ok().flatten().unwrap_or(Isa::Avx512);
            let isa = detected().min(cap);
            ACTIVE.store(isa as u8 + 1, Ordering::Relaxed);
            isa
        }
        v => Isa::from_u8(v - 1),
    }
}

/// True where the AVX-512 kernels may run: x86-64 with [`active`] at
/// [`Isa::Avx512`].
#[inline]
pub fn avx512() -> bool {
    cfg!(target_arch = "x86_64") && active() == Isa::Avx512
}

/// True where the AVX2 kernels may run: x86-64 with [`active`] at
/// [`Isa::Avx2`] or above.
#[inline]
pub fn avx2() -> bool {
    cfg!(target_arch = "x86_64") && active() >= Isa::Avx2
}

/// Makes the kernels use `cap` or [`detected`], whichever is less, from now
/// on, in every thread; returns the level now active. For tests and
/// benchmarks that compare levels in one process: the change is global, so
/// run them where nothing else computes at the same time.
pub fn set_cap(cap: Isa) -> Isa {
    let isa = detected().min(cap);
    ACTIVE.store(isa as u8 + 1, Ordering::Relaxed);
    isa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
            assert_eq!(Isa::parse(&isa.name().to_uppercase()), Some(isa));
        }
        assert_eq!(Isa::parse("sse4"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert_eq!(Isa::from_u8(Isa::Avx2 as u8), Isa::Avx2);
    }
}
