//! 2-D pooling over `k×k` windows with stride `s`, no padding, as
//! `nn.AvgPool2d(k, s)` and `nn.MaxPool2d(k, s)`. Planes (one image, one
//! channel) run in parallel.
//!
//! Average: `y = (1/k²) Σ_window x`;           backward `dx[window] += dy / k²`
//! Max:     `y = max_window x` (first maximum); backward `dx[argmax] += dy`
//!
//! Max pooling over 2x2 windows with stride 2 runs `kernels::pool`'s
//! vector kernels; in eval mode without the positions of the maxima, which
//! a backward after such a forward finds again from its input.

use rayon::prelude::*;

use super::{check_forward_ran, check_grad, not_built, Layer, Mode};
use crate::kernels::conv::ConvGeometry;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Shared shape bookkeeping of both poolings.
struct Window {
    kernel: usize,
    stride: usize,
    /// (C, H, W, Ho, Wo) once built.
    dims: Option<(usize, usize, usize, usize, usize)>,
}

impl Window {
    fn build(&mut self, layer: &str, input: &[usize]) -> Result<Vec<usize>> {
        if input.len() != 3 {
            return Err(Error::shape(
                layer,
                format!("expected input (N, C, H, W), got one example of shape {input:?}"),
            ));
        }
        let g = ConvGeometry {
            channels: input[0],
            height: input[1],
            width: input[2],
            kernel: self.kernel,
            stride: self.stride,
            padding: 0,
        };
        let (ho, wo) = g.output_hw().ok_or_else(|| {
            Error::shape(
                layer,
                format!("window {}x{} stride {} does not fit {:?}", self.kernel, self.kernel, self.stride, input),
            )
        })?;
        self.dims = Some((input[0], input[1], input[2], ho, wo));
        Ok(vec![input[0], ho, wo])
    }

    /// `(C, H, W, Ho, Wo)`; an error before build.
    fn dims(&self, layer: &str) -> Result<(usize, usize, usize, usize, usize)> {
        self.dims.ok_or_else(|| not_built(layer))
    }
}

/// Average pooling over `k×k` windows, as `nn.AvgPool2d(k, stride)`.
pub struct AvgPool2d<T: Real = f32> {
    window: Window,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> AvgPool2d<T> {
    /// Windows of `kernel × kernel` pixels, `stride` pixels apart, no padding.
    pub fn new(kernel: usize, stride: usize) -> Self {
        AvgPool2d { window: Window { kernel, stride, dims: None }, y: Tensor::default(), dx: Tensor::default() }
    }

    /// `(kernel, stride)`.
    pub fn window(&self) -> (usize, usize) {
        (self.window.kernel, self.window.stride)
    }
}

impl<T: Real> Layer<T> for AvgPool2d<T> {
    fn kind(&self) -> String {
        "AvgPool2d".into()
    }
    /// Planes in parallel, always.
    fn splits_work(&self, _input_len: usize) -> bool {
        true
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        self.window.build("AvgPool2d", input)
    }
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        let (c, h, w, ho, wo) = self.window.dims("AvgPool2d")?;
        let n = super::check_input("AvgPool2d", x, &[c, h, w])?;
        let (k, s) = (self.window.kernel, self.window.stride);
        let inv = T::from_f64(1.0 / (k * k) as f64);
        self.y.resize(&[n, c, ho, wo]);
        let halving = k == 2 && s == 2 && h % 2 == 0 && w % 2 == 0;
        self.y.data_mut().par_chunks_mut(ho * wo).zip(x.data().par_chunks(h * w)).for_each(|(out, plane)| {
            if halving {
                // LeNet's 2x2 stride 2: the vectorizable kernel, same summation order
                crate::kernels::avg_pool_2x2(plane, w, out);
                return;
            }
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = T::zero();
                    for i in 0..k {
                        let row = &plane[(oh * s + i) * w + ow * s..][..k];
                        acc += row.iter().copied().sum::<T>();
                    }
                    out[oh * wo + ow] = acc * inv;
                }
            }
        });
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let (c, h, w, ho, wo) = self.window.dims("AvgPool2d")?;
        let n = super::check_input("AvgPool2d", x, &[c, h, w])?;
        check_grad("AvgPool2d", dy, &[n, c, ho, wo])?;
        if !need_dx {
            return Ok(&self.dx);
        }
        let (k, s) = (self.window.kernel, self.window.stride);
        let inv = T::from_f64(1.0 / (k * k) as f64);
        self.dx.resize(x.shape());
        let halving = k == 2 && s == 2 && h % 2 == 0 && w % 2 == 0;
        self.dx.data_mut().par_chunks_mut(h * w).zip(dy.data().par_chunks(ho * wo)).for_each(|(dplane, dout)| {
            if halving {
                // windows tile the plane: every input gets exactly its window's share
                for (rows, g) in dplane.chunks_exact_mut(2 * w).zip(dout.chunks_exact(wo)) {
                    for row in rows.chunks_exact_mut(w) {
                        for (pair, &gv) in row.chunks_exact_mut(2).zip(g) {
                            pair[0] = gv * inv;
                            pair[1] = gv * inv;
                        }
                    }
                }
                return;
            }
            dplane.fill(T::zero());
            for oh in 0..ho {
                for ow in 0..wo {
                    let g = dout[oh * wo + ow] * inv;
                    for i in 0..k {
                        for d in &mut dplane[(oh * s + i) * w + ow * s..][..k] {
                            *d += g;
                        }
                    }
                }
            }
        });
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
}

/// Max pooling over `k×k` windows, as `nn.MaxPool2d(k, stride)`.
pub struct MaxPool2d<T: Real = f32> {
    window: Window,
    /// Index within its plane of each output's maximum.
    argmax: Vec<u32>,
    /// Whether `argmax` is that of the last forward pass: an eval-mode
    /// forward over 2x2 windows computes the values alone (the positions
    /// are for backward only), and a backward after it finds them again
    /// from its input.
    argmax_current: bool,
    /// The shape of the last forward's input (`[0]` before any).
    forward_input: Vec<usize>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> MaxPool2d<T> {
    /// Windows of `kernel × kernel` pixels, `stride` pixels apart, no padding.
    pub fn new(kernel: usize, stride: usize) -> Self {
        MaxPool2d {
            window: Window { kernel, stride, dims: None },
            argmax: Vec::new(),
            argmax_current: false,
            forward_input: vec![0],
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }

    /// `(kernel, stride)`.
    pub fn window(&self) -> (usize, usize) {
        (self.window.kernel, self.window.stride)
    }
}

impl<T: Real> Layer<T> for MaxPool2d<T> {
    fn kind(&self) -> String {
        "MaxPool2d".into()
    }
    /// Planes in parallel, always.
    fn splits_work(&self, _input_len: usize) -> bool {
        true
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        self.window.build("MaxPool2d", input)
    }
    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        let (c, h, w, ho, wo) = self.window.dims("MaxPool2d")?;
        let n = super::check_input("MaxPool2d", x, &[c, h, w])?;
        let (k, s) = (self.window.kernel, self.window.stride);
        self.y.resize(&[n, c, ho, wo]);
        self.forward_input = x.shape().to_vec();
        if k == 2 && s == 2 && mode == Mode::Eval {
            // prediction: the maxima without their positions
            self.argmax_current = false;
            self.y.data_mut().par_chunks_mut(ho * wo).zip(x.data().par_chunks(h * w)).for_each(|(out, plane)| {
                crate::kernels::pool::max_pool_2x2_values(plane, (h, w), out);
            });
            return Ok(&self.y);
        }
        self.argmax_current = true;
        self.argmax.resize(n * c * ho * wo, 0);
        self.y
            .data_mut()
            .par_chunks_mut(ho * wo)
            .zip(self.argmax.par_chunks_mut(ho * wo))
            .zip(x.data().par_chunks(h * w))
            .for_each(|((out, arg), plane)| {
                if k == 2 && s == 2 {
                    // the common 2x2 stride 2: the same scan, vectorized
                    crate::kernels::max_pool_2x2(plane, (h, w), out, arg);
                    return;
                }
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut best = (oh * s) * w + ow * s;
                        for i in 0..k {
                            for j in 0..k {
                                let idx = (oh * s + i) * w + ow * s + j;
                                // NaN wins, as in PyTorch, so it is not hidden
                                if plane[idx] > plane[best] || plane[idx].is_nan() && !plane[best].is_nan() {
                                    best = idx;
                                }
                            }
                        }
                        out[oh * wo + ow] = plane[best];
                        arg[oh * wo + ow] = best as u32;
                    }
                }
            });
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let (c, h, w, ho, wo) = self.window.dims("MaxPool2d")?;
        let n = super::check_input("MaxPool2d", x, &[c, h, w])?;
        // the positions of the maxima come from the forward pass
        check_forward_ran("MaxPool2d", &self.forward_input, x.shape())?;
        check_grad("MaxPool2d", dy, &[n, c, ho, wo])?;
        if !need_dx {
            return Ok(&self.dx);
        }
        if !self.argmax_current {
            // an eval-mode forward left no positions: those of x, whose
            // maxima that forward returned (the values go to scratch, so
            // the forward's output stays as it was)
            let mut values = vec![T::zero(); n * c * ho * wo];
            self.argmax.resize(values.len(), 0);
            values
                .par_chunks_mut(ho * wo)
                .zip(self.argmax.par_chunks_mut(ho * wo))
                .zip(x.data().par_chunks(h * w))
                .for_each(|((out, arg), plane)| crate::kernels::max_pool_2x2(plane, (h, w), out, arg));
            self.argmax_current = true;
        }
        let (k, s) = (self.window.kernel, self.window.stride);
        self.dx.resize(x.shape());
        self.dx
            .data_mut()
            .par_chunks_mut(h * w)
            .zip(dy.data().par_chunks(ho * wo).zip(self.argmax.par_chunks(ho * wo)))
            .for_each(|(dplane, (dout, arg))| {
                if k == 2 && s == 2 {
                    // windows that tile the plane: one pass, same values
                    crate::kernels::pool::max_pool_2x2_backward(dout, arg, (h, w), dplane);
                    return;
                }
                dplane.fill(T::zero());
                for (&g, &a) in dout.iter().zip(arg) {
                    dplane[a as usize] += g;
                }
            });
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eval mode pools without the positions of the maxima: the same
    /// values as training mode, and a backward after it (which finds the
    /// positions again) gives bitwise the gradient a backward after a
    /// training-mode forward gives; so does a backward after an eval pass
    /// over other values than the last training pass.
    #[test]
    fn backward_after_eval_forward_is_that_after_training_forward() {
        for (h, w) in [(6, 6), (5, 9), (2, 2)] {
            let shape = [2, 3, h, w];
            let n: usize = shape.iter().product();
            let plane = |seed: usize| -> Tensor<f32> {
                let v = (0..n).map(|i| if i % 13 == seed { f32::NAN } else { ((i * 7 + seed) % 4) as f32 - 1.5 });
                Tensor::from_vec(&shape, v.collect()).unwrap()
            };
            let (x, other) = (plane(3), plane(6));
            let pooled = 2 * 3 * (h / 2) * (w / 2);
            let dy = Tensor::from_vec(&[2, 3, h / 2, w / 2], (0..pooled).map(|i| i as f32 + 0.5).collect()).unwrap();
            let build = || {
                let mut pool = MaxPool2d::<f32>::new(2, 2);
                pool.build(&shape[1..], &mut crate::rng::seeded(0)).unwrap();
                pool
            };
            let mut trained = build();
            let y_train = trained.forward(&x, Mode::Train).unwrap().clone();
            let dx_train = trained.backward(&x, &dy, true).unwrap().clone();
            let mut evaluated = build();
            evaluated.forward(&other, Mode::Train).unwrap();
            let y_eval = evaluated.forward(&x, Mode::Eval).unwrap().clone();
            let dx_eval = evaluated.backward(&x, &dy, true).unwrap().clone();
            let bits = |t: &Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y_eval), bits(&y_train), "({h},{w}) values");
            assert_eq!(bits(&dx_eval), bits(&dx_train), "({h},{w}) gradient");
            assert_eq!(bits(evaluated.output()), bits(&y_train), "({h},{w}) backward left the output alone");
            assert!(dx_train.data().iter().any(|&g| g != 0.0), "({h},{w}) a gradient reached the input");
        }
    }

    /// The 2x2 stride-2 kernel picks the value and position the general
    /// scan picks (first maximum in row order, a NaN winning), on planes
    /// full of ties and NaNs, of even and odd sizes.
    #[test]
    fn max_pool_2x2_is_the_general_scan() {
        for (h, w) in [(4, 4), (5, 7), (28, 28), (2, 3)] {
            let n = 3 * h * w;
            // few distinct values: many ties; a NaN every 11 values
            let x: Vec<f32> = (0..n).map(|i| if i % 11 == 5 { f32::NAN } else { ((i * 7) % 5) as f32 }).collect();
            let x = Tensor::from_vec(&[1, 3, h, w], x).unwrap();
            let mut pool = MaxPool2d::<f32>::new(2, 2);
            pool.build(&[3, h, w], &mut crate::rng::seeded(0)).unwrap();
            let y = pool.forward(&x, Mode::Train).unwrap().data().to_vec();
            let (ho, wo) = (h / 2, w / 2);
            for p in 0..3 {
                let plane = &x.data()[p * h * w..][..h * w];
                for o in 0..ho * wo {
                    let (oh, ow) = (o / wo, o % wo);
                    let mut best = 2 * oh * w + 2 * ow;
                    for idx in [best, best + 1, best + w, best + w + 1] {
                        if plane[idx] > plane[best] || plane[idx].is_nan() && !plane[best].is_nan() {
                            best = idx;
                        }
                    }
                    let (got, want) = (y[p * ho * wo + o], plane[best]);
                    assert!(got.to_bits() == want.to_bits(), "({h},{w}) plane {p} output {o}: {got} vs {want}");
                    assert_eq!(pool.argmax[p * ho * wo + o] as usize, best, "({h},{w}) plane {p} output {o}");
                }
            }
        }
    }
}
