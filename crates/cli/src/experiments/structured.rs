//! `structured`: exercise 7's "other compact matrix variants (block-diagonal,
//! low-displacement rank, Monarch)". Measured on real activations: after
//! BN-LeNet trains, the covariance Σ of each BN layer's input over a batch
//! of training images, its exact whitening matrix Σ^(-1/2), and how well
//! each compact form approximates it, with its size and cost.
//!
//! Forms: diagonal (BN: `diag(Σ_ii^(-1/2))`), block-diagonal (each block's
//! own Σ_b^(-1/2), as `block-whitening` computes), Monarch (Dao et al. 2022:
//! for C = p·q, entry ((a,b),(c,d)) = L_b[a,c]·R_c[b,d], so each (b, c)
//! slice over (a, d) has rank 1; the Frobenius projection of Σ^(-1/2) onto
//! the class, slice by slice), low displacement rank r (Stein displacement
//! `M - Z M Zᵀ` with the down-shift Z truncated to its r largest
//! eigenvalues, M rebuilt by `M_ij = D_ij + M_(i-1)(j-1)`: Toeplitz
//! matrices have rank 2), and full. Monarch and displacement rank depend on
//! the order of the channels, which has no meaning in a network, so they
//! are also measured over random channel orders.

use std::fmt::Write as _;

use normlab::layers::whitening::{matmul, symmetric_eigen, transpose};
use normlab::tensor::Tensor;
use normlab::train::fill_batch;
use normlab::Result;
use rand::seq::SliceRandom;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Report, Table};
use super::research::{batch_norm, channel_covariance, seconds_col, train_all, Net, NetSetting, STAGES};
use super::runner::{num, Run};
use super::{Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "structured",
    title: "Research exercise: compact covariance factors (Monarch, low displacement rank) at LeNet's widths",
    summary: "exercise 7: Monarch, displacement-rank, block forms of Σ^(-1/2)",
    question: "Can a compact structured matrix (block-diagonal, low displacement rank, Monarch) stand in for the full whitening matrix, and is there anything to save at LeNet's widths (6 and 16 channels, 120 and 84 units)?",
    defaults: Scale { epochs: 3, train: 10_000, val: 10_000 },
    measured_seconds: 13,
    run,
};

/// Images whose activations give the covariances.
const IMAGES: usize = 1000;
/// Random channel orders for the order-dependent forms (3 with --quick).
const ORDERS: usize = 20;

/// The factors p·q = C closest to square (p ≤ q).
pub fn monarch_shape(c: usize) -> (usize, usize) {
    let p = (1..=c).filter(|&p| c.is_multiple_of(p) && p * p <= c).max().unwrap_or(1);
    (p, c / p)
}

/// The Frobenius projection of `m` (C × C) onto the Monarch matrices of
/// shape p·q: rows (a, b) = a·q + b, columns (c, d) = c·q + d; each (b, c)
/// slice over (a, d), a p × q matrix, replaced by its best rank-1 approximation.
pub fn monarch_projection(m: &[f64], c: usize) -> Vec<f64> {
    let (p, q) = monarch_shape(c);
    let mut out = vec![0.0; c * c];
    for b in 0..q {
        for cc in 0..p {
            let slice: Vec<f64> = (0..p * q).map(|k| m[((k / q) * q + b) * c + cc * q + k % q]).collect();
            // top right singular vector from the q × q matrix Sᵀ S
            let sts: Vec<f64> =
                (0..q * q).map(|k| (0..p).map(|a| slice[a * q + k / q] * slice[a * q + k % q]).sum()).collect();
            let (_, vecs) = symmetric_eigen(&sts, q);
            let v: Vec<f64> = (0..q).map(|d| vecs[d * q + q - 1]).collect();
            for a in 0..p {
                let u: f64 = (0..q).map(|d| slice[a * q + d] * v[d]).sum();
                for d in 0..q {
                    out[(a * q + b) * c + cc * q + d] = u * v[d];
                }
            }
        }
    }
    out
}

/// Keeps the displacement `m - Z m Zᵀ` of a symmetric `m` to its `r`
/// eigenvalues of largest magnitude and rebuilds the matrix.
pub fn displacement_rank_projection(m: &[f64], c: usize, r: usize) -> Vec<f64> {
    let d: Vec<f64> =
        (0..c * c).map(|k| m[k] - if k / c > 0 && k % c > 0 { m[(k / c - 1) * c + k % c - 1] } else { 0.0 }).collect();
    let (vals, vecs) = symmetric_eigen(&d, c);
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&i, &j| vals[j].abs().total_cmp(&vals[i].abs()));
    let mut dr = vec![0.0; c * c];
    for &k in order.iter().take(r) {
        for i in 0..c {
            for j in 0..c {
                dr[i * c + j] += vals[k] * vecs[i * c + k] * vecs[j * c + k];
            }
        }
    }
    let mut out = vec![0.0; c * c];
    for i in 0..c {
        for j in 0..c {
            out[i * c + j] = dr[i * c + j] + if i > 0 && j > 0 { out[(i - 1) * c + j - 1] } else { 0.0 };
        }
    }
    out
}

/// `Σ^(-1/2)` of a symmetric positive definite matrix.
pub fn inverse_sqrt(s: &[f64], c: usize) -> Vec<f64> {
    let (vals, vecs) = symmetric_eigen(s, c);
    let mut out = vec![0.0; c * c];
    for k in 0..c {
        let f = 1.0 / vals[k].max(1e-300).sqrt();
        for i in 0..c {
            for j in 0..c {
                out[i * c + j] += f * vecs[i * c + k] * vecs[j * c + k];
            }
        }
    }
    out
}

/// Block-diagonal whitening: each block of `g` consecutive channels by its own Σ_b^(-1/2).
pub fn block_whitening(s: &[f64], c: usize, g: usize) -> Vec<f64> {
    let mut out = vec![0.0; c * c];
    for c0 in (0..c).step_by(g) {
        let n = g.min(c - c0);
        let sub: Vec<f64> = (0..n * n).map(|k| s[(c0 + k / n) * c + c0 + k % n]).collect();
        let w = inverse_sqrt(&sub, n);
        for k in 0..n * n {
            out[(c0 + k / n) * c + c0 + k % n] = w[k];
        }
    }
    out
}

fn frobenius(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// ||W Σ Wᵀ − I||_F / sqrt(C): 0 for a whitening matrix.
pub fn whiteness(w: &[f64], s: &[f64], c: usize) -> f64 {
    let r = matmul(&matmul(w, s, c), &transpose(w, c), c);
    let e: Vec<f64> = (0..c * c).map(|k| r[k] - if k % (c + 1) == 0 { 1.0 } else { 0.0 }).collect();
    frobenius(&e) / (c as f64).sqrt()
}

/// One compact form: name, parameters for C channels, and the matrix it
/// gives from Σ and its exact whitening W*.
struct Form {
    name: &'static str,
    params: fn(usize) -> usize,
    make: fn(&[f64], &[f64], usize) -> Vec<f64>,
    order_dependent: bool,
}

const FORMS: [Form; 7] = [
    Form { name: "diagonal (BN)", params: |c| c, make: |s, _, c| block_whitening(s, c, 1), order_dependent: false },
    Form {
        name: "blocks of 2",
        params: |c| 4 * (c / 2) + (c % 2),
        make: |s, _, c| block_whitening(s, c, 2),
        order_dependent: true,
    },
    Form {
        name: "blocks of 4",
        params: |c| 16 * (c / 4) + (c % 4).pow(2),
        make: |s, _, c| block_whitening(s, c, 4),
        order_dependent: true,
    },
    Form {
        name: "Monarch",
        params: |c| {
            let (p, q) = monarch_shape(c);
            p * q * (p + q)
        },
        make: |_, w, c| monarch_projection(w, c),
        order_dependent: true,
    },
    Form {
        name: "displacement rank 1",
        params: |c| 2 * c,
        make: |_, w, c| displacement_rank_projection(w, c, 1),
        order_dependent: true,
    },
    Form {
        name: "displacement rank 2",
        params: |c| 4 * c,
        make: |_, w, c| displacement_rank_projection(w, c, 2),
        order_dependent: true,
    },
    Form { name: "full", params: |c| c * (c + 1) / 2, make: |_, w, _| w.to_vec(), order_dependent: false },
];

/// Per stage: each trained network's Σ (+ 1e-5·I) over the first images.
fn covariances(ctx: &Context, net: &mut Net) -> Result<Vec<Vec<f64>>> {
    net.net.eval();
    let n = IMAGES.min(ctx.train.len());
    let idx: Vec<usize> = (0..n).collect();
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    fill_batch(&ctx.train, &idx, &mut x, &mut labels);
    net.net.forward(&x)?;
    Ok(STAGES
        .iter()
        .enumerate()
        .map(|(k, &(_, c))| {
            let mut s = channel_covariance(net.net.layers()[net.affine_at[k]].output());
            for i in 0..c {
                s[i * c + i] += 1e-5;
            }
            s
        })
        .collect())
}

fn permuted(s: &[f64], c: usize, perm: &[usize]) -> Vec<f64> {
    (0..c * c).map(|k| s[perm[k / c] * c + perm[k % c]]).collect()
}

fn run(ctx: &Context) -> Result<Report> {
    let settings = vec![NetSetting::new("BN", batch_norm())];
    let mut sigmas: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut finish = |_: usize, net: &mut Net, _: &mut Run| -> Result<()> {
        sigmas.push(covariances(ctx, net)?);
        Ok(())
    };
    let runs = train_all(ctx, &settings, &mut finish)?;
    let cols = [val_acc_col(), train_loss_col(), seconds_col()];
    let table = settings_table("The trained BN-LeNets whose activations are measured", &runs, &cols);
    let mut files = report::write_csvs(ctx, &runs, &cols)?;

    let mut rng = normlab::rng::seeded(99);
    let orders = if ctx.quick { 3 } else { ORDERS };
    let mut form_table = Table {
        caption: "Compact forms of the whitening matrix on the activations of the trained BN-LeNets (mean over the seeds)".into(),
        header: ["stage", "C", "form", "parameters", "rel. error vs Σ^(-1/2)", "whiteness error", "rel. error, random channel orders (min–max)"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: Vec::new(),
        notes: vec![format!(
            "Σ: covariance of the layer's input (before BN) over the first {} training images (and all positions after a convolution), + 1e-5·I. Relative error: ||W − Σ^(-1/2)||_F / ||Σ^(-1/2)||_F. Whiteness error: ||W Σ Wᵀ − I||_F / √C (0 = white; BN's diagonal leaves the correlations). Parameters: free values of the form (full: C(C+1)/2, symmetric). Random orders: the same after {orders} random permutations of the channels (the forms that depend on the order).",
            IMAGES
        )],
    };
    let mut csv =
        String::from("stage,channels,form,parameters,relative_error,whiteness_error,perm_error_min,perm_error_max\n");
    let mut best_compact: Vec<(String, &str, f64, f64)> = Vec::new();
    for (k, &(name, c)) in STAGES.iter().enumerate() {
        let mut diag_white = f64::NAN;
        for form in &FORMS {
            let (mut rel, mut white, mut pmin, mut pmax, mut n) = (0.0, 0.0, f64::INFINITY, 0.0f64, 0.0);
            for per_seed in &sigmas {
                let s = &per_seed[k];
                let w_star = inverse_sqrt(s, c);
                let w = (form.make)(s, &w_star, c);
                let diff: Vec<f64> = w.iter().zip(&w_star).map(|(a, b)| a - b).collect();
                rel += frobenius(&diff) / frobenius(&w_star);
                white += whiteness(&w, s, c);
                n += 1.0;
                if form.order_dependent {
                    let mut perm: Vec<usize> = (0..c).collect();
                    for _ in 0..orders {
                        perm.shuffle(&mut rng);
                        let sp = permuted(s, c, &perm);
                        // the exact whitening of the permuted Σ is the permuted W*
                        let wp_star = permuted(&w_star, c, &perm);
                        let wp = (form.make)(&sp, &wp_star, c);
                        let d: Vec<f64> = wp.iter().zip(&wp_star).map(|(a, b)| a - b).collect();
                        let e = frobenius(&d) / frobenius(&wp_star);
                        pmin = pmin.min(e);
                        pmax = pmax.max(e);
                    }
                }
            }
            if n == 0.0 {
                continue;
            }
            let (rel, white) = (rel / n, white / n);
            if form.name == "diagonal (BN)" {
                diag_white = white;
            }
            let params = (form.params)(c);
            if form.name != "full" && form.name != "diagonal (BN)" {
                best_compact.push((name.to_string(), form.name, rel, white / diag_white.max(1e-12)));
            }
            let perm_text = if form.order_dependent { format!("{pmin:.3}–{pmax:.3}") } else { "same".into() };
            form_table.rows.push(
                vec![
                    name.to_string(),
                    c.to_string(),
                    form.name.to_string(),
                    params.to_string(),
                    format!("{rel:.3}"),
                    format!("{white:.3}"),
                    perm_text,
                ]
                .into_iter()
                .map(Into::into)
                .collect(),
            );
            let (pn, px) = if form.order_dependent { (num(pmin), num(pmax)) } else { ("nan".into(), "nan".into()) };
            let _ = writeln!(csv, "{name},{c},{},{params},{},{},{pn},{px}", form.name, num(rel), num(white));
        }
    }
    ctx.write("forms.csv", &csv)?;
    files.push(("forms.csv".into(), "per stage and compact form: parameters, relative error against Σ^(-1/2), whiteness error, and the error's range over random channel orders".into()));

    // the cost side: applying the full C x C matrix against the layer that feeds it
    let mut cost_table = Table {
        caption: "What there is to save: multiply-adds per example".into(),
        header: ["stage", "producing layer", "full whitening (apply)", "Monarch (apply)", "full / producing layer"].iter().map(|s| s.to_string()).collect(),
        rows: Vec::new(),
        notes: vec!["Producing layer: the convolution or linear layer before the normalization (conv1 6·25·24², conv2 16·6·25·8², fc1 256·120, fc2 120·84). Applying a C × C whitening matrix costs C² per position; Monarch p·q·(p + q). The per-step costs of estimating the matrix (C² per value for the covariance, C³ per Newton-Schulz product) are measured by `whitening`.".into()],
    };
    let producing = [6 * 25 * 576, 16 * 6 * 25 * 64, 256 * 120, 120 * 84];
    let spatial = [576, 64, 1, 1];
    let mut ratios = Vec::new();
    for (k, &(name, c)) in STAGES.iter().enumerate() {
        let (p, q) = monarch_shape(c);
        let full = c * c * spatial[k];
        let monarch = p * q * (p + q) * spatial[k];
        ratios.push(full as f64 / producing[k] as f64);
        cost_table.rows.push(
            vec![
                name.to_string(),
                producing[k].to_string(),
                full.to_string(),
                monarch.to_string(),
                format!("{:.2}", full as f64 / producing[k] as f64),
            ]
            .into_iter()
            .map(Into::into)
            .collect(),
        );
    }
    let plots = standard_plots(&ctx.out, &runs)?;
    let mut reading = Vec::new();
    let find = |stage: &str, form: &str| best_compact.iter().find(|b| b.0 == stage && b.1 == form).map(|b| (b.2, b.3));
    for &(stage, _) in &STAGES {
        if let (Some(m), Some(d2), Some(b4)) =
            (find(stage, "Monarch"), find(stage, "displacement rank 2"), find(stage, "blocks of 4"))
        {
            reading.push(format!(
                "{stage}: relative error against the exact whitening matrix: Monarch {:.3}, displacement rank 2 {:.3}, blocks of 4 {:.3}; whiteness error relative to BN's diagonal: {:.2}, {:.2}, {:.2}.",
                m.0, d2.0, b4.0, m.1, d2.1, b4.1
            ));
        }
    }
    let blocks_better = best_compact.iter().filter(|b| b.1.starts_with("blocks")).all(|b| b.3 < 1.0);
    let worse: Vec<String> = best_compact
        .iter()
        .filter(|b| (b.1 == "Monarch" || b.1.starts_with("displacement")) && b.3 > 1.0)
        .map(|b| format!("{} {}", b.0, b.1))
        .collect();
    reading.push(format!(
        "Close in Frobenius norm is not close as a whitener: of the 12 Monarch and displacement-rank approximations of Σ^(-1/2) (4 stages × 3 forms), {} whiten worse than BN's diagonal ({}): an error in the directions of small variance is multiplied by 1/sqrt(eigenvalue) in W Σ Wᵀ. Block-diagonal whitening, exact within each block, {} than the diagonal.",
        worse.len(),
        if worse.is_empty() { "none".to_string() } else { worse.join(", ") },
        if blocks_better { "whitens better at every stage" } else { "does not always whiten better" }
    ));
    reading.push(format!(
        "Why the compact forms do not pay at LeNet's widths: the full whitening matrix is small (21 and 136 free values for the convolutions, 7,260 and 3,570 for the linear layers), and applying it costs {} of the layer that feeds it (conv1, conv2, fc1, fc2), so a factor that is cheaper to apply saves little; the cost of whitening is in estimating and differentiating the matrix (see `whitening`), which a structured approximation of Σ^(-1/2) does not remove. Monarch and displacement rank also assume an order of the channels that a network does not have: their error changes with the order (last column of the table).",
        ratios.iter().map(|r| format!("{r:.2}×")).collect::<Vec<_>>().join(", ")
    ));
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BN-LeNet, trained with plain SGD, batch 128, lr 0.1; then the input of each BN layer (the convolution's or linear layer's output) on the first training images in prediction mode gives the covariances measured.".into(),
            "Forms: diagonal (what BN uses), blocks of 2 and 4 (what block-whitening computes), Monarch (C = p·q with p, q closest to square: 6 = 2·3, 16 = 4·4, 120 = 10·12, 84 = 7·12; the best Monarch approximation of Σ^(-1/2)), displacement rank 1 and 2 (Toeplitz-like; the displacement of Σ^(-1/2) truncated), and full (exact, Σ^(-1/2) by eigendecomposition).".into(),
        ],
        tables: vec![table, form_table, cost_table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
