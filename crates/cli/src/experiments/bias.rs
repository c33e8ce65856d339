//! `bias`: the biases of the convolutions and linear layers in front of BN.
//! BN subtracts the batch mean, which removes any constant added before it,
//! so these biases cannot change the output: same accuracy, fewer parameters.
//! The experiment shows both, and measures why: how far those biases move.

use normlab::layers::StateMut;
use normlab::models::Sequential;
use normlab::train::Trainer;
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Report};
use super::runner::{run_settings, Probe, Setting};
use super::{bn_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "bias",
    title: "Biases in front of batch norm",
    summary: "biases in front of BN on vs off: parameters, accuracy, and why",
    question: "Are the biases of the convolutions and linear layers in front of BN needed? Train with and without them: same accuracy with fewer parameters, and why.",
    defaults: Scale { epochs: 5, train: 20_000, val: 10_000 },
    measured_seconds: 13,
    run,
};

/// The biases of the layers followed by a BN layer, in layer order, and the
/// bias of the last layer (not followed by BN), as f64.
fn biases(net: &mut Sequential<f32>) -> (Vec<f64>, Vec<f64>) {
    let kinds: Vec<String> = net.layers().iter().map(|l| l.kind()).collect();
    let last = kinds.len() - 1;
    let (mut before_bn, mut output) = (Vec::new(), Vec::new());
    for (i, layer) in net.layers_mut().iter_mut().enumerate() {
        let feeds_bn = kinds.get(i + 1).is_some_and(|k| k.starts_with("BatchNorm"));
        if !feeds_bn && i != last {
            continue;
        }
        for (name, s) in layer.state_mut() {
            if let (true, StateMut::Param { value, .. }) = (name == "bias", s) {
                let v = value.data().iter().map(|&x| x as f64);
                if feeds_bn {
                    before_bn.extend(v);
                } else {
                    output.extend(v);
                }
            }
        }
    }
    (before_bn, output)
}

fn max_change(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Per epoch: the largest change since initialization of a bias in front
/// of BN, and of the output layer's bias.
struct BiasProbe {
    start: (Vec<f64>, Vec<f64>),
}

impl Probe for BiasProbe {
    fn columns(&self) -> Vec<String> {
        vec!["max_change_bias_before_bn".into(), "max_change_output_bias".into()]
    }
    fn start(&mut self, trainer: &mut Trainer) -> Result<()> {
        self.start = biases(&mut trainer.net);
        Ok(())
    }
    fn after_epoch(&mut self, trainer: &mut Trainer, _ctx: &Context) -> Result<Vec<f64>> {
        let now = biases(&mut trainer.net);
        Ok(vec![max_change(&now.0, &self.start.0), max_change(&now.1, &self.start.1)])
    }
}

fn run(ctx: &Context) -> Result<Report> {
    let mut without = bn_lenet();
    without.bias_before_norm = false;
    let settings =
        vec![Setting::new("biases before BN (chapter)", bn_lenet()), Setting::new("no biases before BN", without)];
    let mut probe = BiasProbe { start: (Vec::new(), Vec::new()) };
    let runs = run_settings(ctx, &settings, &mut probe)?;
    let (before, output) = (runs.column("max_change_bias_before_bn"), runs.column("max_change_output_bias"));
    let cols = [
        Col::new("params", 0, |r| Some(r.params as f64)).plain(),
        val_acc_col(),
        train_loss_col(),
        Col::new("max |Δ bias| before BN", 8, move |r| r.last_extra(before)),
        Col::new("max |Δ bias| output layer", 4, move |r| r.last_extra(output)),
    ];
    let table =
        settings_table("Parameters, final accuracy and loss, and how far the biases moved in training", &runs, &cols);
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let mut reading = Vec::new();
    if let (Some(p0), Some(p1)) = (runs.stat(0, |r| Some(r.params as f64)), runs.stat(1, |r| Some(r.params as f64))) {
        reading.push(format!(
            "Dropping the biases in front of BN removes {} of {} parameters ({:.2} %): one per BN channel (6 + 16 + 120 + 84 = 226).",
            p0.mean - p1.mean,
            p0.mean,
            100.0 * (p0.mean - p1.mean) / p0.mean
        ));
    }
    reading.push(report::versus(&runs, 0, 1));
    if let (Some(b), Some(o)) = (runs.stat(0, |r| r.last_extra(before)), runs.stat(0, |r| r.last_extra(output))) {
        let mut line = format!(
            "With the biases on, no bias in front of BN moved by more than {:.1e} over the whole training (mean over seeds of the largest change), while the output layer's bias, which has no BN after it, moved by up to {:.3}.",
            b.mean, o.mean
        );
        if b.mean < 1e-4 * o.mean {
            line += " Why: BN subtracts each channel's batch mean, and a bias adds the same constant to every value of its channel, so the two cancel; the loss does not depend on these biases, their gradient is zero up to rounding, and they stay where they were initialized.";
        }
        reading.push(line);
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BNLeNet; \"no biases before BN\" removes the biases of both convolutions and both hidden linear layers (each is followed by BN); the output layer keeps its bias.".into(),
            "Training: the chapter's recipe, plain SGD, lr 0.1, batch 128.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
