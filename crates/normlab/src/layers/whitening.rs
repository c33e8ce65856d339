//! Decorrelated batch normalization by iterative whitening: IterNorm (Huang,
//! Zhou, Zhu, Liu and Shao, CVPR 2019), with the channels split into blocks
//! of `group_size` (block-diagonal whitening). Blocks of 1 are batch norm;
//! one block of all channels is full whitening.
//!
//! For an input `(N, C, *)` and one block of g channels, the block's values
//! form a g × m matrix X (m = N · spatial size; spatial positions count as
//! examples, as in BN). Training, in f64:
//!
//! ```text
//! mu    = X 1 / m                 Xc = X - mu 1ᵀ
//! Sigma = Xc Xcᵀ / m + eps I      tr = trace(Sigma)      S = Sigma / tr
//! P_0 = I,  P_k = (3 P_{k-1} - P_{k-1}³ S) / 2,  k = 1..T      (Newton-Schulz, T = 5)
//! W     = P_T / sqrt(tr)          (≈ Sigma^(-1/2))
//! x_hat = W Xc                    y = gamma_c · x_hat + beta_c
//! ```
//!
//! Backward (reverse mode through the T iterations, exact for the T-step
//! computation), with G = dLoss/dx_hat (= gamma · dy) as a g × m matrix:
//!
//! ```text
//! dW   = G Xcᵀ          dXc = Wᵀ G          dP_T = dW / sqrt(tr)
//! dtr  = -<dW, P_T> / (2 tr^(3/2))
//! for k = T..1, with A = P_{k-1}, D = dP_k, F = A³ S, dF = -D/2:
//!     dA  = 3D/2 + dF Sᵀ Aᵀ Aᵀ + Aᵀ dF Sᵀ Aᵀ + Aᵀ Aᵀ dF Sᵀ      (= dP_{k-1})
//!     dS += (A³)ᵀ dF
//! dSigma = dS / tr + (dtr - <dS, Sigma> / tr²) I
//! dXc   += (dSigma + dSigmaᵀ) Xc / m
//! dX     = dXc - (dXc 1 / m) 1ᵀ                                  (the centring)
//! dgamma_c = Σ dy · x_hat        dbeta_c = Σ dy
//! ```
//!
//! Why IterNorm rather than ZCA by eigendecomposition (Huang et al. 2018):
//! the backward pass of an eigendecomposition has terms 1/(λ_i - λ_j), which
//! blow up when two eigenvalues of the covariance are close, and a batch
//! smaller than the block (m ≤ g, e.g. 8 examples and 120 features) makes
//! many eigenvalues equal (all eps). Newton-Schulz needs only matrix
//! products, its backward is the chain rule through them (no division by
//! eigenvalue gaps), and T iterations whiten only approximately, which
//! Huang et al. found to regularize. The trace normalization makes the
//! iteration converge (the eigenvalues of S lie in (0, 1]).
//!
//! Evaluation: `x_hat = W_run (x - mu_run)` with running averages of mu and
//! W (PyTorch's convention, momentum m: `run = (1 - m) run + m batch`);
//! backward `dx = W_runᵀ (gamma · dy)`. Blocks: channels `[k·g, (k+1)·g)`;
//! when g does not divide C the last block is smaller (C mod g channels).

use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Newton-Schulz iterations (IterNorm's T = 5).
pub const ITERATIONS: usize = 5;

/// Block-diagonal IterNorm whitening of the channels (formulas in the module docs).
pub struct Whitening<T: Real = f32> {
    group_size: usize,
    iterations: usize,
    eps: f64,
    momentum: f64,
    affine: ChannelAffine<T>,
    example: Vec<usize>,
    channels: usize,
    spatial: usize,
    /// The first channel of each block and its size.
    blocks: Vec<(usize, usize)>,
    /// Running mean, one per channel.
    running_mean: Tensor<T>,
    /// Running whitening matrices, the blocks' g × g matrices one after another.
    running_wm: Tensor<T>,
    /// What the last training forward computed, per block.
    saved: Vec<BlockPass>,
    /// x_hat of the last forward, in the input's layout (f64 for the backward).
    x_hat: Vec<f64>,
    forward_mode: Mode,
    y: Tensor<T>,
    dx: Tensor<T>,
}

/// One block's forward quantities kept for the backward pass.
#[derive(Clone, Debug, Default)]
struct BlockPass {
    mean: Vec<f64>,
    sigma: Vec<f64>,
    trace: f64,
    /// P_0 .. P_T.
    p: Vec<Vec<f64>>,
    w: Vec<f64>,
}

impl<T: Real> Whitening<T> {
    /// Whitening in blocks of `group_size` channels (1: batch norm; the
    /// channel count or more: one block, full whitening).
    pub fn new(group_size: usize) -> Self {
        Whitening {
            group_size,
            iterations: ITERATIONS,
            eps: 1e-5,
            momentum: 0.1,
            affine: ChannelAffine::new(true),
            example: Vec::new(),
            channels: 0,
            spatial: 0,
            blocks: Vec::new(),
            running_mean: Tensor::default(),
            running_wm: Tensor::default(),
            saved: Vec::new(),
            x_hat: Vec::new(),
            forward_mode: Mode::Train,
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Full whitening: one block holding every channel.
    pub fn full() -> Self {
        Self::new(usize::MAX)
    }
    /// Newton-Schulz iterations T (5).
    pub fn iterations(mut self, t: usize) -> Self {
        self.iterations = t;
        self
    }
    /// Added to the covariance's diagonal (1e-5).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Learnable per-channel gamma and beta after the whitening (on).
    pub fn affine(mut self, on: bool) -> Self {
        self.affine.on = on;
        self
    }
    /// The blocks as (first channel, size); empty before build.
    pub fn blocks(&self) -> &[(usize, usize)] {
        &self.blocks
    }
    /// The batch covariances (with eps on the diagonal) of the last training
    /// forward, one g × g row-major matrix per block.
    pub fn last_covariances(&self) -> Vec<Vec<f64>> {
        self.saved.iter().map(|b| b.sigma.clone()).collect()
    }
    /// The whitening matrices W of the last training forward, per block.
    pub fn last_whitening(&self) -> Vec<Vec<f64>> {
        self.saved.iter().map(|b| b.w.clone()).collect()
    }
}

// ----------------------------------------------------------------- small dense algebra (f64, row-major)

/// `a · b` for n × n row-major matrices (f64).
pub fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    gemm(false, false, (n, n, n), 1.0, a, b, 0.0, &mut c);
    c
}

/// `c = alpha · op(a) · op(b) + beta · c`, op = transpose when asked;
/// op(a) is rows × inner, op(b) inner × cols, all row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    ta: bool,
    tb: bool,
    (rows, inner, cols): (usize, usize, usize),
    alpha: f64,
    a: &[f64],
    b: &[f64],
    beta: f64,
    c: &mut [f64],
) {
    assert!(a.len() >= rows * inner && b.len() >= inner * cols && c.len() >= rows * cols);
    let (ars, acs) = if ta { (1, rows as isize) } else { (inner as isize, 1) };
    let (brs, bcs) = if tb { (1, inner as isize) } else { (cols as isize, 1) };
    // SAFETY: the assert above keeps every index inside the three slices,
    // and c is a distinct &mut slice
    unsafe {
        matrixmultiply::dgemm(
            rows,
            inner,
            cols,
            alpha,
            a.as_ptr(),
            ars,
            acs,
            b.as_ptr(),
            brs,
            bcs,
            beta,
            c.as_mut_ptr(),
            cols as isize,
            1,
        )
    }
}

/// The transpose of an n × n row-major matrix.
pub fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = a[i * n + j];
        }
    }
    t
}

fn identity(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    m
}

/// Eigenvalues (ascending) and eigenvectors (column k of the row-major n × n
/// result belongs to eigenvalue k) of a symmetric matrix, by cyclic Jacobi
/// rotations in f64. For measurements (condition numbers, the exact
/// Σ^(-1/2) of the structured-covariance comparison), not for training.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = identity(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (k, &i) in order.iter().enumerate() {
        for r in 0..n {
            vectors[r * n + k] = v[r * n + i];
        }
    }
    (values, vectors)
}

/// A block's values as a g × m row-major f64 matrix (column j = example
/// `j / spatial`, position `j % spatial`).
pub(crate) fn gather_block<T: Real>(x: &[T], channels: usize, spatial: usize, (c0, g): (usize, usize)) -> Vec<f64> {
    let n = x.len() / (channels * spatial);
    let m = n * spatial;
    let mut out = vec![0.0; g * m];
    for k in 0..g {
        let row = &mut out[k * m..(k + 1) * m];
        for e in 0..n {
            let src = &x[(e * channels + c0 + k) * spatial..][..spatial];
            for (d, &s) in row[e * spatial..(e + 1) * spatial].iter_mut().zip(src) {
                *d = s.as_f64();
            }
        }
    }
    out
}

/// The inverse of [`gather_block`]: writes `f(k, j, value)` of a g × m
/// matrix back into the input's layout.
pub(crate) fn scatter_block<U: Copy>(
    out: &mut [U],
    channels: usize,
    spatial: usize,
    (c0, g): (usize, usize),
    block: &[f64],
    f: impl Fn(usize, f64) -> U,
) {
    let n = out.len() / (channels * spatial);
    let m = n * spatial;
    for k in 0..g {
        let row = &block[k * m..(k + 1) * m];
        for e in 0..n {
            let dst = &mut out[(e * channels + c0 + k) * spatial..][..spatial];
            for (d, &s) in dst.iter_mut().zip(&row[e * spatial..(e + 1) * spatial]) {
                *d = f(c0 + k, s);
            }
        }
    }
}

/// Per-channel gamma and beta after a normalization that computes its
/// normalized values `h` in f64 (whitening, PIT): `y = gamma_c · h + beta_c`,
/// `dgamma_c = Σ dy · h`, `dbeta_c = Σ dy`, `dh = gamma_c · dy`.
pub(crate) struct ChannelAffine<T: Real> {
    pub on: bool,
    weight: Tensor<T>,
    bias: Tensor<T>,
    weight_grad: Tensor<T>,
    bias_grad: Tensor<T>,
}

impl<T: Real> ChannelAffine<T> {
    pub fn new(on: bool) -> Self {
        ChannelAffine {
            on,
            weight: Tensor::default(),
            bias: Tensor::default(),
            weight_grad: Tensor::default(),
            bias_grad: Tensor::default(),
        }
    }
    /// Gamma 1 and beta 0 for `c` channels (nothing when off).
    pub fn build(&mut self, c: usize) {
        if self.on {
            self.weight = Tensor::full(&[c], T::one());
            self.bias = Tensor::zeros(&[c]);
            self.weight_grad = Tensor::zeros(&[c]);
            self.bias_grad = Tensor::zeros(&[c]);
        }
    }
    /// Gamma per channel as f64 (ones when off).
    pub fn gamma(&self, c: usize) -> Vec<f64> {
        if self.on {
            self.weight.to_f64_vec()
        } else {
            vec![1.0; c]
        }
    }
    /// `y = gamma · h + beta` over a tensor laid out (N, C, spatial).
    pub fn apply(&self, y: &mut [T], h: &[f64], c: usize, spatial: usize) {
        let gamma = self.gamma(c);
        let beta: Vec<f64> = if self.on { self.bias.to_f64_vec() } else { vec![0.0; c] };
        for (i, (yv, &hv)) in y.iter_mut().zip(h).enumerate() {
            let ch = (i / spatial) % c;
            *yv = T::from_f64(gamma[ch] * hv + beta[ch]);
        }
    }
    /// Stores dgamma and dbeta.
    pub fn backward(&mut self, dy: &[T], h: &[f64], c: usize, spatial: usize) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        let (mut dg, mut db) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (i, (&g, &hv)) in dy.iter().zip(h).enumerate() {
            let ch = (i / spatial) % c;
            dg[ch] += g.as_f64() * hv;
            db[ch] += g.as_f64();
        }
        self.weight_grad = Tensor::from_f64(&[c], &dg)?;
        self.bias_grad = Tensor::from_f64(&[c], &db)?;
        Ok(())
    }
    /// `weight` and `bias` with their gradients (none when off).
    pub fn state(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        if !self.on {
            return Vec::new();
        }
        vec![
            ("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad }),
            ("bias".into(), StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }),
        ]
    }
}

/// One block's training forward: the saved quantities and x_hat (g × m).
fn whiten_block(xc: &[f64], g: usize, m: usize, eps: f64, iterations: usize, mean: Vec<f64>) -> (BlockPass, Vec<f64>) {
    let mut sigma = vec![0.0; g * g];
    gemm(false, true, (g, m, g), 1.0 / m as f64, xc, xc, 0.0, &mut sigma);
    for i in 0..g {
        sigma[i * g + i] += eps;
    }
    let trace: f64 = (0..g).map(|i| sigma[i * g + i]).sum();
    let s: Vec<f64> = sigma.iter().map(|v| v / trace).collect();
    let mut p = vec![identity(g)];
    for _ in 0..iterations {
        let a = p.last().expect("P_0");
        let a3s = matmul(&matmul(&matmul(a, a, g), a, g), &s, g);
        p.push(a.iter().zip(&a3s).map(|(x, y)| 0.5 * (3.0 * x - y)).collect());
    }
    let root = trace.sqrt();
    let w: Vec<f64> = p.last().expect("P_T").iter().map(|v| v / root).collect();
    let mut x_hat = vec![0.0; g * m];
    gemm(false, false, (g, g, m), 1.0, &w, xc, 0.0, &mut x_hat);
    (BlockPass { mean, sigma, trace, p, w }, x_hat)
}

/// One block's training backward: dX (g × m) from G = dLoss/dx_hat.
fn whiten_block_backward(pass: &BlockPass, xc: &[f64], grad: &[f64], g: usize, m: usize) -> Vec<f64> {
    let mut dw = vec![0.0; g * g];
    gemm(false, true, (g, m, g), 1.0, grad, xc, 0.0, &mut dw);
    let mut dxc = vec![0.0; g * m];
    gemm(true, false, (g, g, m), 1.0, &pass.w, grad, 0.0, &mut dxc);
    let tr = pass.trace;
    let p_t = pass.p.last().expect("P_T");
    let mut dtr = -dw.iter().zip(p_t).map(|(a, b)| a * b).sum::<f64>() / (2.0 * tr.powf(1.5));
    let s: Vec<f64> = pass.sigma.iter().map(|v| v / tr).collect();
    let st = transpose(&s, g);
    let mut d: Vec<f64> = dw.iter().map(|v| v / tr.sqrt()).collect();
    let mut ds = vec![0.0; g * g];
    for k in (1..pass.p.len()).rev() {
        let a = &pass.p[k - 1];
        let at = transpose(a, g);
        let a2 = matmul(a, a, g);
        let a3 = matmul(&a2, a, g);
        let a2t = transpose(&a2, g);
        let df: Vec<f64> = d.iter().map(|v| -0.5 * v).collect();
        let df_st = matmul(&df, &st, g);
        let t1 = matmul(&df_st, &a2t, g);
        let t2 = matmul(&matmul(&at, &df_st, g), &at, g);
        let t3 = matmul(&a2t, &df_st, g);
        gemm(true, false, (g, g, g), 1.0, &a3, &df, 1.0, &mut ds);
        d = (0..g * g).map(|i| 1.5 * d[i] + t1[i] + t2[i] + t3[i]).collect();
    }
    dtr -= ds.iter().zip(&pass.sigma).map(|(a, b)| a * b).sum::<f64>() / (tr * tr);
    let mut dsigma: Vec<f64> = ds.iter().map(|v| v / tr).collect();
    for i in 0..g {
        dsigma[i * g + i] += dtr;
    }
    let sym: Vec<f64> = (0..g * g).map(|i| dsigma[i] + dsigma[(i % g) * g + i / g]).collect();
    gemm(false, false, (g, g, m), 1.0 / m as f64, &sym, xc, 1.0, &mut dxc);
    for row in dxc.chunks_mut(m) {
        let mean = row.iter().sum::<f64>() / m as f64;
        row.iter_mut().for_each(|v| *v -= mean);
    }
    dxc
}

fn centre(x: &mut [f64], g: usize, m: usize, mean: &[f64]) {
    for (row, &mu) in x.chunks_mut(m).zip(mean).take(g) {
        row.iter_mut().for_each(|v| *v -= mu);
    }
}

impl<T: Real> Layer<T> for Whitening<T> {
    fn kind(&self) -> String {
        if self.blocks.len() == 1 {
            "IterNorm".into()
        } else {
            format!("IterNorm(group_size={})", self.group_size)
        }
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        let name = "Whitening";
        if input.is_empty() || input[0] == 0 {
            return Err(Error::shape(
                name,
                format!("expected input (N, C, *) with channels, got one example of shape {input:?}"),
            ));
        }
        if self.group_size == 0 {
            return Err(Error::config(
                "whitening group size",
                "must be at least 1 (1 is batch norm; the channel count is full whitening)",
            ));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config("whitening eps", "must be positive and finite"));
        }
        if self.iterations == 0 || self.iterations > 100 {
            return Err(Error::config(
                "whitening iterations",
                format!("{} is not in 1..=100 (IterNorm uses 5)", self.iterations),
            ));
        }
        let c = input[0];
        self.example = input.to_vec();
        self.channels = c;
        self.spatial = input[1..].iter().product();
        if self.spatial == 0 {
            return Err(Error::shape(name, format!("empty input {input:?}")));
        }
        let g = self.group_size.min(c);
        self.blocks = (0..c).step_by(g).map(|c0| (c0, g.min(c - c0))).collect();
        self.affine.build(c);
        self.running_mean = Tensor::zeros(&[c]);
        let mut wm = Vec::new();
        for &(_, g) in &self.blocks {
            wm.extend(identity(g));
        }
        self.running_wm = Tensor::from_f64(&[wm.len()], &wm)?;
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        check_built("Whitening", self.channels > 0)?;
        let n = super::check_input("Whitening", x, &self.example)?;
        let (c, sp) = (self.channels, self.spatial);
        let m = n * sp;
        if mode == Mode::Train && m < 2 {
            return Err(Error::shape(
                "Whitening",
                "training needs more than one value per channel (a batch of one example without spatial positions)",
            ));
        }
        self.y.resize(x.shape());
        self.x_hat.resize(x.numel(), 0.0);
        self.forward_mode = mode;
        self.saved.clear();
        let mut wm_offset = 0;
        for &(c0, g) in &self.blocks.clone() {
            let mut xc = gather_block(x.data(), c, sp, (c0, g));
            let x_hat = if mode == Mode::Train {
                let mean: Vec<f64> = xc.chunks(m).map(|r| r.iter().sum::<f64>() / m as f64).collect();
                centre(&mut xc, g, m, &mean);
                let (pass, x_hat) = whiten_block(&xc, g, m, self.eps, self.iterations, mean);
                let mo = self.momentum;
                for (k, &mu) in pass.mean.iter().enumerate() {
                    let r = &mut self.running_mean.data_mut()[c0 + k];
                    *r = T::from_f64((1.0 - mo) * r.as_f64() + mo * mu);
                }
                for (r, &w) in self.running_wm.data_mut()[wm_offset..wm_offset + g * g].iter_mut().zip(&pass.w) {
                    *r = T::from_f64((1.0 - mo) * r.as_f64() + mo * w);
                }
                self.saved.push(pass);
                x_hat
            } else {
                let mean: Vec<f64> = self.running_mean.data()[c0..c0 + g].iter().map(|v| v.as_f64()).collect();
                centre(&mut xc, g, m, &mean);
                let w: Vec<f64> =
                    self.running_wm.data()[wm_offset..wm_offset + g * g].iter().map(|v| v.as_f64()).collect();
                let mut x_hat = vec![0.0; g * m];
                gemm(false, false, (g, g, m), 1.0, &w, &xc, 0.0, &mut x_hat);
                x_hat
            };
            scatter_block(&mut self.x_hat, c, sp, (c0, g), &x_hat, |_, v| v);
            wm_offset += g * g;
        }
        self.affine.apply(self.y.data_mut(), &self.x_hat, c, sp);
        if !self.y.all_finite() {
            return Err(Error::Diverged(
                "whitening produced a non-finite value (an input or a covariance was not finite)".into(),
            ));
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("Whitening", self.channels > 0)?;
        super::check_input("Whitening", x, &self.example)?;
        check_forward_ran("Whitening", self.y.shape(), x.shape())?;
        check_grad("Whitening", dy, x.shape())?;
        let (c, sp) = (self.channels, self.spatial);
        let m = x.numel() / c;
        self.affine.backward(dy.data(), &self.x_hat, c, sp)?;
        if !need_dx {
            return Ok(&self.dx);
        }
        self.dx.resize(x.shape());
        let gamma = self.affine.gamma(c);
        let mut wm_offset = 0;
        for (b, &(c0, g)) in self.blocks.clone().iter().enumerate() {
            let mut grad = gather_block(dy.data(), c, sp, (c0, g));
            for (k, row) in grad.chunks_mut(m).enumerate() {
                row.iter_mut().for_each(|v| *v *= gamma[c0 + k]);
            }
            let dxb = if self.forward_mode == Mode::Train {
                let pass = &self.saved[b];
                let mut xc = gather_block(x.data(), c, sp, (c0, g));
                centre(&mut xc, g, m, &pass.mean);
                whiten_block_backward(pass, &xc, &grad, g, m)
            } else {
                let w: Vec<f64> =
                    self.running_wm.data()[wm_offset..wm_offset + g * g].iter().map(|v| v.as_f64()).collect();
                let mut out = vec![0.0; g * m];
                gemm(true, false, (g, g, m), 1.0, &w, &grad, 0.0, &mut out);
                out
            };
            scatter_block(self.dx.data_mut(), c, sp, (c0, g), &dxb, |_, v| T::from_f64(v));
            wm_offset += g * g;
        }
        Ok(&self.dx)
    }

    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }

    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        let mut s = self.affine.state();
        s.push(("running_mean".into(), StateMut::Buffer(&mut self.running_mean)));
        s.push(("running_wm".into(), StateMut::Buffer(&mut self.running_wm)));
        s
    }
}
