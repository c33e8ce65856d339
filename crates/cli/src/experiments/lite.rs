//! `lite`: which half of batch normalization matters? Full BN against
//! centring only (subtract the batch mean), scaling only (divide by the batch
//! standard deviation) and no BN, on BNLeNet.

use normlab::layers::BnParts;
use normlab::models::{LeNetConfig, Norm};
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Report};
use super::runner::{run_settings, NoProbe, Setting};
use super::{bn_lenet, plain_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "lite",
    title: "Lite batch norm: centring only, scaling only",
    summary: "full BN vs centring only vs scaling only vs none",
    question: "Which half of batch normalization does the work: subtracting the batch mean, dividing by the batch standard deviation, or only both together?",
    defaults: Scale { epochs: 5, train: 20_000, val: 10_000 },
    measured_seconds: 31,
    run,
};

/// BNLeNet whose BN layers apply only `parts`.
pub fn bn_parts(parts: BnParts) -> LeNetConfig {
    let mut c = bn_lenet();
    if let Norm::Batch { config, .. } = &mut c.norm {
        *config = config.parts(parts);
    }
    c
}

fn run(ctx: &Context) -> Result<Report> {
    let settings = vec![
        Setting::new("full BN", bn_lenet()),
        Setting::new("centre only", bn_parts(BnParts::CenterOnly)),
        Setting::new("scale only", bn_parts(BnParts::ScaleOnly)),
        Setting::new("no BN", plain_lenet()),
    ];
    let runs = run_settings(ctx, &settings, &mut NoProbe)?;
    let cols = [val_acc_col(), train_loss_col()];
    let table = settings_table("Final validation accuracy and training loss", &runs, &cols);
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let (full, centre, scale, none) = (0, 1, 2, 3);
    let mut reading = vec![report::ranking(&runs, &[full, centre, scale, none])];
    reading.push(report::versus(&runs, full, centre));
    reading.push(report::versus(&runs, full, scale));
    reading.push(report::versus(&runs, centre, none));
    reading.push(report::versus(&runs, scale, none));
    if let (Some(c), Some(s), Some(f)) =
        (runs.final_val_acc(centre), runs.final_val_acc(scale), runs.final_val_acc(full))
    {
        let (better, worse, b, w) =
            if c.mean >= s.mean { ("centring", "scaling", c, s) } else { ("scaling", "centring", s, c) };
        if b.mean < report::NEAR_CHANCE {
            reading.push(format!(
                "Neither half alone trains in this budget: centring only ends at {:.4} and scaling only at {:.4}, both near chance (0.1), while full BN reaches {:.4}.",
                c.mean, s.mean, f.mean
            ));
        } else {
            reading.push(format!(
            "Of the two halves, {better} alone keeps more of full BN's accuracy here (it ends {:.4} below full BN; {worse} alone ends {:.4} below).",
            f.mean - b.mean,
            f.mean - w.mean
        ));
        }
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BNLeNet (BN before each sigmoid, after both convolutions and both hidden linear layers); training: the chapter's recipe, plain SGD, lr 0.1, batch 128.".into(),
            "Centre only: y = gamma·(x − mean) + beta; scale only: y = gamma·x/sqrt(var + eps) + beta (the variance still about the batch mean); running statistics kept as in PyTorch for prediction.".into(),
            "No BN: the same network with the BN layers removed (the convolutions and linear layers keep their biases).".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
