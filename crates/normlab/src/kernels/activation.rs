//! What the batch-norm kernels need of an activation applied to their
//! output in the same sweep (`y = f(h)`, `h` the normalized value): its
//! value and the gradient it passes back. The kernels are generic over it,
//! so each activation gets its own compiled loop; [`Identity`] is plain
//! batch norm, and the kernels then run exactly their unfused code.
//!
//! Each `grad` does the arithmetic of the activation layer's own backward
//! pass, in the same order, so a fused layer computes bitwise what batch
//! norm followed by the activation layer computes (tested in
//! `layers::batch_norm::activation`).

use super::sigmoid::sigmoid;
use crate::real::Real;

/// An activation as the fused kernels apply it.
pub trait Activation<T: Real>: Copy + Send + Sync {
    /// True only for [`Identity`]: the kernels then read `dy` as the
    /// gradient of `h` and may store their output streaming.
    const IDENTITY: bool = false;
    /// `y = f(h)`.
    fn value(&self, h: T) -> T;
    /// `dLoss/dh` from `h` and `dy = dLoss/dy`.
    fn grad(&self, h: T, dy: T) -> T;
}

/// No activation: batch norm alone.
#[derive(Clone, Copy, Debug)]
pub struct Identity;

impl<T: Real> Activation<T> for Identity {
    const IDENTITY: bool = true;
    #[inline(always)]
    fn value(&self, h: T) -> T {
        h
    }
    #[inline(always)]
    fn grad(&self, _h: T, dy: T) -> T {
        dy
    }
}

/// `y = 1 / (1 + exp(-h))`, `dh = dy·y·(1 - y)` (as `layers::Sigmoid`).
#[derive(Clone, Copy, Debug)]
pub struct SigmoidAct;

impl<T: Real> Activation<T> for SigmoidAct {
    #[inline(always)]
    fn value(&self, h: T) -> T {
        sigmoid(h)
    }
    #[inline(always)]
    fn grad(&self, h: T, dy: T) -> T {
        let y = sigmoid(h);
        dy * y * (T::one() - y)
    }
}

/// `y = max(h, 0)`, `dh = dy·[h > 0]` (as `layers::ReLU`).
#[derive(Clone, Copy, Debug)]
pub struct ReluAct;

impl<T: Real> Activation<T> for ReluAct {
    #[inline(always)]
    fn value(&self, h: T) -> T {
        if h > T::zero() {
            h
        } else {
            T::zero()
        }
    }
    #[inline(always)]
    fn grad(&self, h: T, dy: T) -> T {
        if h > T::zero() {
            dy
        } else {
            T::zero()
        }
    }
}
