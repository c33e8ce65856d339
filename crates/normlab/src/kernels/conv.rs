//! im2col / col2im for 2-D convolution on one image, so a convolution is one
//! matrix product: `out[Cout × P] = W[Cout × K] · col[K × P]` with
//! `K = Cin·kh·kw` rows (one per weight) and `P = Ho·Wo` columns (one per
//! output pixel).

use crate::real::Real;

/// The geometry of a 2-D convolution or pooling window on one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    /// Output height and width, or `None` when the window does not fit.
    pub fn output_hw(&self) -> Option<(usize, usize)> {
        let h = self.height + 2 * self.padding;
        let w = self.width + 2 * self.padding;
        if self.kernel == 0 || self.stride == 0 || h < self.kernel || w < self.kernel {
            return None;
        }
        Some(((h - self.kernel) / self.stride + 1, (w - self.kernel) / self.stride + 1))
    }
    /// Rows of the column matrix: `Cin·k·k`.
    pub fn col_rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
}

/// `x` (`channels` planes of `h×w`, `(channels, h, w)`) into `xp` with
/// `pad` zeros around each plane (`(h + 2·pad)·(w + 2·pad)` apart), and
/// zeros in the rest of `xp` (slack for kernels that read past the planes).
pub fn pad_planes(x: &[f32], (channels, h, w): (usize, usize, usize), pad: usize, xp: &mut [f32]) {
    let wp = w + 2 * pad;
    let plane = (h + 2 * pad) * wp;
    assert!(x.len() == channels * h * w && xp.len() >= channels * plane, "pad_planes: sizes");
    xp.fill(0.0);
    for (src, dst) in x.chunks_exact(h * w).zip(xp.chunks_exact_mut(plane)) {
        for (r, row) in src.chunks_exact(w).enumerate() {
            let at = (r + pad) * wp + pad;
            // rows of 4 to 32 values: copy_from_slice would call memcpy for each
            super::copy_row(&mut dst[at..at + w], row);
        }
    }
}

/// The weights of the input gradient's convolution: `w'[ci][co][i][j] =
/// w[co][ci][k-1-i][k-1-j]` for `w` of `cout·cin·k·k` (the gradient of a
/// stride-1 convolution is a convolution of the padded output gradient
/// with the kernel flipped and the channels swapped).
pub fn flip_kernel(w: &[f32], cout: usize, cin: usize, k: usize) -> Vec<f32> {
    let kk = k * k;
    assert_eq!(w.len(), cout * cin * kk, "flip_kernel: weight size");
    let mut flipped = vec![0.0f32; w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for t in 0..kk {
                let (i, j) = (t / k, t % k);
                flipped[(ci * cout + co) * kk + (k - 1 - i) * k + (k - 1 - j)] = w[(co * cin + ci) * kk + t];
            }
        }
    }
    flipped
}

/// What the direct kernels are tested against: im2col + matrix product
/// (+ col2im), on values that cover `[-1, 1]`.
#[cfg(test)]
pub(crate) mod reference {
    use super::{col2im, im2col, ConvGeometry};
    use crate::kernels::gemm::{gemm, Product};

    /// `len` values in `[-1, 1]`, a different run for each `seed`.
    pub fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0) - 1.0).collect()
    }

    /// Asserts `got` equals `want` to 1e-4 relative (the sums run in another order).
    pub fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: value {i}: {a} vs {b}");
        }
    }

    /// The forward pass of one image: `bias + W · col(x)`.
    pub fn forward(g: &ConvGeometry, cout: usize, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let (ho, wo) = g.output_hw().unwrap();
        let mut col = vec![0.0f32; g.col_rows() * ho * wo];
        im2col(g, x, &mut col);
        let mut y: Vec<f32> = bias.iter().flat_map(|&b| std::iter::repeat_n(b, ho * wo)).collect();
        gemm(Product::nn(cout, ho * wo, g.col_rows()), 1.0, w, &col, 1.0, &mut y);
        y
    }

    /// The input gradient of one image: `col2im(Wᵀ · dy)`.
    pub fn input_grad(g: &ConvGeometry, cout: usize, w: &[f32], dy: &[f32]) -> Vec<f32> {
        let (ho, wo) = g.output_hw().unwrap();
        let mut dcol = vec![0.0f32; g.col_rows() * ho * wo];
        gemm(Product::tn(g.col_rows(), ho * wo, cout), 1.0, w, dy, 0.0, &mut dcol);
        let mut dx = vec![0.0f32; g.channels * g.height * g.width];
        col2im(g, &dcol, &mut dx);
        dx
    }
}

multiversion! {
    /// `col[(c·k + i)·k + j, oh·Wo + ow] = x[c, oh·s - p + i, ow·s - p + j]` (0 outside).
    pub fn im2col<T: Real>(g: &ConvGeometry, image: &[T], col: &mut [T]) {
        let (ho, wo) = g.output_hw().expect("im2col: window larger than the padded image");
        if g.stride == 1 && g.padding == 0 {
            // LeNet's case: every column row is `ho` contiguous copies of `wo` values
            let (h, w, k) = (g.height, g.width, g.kernel);
            let rows = col[..g.col_rows() * ho * wo].chunks_exact_mut(ho * wo);
            for ((c, i, j), dst) in kernel_taps(g.channels, k).zip(rows) {
                for (oh, out_row) in dst.chunks_exact_mut(wo).enumerate() {
                    let start = (c * h + oh + i) * w + j;
                    super::copy_row(out_row, &image[start..start + wo]);
                }
            }
            return;
        }
        if g.kernel == 1 && g.stride == 2 && g.padding == 0 {
            // ResNet's strided 1x1 shortcut: every other value of every other
            // row, with a constant stride the loop vectorizes (the general
            // path below copied them one by one)
            let plane = g.height * g.width;
            for (src, dst) in image.chunks_exact(plane).zip(col.chunks_exact_mut(ho * wo)) {
                for (oh, out_row) in dst.chunks_exact_mut(wo).enumerate() {
                    let src_row = &src[2 * oh * g.width..][..2 * (wo - 1) + 1];
                    for (ow, v) in out_row.iter_mut().enumerate() {
                        *v = src_row[2 * ow];
                    }
                }
            }
            return;
        }
        let (k, s, p) = (g.kernel, g.stride, g.padding as isize);
        let plane = g.height * g.width;
        let mut row = 0;
        for c in 0..g.channels {
            let src = &image[c * plane..(c + 1) * plane];
            for i in 0..k {
                for j in 0..k {
                    let dst = &mut col[row * ho * wo..(row + 1) * ho * wo];
                    for oh in 0..ho {
                        let ih = (oh * s) as isize - p + i as isize;
                        let out_row = &mut dst[oh * wo..(oh + 1) * wo];
                        if ih < 0 || ih >= g.height as isize {
                            out_row.fill(T::zero());
                            continue;
                        }
                        let src_row = &src[ih as usize * g.width..(ih as usize + 1) * g.width];
                        // the columns whose input column ow·s - p + j lies in
                        // the row, lo..hi, found once per row instead of a
                        // test per value (ResNet's stride-2 layers: im2col
                        // took longer than their products)
                        let j = j as isize;
                        let lo = if j >= p { 0 } else { ((p - j) as usize).div_ceil(s) };
                        let past = g.width as isize + p - j;
                        let hi = if past <= 0 { 0 } else { (past as usize).div_ceil(s).min(wo) };
                        let lo = lo.min(hi);
                        out_row[..lo].fill(T::zero());
                        out_row[hi..].fill(T::zero());
                        if lo < hi {
                            let first = ((lo * s) as isize - p + j) as usize;
                            for (v, &x) in out_row[lo..hi].iter_mut().zip(src_row[first..].iter().step_by(s)) {
                                *v = x;
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

/// `(channel, kernel row, kernel column)` in the order of the column rows.
fn kernel_taps(channels: usize, k: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..channels).flat_map(move |c| (0..k).flat_map(move |i| (0..k).map(move |j| (c, i, j))))
}

multiversion! {
    /// The adjoint of [`im2col`]: adds each column entry back to the pixel it
    /// was read from. `image` is overwritten.
    pub fn col2im<T: Real>(g: &ConvGeometry, col: &[T], image: &mut [T]) {
        let (ho, wo) = g.output_hw().expect("col2im: window larger than the padded image");
        image.fill(T::zero());
        if g.stride == 1 && g.padding == 0 {
            // Kernel column j outermost: consecutive adds then hit the same pixels
            // as an add a few steps before (kernel row i+1 meets the output row
            // oh+1 of row i), so the CPU can forward the stored sums instead of
            // waiting on partly overlapping stores: 0.82 instead of 1.32 µs per
            // image of LeNet's conv2, one thread.
            let (h, w, k) = (g.height, g.width, g.kernel);
            for c in 0..g.channels {
                for j in 0..k {
                    for i in 0..k {
                        let src = &col[((c * k + i) * k + j) * ho * wo..][..ho * wo];
                        for (oh, src_row) in src.chunks_exact(wo).enumerate() {
                            let start = (c * h + oh + i) * w + j;
                            super::add_row(&mut image[start..start + wo], src_row);
                        }
                    }
                }
            }
            return;
        }
        let (k, s, p) = (g.kernel, g.stride, g.padding as isize);
        let plane = g.height * g.width;
        let mut row = 0;
        for c in 0..g.channels {
            let dst = &mut image[c * plane..(c + 1) * plane];
            for i in 0..k {
                for j in 0..k {
                    let src = &col[row * ho * wo..(row + 1) * ho * wo];
                    for oh in 0..ho {
                        let ih = (oh * s) as isize - p + i as isize;
                        if ih < 0 || ih >= g.height as isize {
                            continue;
                        }
                        let dst_row = &mut dst[ih as usize * g.width..(ih as usize + 1) * g.width];
                        let src_row = &src[oh * wo..(oh + 1) * wo];
                        for (ow, &v) in src_row.iter().enumerate() {
                            let iw = (ow * s) as isize - p + j as isize;
                            if iw >= 0 && iw < g.width as isize {
                                dst_row[iw as usize] += v;
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// <im2col(x), c> == <x, col2im(c)> for random x, c: col2im is the adjoint.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for (stride, padding) in [(1, 0), (2, 1), (3, 2), (1, 1)] {
            let g = ConvGeometry { channels: 2, height: 7, width: 6, kernel: 3, stride, padding };
            let (ho, wo) = g.output_hw().unwrap();
            let x: Vec<f64> = (0..2 * 7 * 6).map(|i| ((i * 31 % 23) as f64) - 11.0).collect();
            let c: Vec<f64> = (0..g.col_rows() * ho * wo).map(|i| ((i * 17 % 19) as f64) - 9.0).collect();
            let mut col = vec![0.0; c.len()];
            im2col(&g, &x, &mut col);
            let mut back = vec![0.0; x.len()];
            col2im(&g, &c, &mut back);
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "stride {stride} padding {padding}");
        }
    }

    /// The unit-stride fast path against the definition written out.
    #[test]
    fn unit_stride_im2col_is_the_definition() {
        let g = ConvGeometry { channels: 3, height: 9, width: 11, kernel: 3, stride: 1, padding: 0 };
        let (ho, wo) = g.output_hw().unwrap();
        let x: Vec<f64> = (0..3 * 9 * 11).map(|i| i as f64).collect();
        let mut col = vec![f64::NAN; g.col_rows() * ho * wo];
        im2col(&g, &x, &mut col);
        for c in 0..3 {
            for i in 0..3 {
                for j in 0..3 {
                    for oh in 0..ho {
                        for ow in 0..wo {
                            let got = col[((c * 3 + i) * 3 + j) * ho * wo + oh * wo + ow];
                            assert_eq!(got, x[(c * 9 + oh + i) * 11 + ow + j]);
                        }
                    }
                }
            }
        }
    }

    /// The strided and padded path (its in-row ranges found once per row)
    /// against the definition, with windows that overhang both edges.
    #[test]
    fn strided_padded_im2col_is_the_definition() {
        for (h, w, k, stride, padding) in
            [(8, 8, 3, 2, 1), (7, 6, 1, 2, 0), (8, 9, 1, 2, 0), (9, 5, 5, 3, 2), (4, 4, 3, 1, 2)]
        {
            let g = ConvGeometry { channels: 2, height: h, width: w, kernel: k, stride, padding };
            let (ho, wo) = g.output_hw().unwrap();
            let x: Vec<f64> = (0..2 * h * w).map(|i| 1.0 + i as f64).collect();
            let mut col = vec![f64::NAN; g.col_rows() * ho * wo];
            im2col(&g, &x, &mut col);
            for c in 0..2 {
                for i in 0..k {
                    for j in 0..k {
                        for oh in 0..ho {
                            for ow in 0..wo {
                                let (ih, iw) = (
                                    (oh * stride + i) as isize - padding as isize,
                                    (ow * stride + j) as isize - padding as isize,
                                );
                                let inside = (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw);
                                let want = if inside { x[(c * h + ih as usize) * w + iw as usize] } else { 0.0 };
                                let got = col[((c * k + i) * k + j) * ho * wo + oh * wo + ow];
                                assert_eq!(got, want, "{h}x{w} k{k} s{stride} p{padding} at {c},{i},{j},{oh},{ow}");
                            }
                        }
                    }
                }
            }
        }
    }
}
