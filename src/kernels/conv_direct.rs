//! Direct 2-D convolution for stride 1 without padding (LeNet's case),
//! register-blocked so the compiler keeps a tile of outputs in vector
//! registers. The im2col + matrix-product path in `conv.rs` is the general
//! one and the reference these are tested against.
//!
//! Forward:  `y[co][oh][ow] = Σ_{ci,i,j} w[co][ci][i][j] · x[ci][oh+i][ow+j]`
//! Weight gradient: `dw[co][ci][i][j] += Σ_{oh,ow} dy[co][oh][ow] · x[ci][oh+i][ow+j]`
//!
//! Why not im2col for these shapes: with 6 or 16 output channels and 5x5
//! kernels the matrices are so thin that packing them costs as much as
//! multiplying them.

use super::conv::ConvGeometry;
use crate::real::{mul_add, Real};

/// Output channels computed together (weights padded with zeros to a multiple).
pub const CB: usize = 8;

/// Whether the direct kernels handle this convolution, and are the faster
/// choice: stride 1, no padding, and a short reduction (`Cin·k·k` ≤ 64, e.g.
/// LeNet's first layer). With a longer one (LeNet's second layer, 150) the
/// packed matrix product wins, measured by `examples/conv_kernels.rs`.
pub fn supported(g: &ConvGeometry) -> bool {
    g.stride == 1 && g.padding == 0 && matches!(g.kernel, 3 | 5) && g.col_rows() <= 64 && g.output_hw().is_some()
}

/// Reorders `w[co][ci][i][j]` into blocks of [`CB`] output channels,
/// `packed[block][ci][i][j][c]`, zero-padded.
pub fn pack_weights<T: Real>(w: &[T], cout: usize, cin: usize, k: usize, packed: &mut Vec<T>) {
    let blocks = cout.div_ceil(CB);
    packed.clear();
    packed.resize(blocks * cin * k * k * CB, T::zero());
    for co in 0..cout {
        let (b, c) = (co / CB, co % CB);
        for ci in 0..cin {
            for t in 0..k * k {
                packed[((b * cin + ci) * k * k + t) * CB + c] = w[(co * cin + ci) * k * k + t];
            }
        }
    }
}

/// One image: `y` is overwritten with `bias + conv(x, w)`.
pub fn forward<T: Real>(g: &ConvGeometry, cout: usize, packed: &[T], bias: Option<&[T]>, x: &[T], y: &mut [T]) {
    match g.kernel {
        5 => forward_k::<T, 5>(g, cout, packed, bias, x, y),
        3 => forward_k::<T, 3>(g, cout, packed, bias, x, y),
        k => panic!("direct convolution supports kernels 3 and 5, got {k}"),
    }
}

fn forward_k<T: Real, const K: usize>(
    g: &ConvGeometry,
    cout: usize,
    packed: &[T],
    bias: Option<&[T]>,
    x: &[T],
    y: &mut [T],
) {
    let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
    let (cin, h, w) = (g.channels, g.height, g.width);
    let block_len = cin * K * K * CB;
    for (b, wb) in packed.chunks_exact(block_len).enumerate() {
        let co0 = b * CB;
        let valid = CB.min(cout - co0);
        for oh in 0..ho {
            let mut ow = 0;
            while ow < wo {
                let left = wo - ow;
                // tiles of 8 output columns (one AVX vector), then 4, then scalar
                let store = |ow: usize, c: usize, t: usize, v: T, y: &mut [T]| {
                    y[((co0 + c) * ho + oh) * wo + ow + t] = v + bias.map_or(T::zero(), |b| b[co0 + c]);
                };
                if left >= 8 {
                    let acc = tile::<T, K, 8>(x, wb, (cin, h, w), oh, ow);
                    for (c, row) in acc.iter().enumerate().take(valid) {
                        row.iter().enumerate().for_each(|(t, &v)| store(ow, c, t, v, y));
                    }
                    ow += 8;
                } else if left >= 4 {
                    let acc = tile::<T, K, 4>(x, wb, (cin, h, w), oh, ow);
                    for (c, row) in acc.iter().enumerate().take(valid) {
                        row.iter().enumerate().for_each(|(t, &v)| store(ow, c, t, v, y));
                    }
                    ow += 4;
                } else {
                    for c in 0..valid {
                        for t in ow..wo {
                            let mut acc = bias.map_or(T::zero(), |b| b[co0 + c]);
                            for ci in 0..cin {
                                for i in 0..K {
                                    for j in 0..K {
                                        acc += wb[((ci * K + i) * K + j) * CB + c] * x[(ci * h + oh + i) * w + t + j];
                                    }
                                }
                            }
                            y[((co0 + c) * ho + oh) * wo + t] = acc;
                        }
                    }
                    ow = wo;
                }
            }
        }
    }
}

/// `TW` outputs of one row for [`CB`] channels, accumulated in registers.
#[inline(always)]
fn tile<T: Real, const K: usize, const TW: usize>(
    x: &[T],
    wb: &[T],
    (cin, h, w): (usize, usize, usize),
    oh: usize,
    ow: usize,
) -> [[T; TW]; CB] {
    // flat, fixed-size accumulators: the compiler unrolls and keeps them in registers
    let mut acc = [[T::zero(); TW]; CB];
    for ci in 0..cin {
        for i in 0..K {
            let row = &x[(ci * h + oh + i) * w + ow..];
            for j in 0..K {
                let xs: [T; TW] = row[j..j + TW].try_into().expect("row holds the tile");
                let ws: [T; CB] = wb[((ci * K + i) * K + j) * CB..][..CB].try_into().expect("packed block");
                acc = fma_tile(acc, ws, xs);
            }
        }
    }
    acc
}

/// `acc[c][t] + w[c]·x[t]` for the whole tile, by value so it stays in registers.
#[inline(always)]
fn fma_tile<T: Real, const R: usize, const TW: usize>(mut acc: [[T; TW]; R], w: [T; R], x: [T; TW]) -> [[T; TW]; R] {
    for c in 0..R {
        let wc = w[c];
        let a = &mut acc[c];
        for t in 0..TW {
            a[t] = mul_add(wc, x[t], a[t]);
        }
    }
    acc
}

/// Consecutive images `x` (and their `dy`):
/// `dw[co][ci][i][j] += Σ_images Σ dy[co][oh][ow] · x[ci][oh+i][ow+j]`.
/// Partial sums stay in vector lanes across all the images and are reduced
/// once at the end, so pass a group of images rather than one.
pub fn weight_grad<T: Real>(g: &ConvGeometry, cout: usize, x: &[T], dy: &[T], dw: &mut [T]) {
    match g.kernel {
        5 => weight_grad_k::<T, 5>(g, cout, x, dy, dw),
        3 => weight_grad_k::<T, 3>(g, cout, x, dy, dw),
        k => panic!("direct convolution supports kernels 3 and 5, got {k}"),
    }
}

/// Output channels per weight-gradient tile: `K·DB` vector accumulators.
const DB: usize = 3;

fn weight_grad_k<T: Real, const K: usize>(g: &ConvGeometry, cout: usize, x: &[T], dy: &[T], dw: &mut [T]) {
    let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
    let (cin, h, w) = (g.channels, g.height, g.width);
    let (x_len, dy_len) = (cin * h * w, cout * ho * wo);
    let images = x.len() / x_len;
    assert_eq!(dy.len(), images * dy_len, "one dy per image");
    for co0 in (0..cout).step_by(DB) {
        let nb = DB.min(cout - co0);
        for ci in 0..cin {
            for i in 0..K {
                // acc[c][j]: Σ over the images of dy[co0+c] · x[ci] shifted by (i, j)
                let mut acc = [[T::zero(); K]; DB];
                let full = wo - wo % 8;
                for ow in (0..full).step_by(8) {
                    let lanes =
                        wg_tile::<T, K, 8>(x, dy, (ci, i, co0, nb), (x_len, dy_len, images), (h, w, ho, wo), ow);
                    for c in 0..nb {
                        for j in 0..K {
                            acc[c][j] += lanes[c][j].iter().copied().sum::<T>();
                        }
                    }
                }
                for img in 0..images {
                    let (xi, di) = (&x[img * x_len..], &dy[img * dy_len..]);
                    for c in 0..nb {
                        for j in 0..K {
                            for oh in 0..ho {
                                for t in full..wo {
                                    acc[c][j] += di[((co0 + c) * ho + oh) * wo + t] * xi[(ci * h + oh + i) * w + t + j];
                                }
                            }
                        }
                    }
                }
                for c in 0..nb {
                    for j in 0..K {
                        dw[(((co0 + c) * cin + ci) * K + i) * K + j] += acc[c][j];
                    }
                }
            }
        }
    }
}

/// Columns `ow..ow+TW` of every output row of every image, as `DB·K`
/// vectors of partial sums kept in registers.
#[inline(always)]
fn wg_tile<T: Real, const K: usize, const TW: usize>(
    x: &[T],
    dy: &[T],
    (ci, i, co0, nb): (usize, usize, usize, usize),
    (x_len, dy_len, images): (usize, usize, usize),
    (h, w, ho, wo): (usize, usize, usize, usize),
    ow: usize,
) -> [[[T; TW]; K]; DB] {
    let mut lanes = [[[T::zero(); TW]; K]; DB];
    for img in 0..images {
        let (xi, di) = (&x[img * x_len..(img + 1) * x_len], &dy[img * dy_len..(img + 1) * dy_len]);
        for oh in 0..ho {
            let row = &xi[(ci * h + oh + i) * w + ow..];
            let mut xs = [[T::zero(); TW]; K];
            for j in 0..K {
                xs[j] = row[j..j + TW].try_into().expect("row holds the tile");
            }
            for c in 0..DB {
                // channels past the last one read a valid row and are discarded
                let cc = (co0 + c).min(co0 + nb - 1);
                let d: [T; TW] = di[(cc * ho + oh) * wo + ow..][..TW].try_into().expect("dy row");
                for j in 0..K {
                    for t in 0..TW {
                        lanes[c][j][t] = mul_add(d[t], xs[j][t], lanes[c][j][t]);
                    }
                }
            }
        }
    }
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::im2col;
    use crate::kernels::gemm::{gemm_reference, Op};

    fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f64 - 1001.0) / 500.0).collect()
    }

    /// Direct forward and weight gradient equal im2col + plain matrix products.
    #[test]
    fn matches_im2col_reference() {
        for (cin, cout, h, w, k) in
            [(1, 6, 28, 28, 5), (6, 16, 12, 12, 5), (2, 3, 9, 13, 3), (3, 9, 7, 30, 3), (2, 5, 6, 6, 5)]
        {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: k, stride: 1, padding: 0 };
            let (ho, wo) = g.output_hw().unwrap();
            let (kd, p) = (g.col_rows(), ho * wo);
            let x = values(cin * h * w, 1);
            let wt = values(cout * kd, 2);
            let bias = values(cout, 3);
            let dy = values(cout * p, 4);
            let mut col = vec![0.0; kd * p];
            im2col(&g, &x, &mut col);
            let mut want = vec![0.0; cout * p];
            gemm_reference(Op::N, Op::N, cout, p, kd, 1.0, &wt, &col, 0.0, &mut want);
            for co in 0..cout {
                want[co * p..(co + 1) * p].iter_mut().for_each(|v| *v += bias[co]);
            }
            let mut packed = Vec::new();
            pack_weights(&wt, cout, cin, k, &mut packed);
            let mut got = vec![f64::NAN; cout * p];
            forward(&g, cout, &packed, Some(&bias), &x, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-9, "forward {cin}->{cout} {h}x{w} k{k}: {a} vs {b}");
            }
            let mut want_dw = vec![0.0; cout * kd];
            gemm_reference(Op::N, Op::T, cout, kd, p, 1.0, &dy, &col, 0.0, &mut want_dw);
            let mut got_dw = vec![0.0; cout * kd];
            weight_grad(&g, cout, &x, &dy, &mut got_dw);
            for (a, b) in got_dw.iter().zip(&want_dw) {
                assert!((a - b).abs() < 1e-9, "weight grad {cin}->{cout} {h}x{w} k{k}: {a} vs {b}");
            }
            // two images at once: the sum of both
            let mut two = vec![0.0; cout * kd];
            weight_grad(&g, cout, &x.repeat(2), &dy.repeat(2), &mut two);
            for (a, b) in two.iter().zip(&want_dw) {
                assert!((a - 2.0 * b).abs() < 1e-9, "weight grad of two images: {a} vs {}", 2.0 * b);
            }
        }
    }
}
