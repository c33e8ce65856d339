//! A growable buffer whose first value sits on a 64-byte boundary, the
//! width of a cache line and of an AVX-512 vector. Private to the library:
//! [`crate::Tensor`] and the layers' lane-layout scratch buffers hold one.
//!
//! Why: a 64-byte load or store that straddles two cache lines costs two.
//! `Vec<f32>` starts wherever the allocator puts it (16-byte boundaries
//! here), so every vector access to a tensor straddled. With tensors
//! aligned, planes whose length is a multiple of 16 values (LeNet's 24x24,
//! 12x12, 8x8) start on a line too. Measured on the first convolution in
//! image lanes (one thread, 16 images): forward 25 -> 20 µs, its output
//! stores no longer split.

use std::fmt;

/// Values per line (64 bytes of f32; 128 of f64, still 64-aligned).
const LINE: usize = 16;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line<T: Copy>([T; LINE]);

/// A `Vec<T>` whose start is 64-byte aligned.
#[derive(Clone)]
pub struct AlignedVec<T: Copy> {
    lines: Vec<Line<T>>,
    len: usize,
}

impl<T: Copy> AlignedVec<T> {
    /// An empty buffer; allocates nothing.
    pub const fn new() -> Self {
        AlignedVec { lines: Vec::new(), len: 0 }
    }

    /// `len` copies of `value`.
    pub fn from_elem(value: T, len: usize) -> Self {
        AlignedVec { lines: vec![Line([value; LINE]); len.div_ceil(LINE)], len }
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Self {
        let mut v = AlignedVec::new();
        if let Some(&first) = values.first() {
            v.resize(values.len(), first);
            v.as_mut_slice().copy_from_slice(values);
        }
        v
    }

    /// Number of values (not of lines).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Grows with copies of `value`, or shrinks, keeping the first values
    /// and the allocation.
    pub fn resize(&mut self, len: usize, value: T) {
        let old = self.len;
        self.lines.resize(len.div_ceil(LINE), Line([value; LINE]));
        self.len = len;
        if len > old {
            self.as_mut_slice()[old..].fill(value);
        }
    }

    /// Whether a line is its 16 values and nothing else: true when `T` is
    /// a multiple of 4 bytes (f32, f64), false for smaller types (a
    /// `Line<u8>` is 16 values and 48 bytes of padding).
    const PACKED: bool = std::mem::size_of::<Line<T>>() == LINE * std::mem::size_of::<T>();

    /// The `len()` values; the slice starts on a 64-byte boundary.
    pub fn as_slice(&self) -> &[T] {
        const { assert!(Self::PACKED, "AlignedVec needs a type whose size is a multiple of 4 bytes") };
        // SAFETY: Line<T> is repr(C) around [T; LINE] and has no padding
        // (PACKED, checked at compile time), so the lines are
        // lines.len()·LINE ≥ len contiguous, initialized Ts
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }

    /// The `len()` values, mutable; aligned as [`Self::as_slice`].
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        const { assert!(Self::PACKED, "AlignedVec needs a type whose size is a multiple of 4 bytes") };
        // SAFETY: as in as_slice; &mut self makes the slice the only
        // borrow of the lines
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Copy> Default for AlignedVec<T> {
    fn default() -> Self {
        AlignedVec::new()
    }
}

impl<T: Copy + fmt::Debug> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl<T: Copy + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_through_growth_and_keeps_values() {
        let mut v = AlignedVec::from_elem(1.5f64, 3);
        for len in [3, 17, 1000, 2, 40] {
            v.resize(len, -2.0);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_slice().as_ptr() as usize % 64, 0, "length {len}");
        }
        // 3 -> 17 -> 1000 -> 2 -> 40: the first two kept, the rest the last fill
        assert_eq!(&v.as_slice()[..3], &[1.5, 1.5, -2.0]);
        assert!(v.as_slice()[2..].iter().all(|&x| x == -2.0));
        assert_eq!(AlignedVec::from_slice(&[1u32, 2, 3]), AlignedVec::from_slice(&[1u32, 2, 3]));
        assert_ne!(AlignedVec::from_slice(&[1u32, 2]), AlignedVec::from_slice(&[1u32, 2, 3]));
        assert_eq!(AlignedVec::<f32>::from_slice(&[]).len(), 0);
        let w = AlignedVec::from_slice(&[1.0f32, 2.0, 3.0]);
        assert_eq!((w.as_slice(), w.as_slice().as_ptr() as usize % 64), (&[1.0, 2.0, 3.0][..], 0));
    }
}
