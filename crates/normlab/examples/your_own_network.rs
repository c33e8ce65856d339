//! Your own network: build a small CNN from normlab's layers, train it for
//! two epochs on Fashion-MNIST with SGD in a loop of your own (shuffled
//! batches from `data::Batches`, no `rand` needed), save it, load it into a
//! freshly built copy, and check both evaluate the same; then train another
//! copy with the library's `Trainer`: AdamW, a cosine schedule with warm-up,
//! random crops and label smoothing.
//!
//! Run: `cargo run --release -p normlab --example your_own_network [DATA_DIR]`
//! (DATA_DIR defaults to /usr/share/datasets/fashion-mnist, Debian's
//! dataset-fashion-mnist; `tests/data/fashion-mnist-subset` works too).

use normlab::data::{self, Batch, Batches, LastBatch};
use normlab::layers::{BatchNorm, BatchNormConfig, Conv2d, Flatten, Linear, MaxPool2d, ReLU};
use normlab::loss::CrossEntropy;
use normlab::models::{ModelKind, Sequential};
use normlab::optim::{OptimizerKind, Sgd, SgdConfig};
use normlab::train::{checkpoint, evaluate, Augment, NoObserver, Schedule, ScheduleKind, TrainOptions, Trainer};
use normlab::{rng, Result};

/// Conv -> BN -> ReLU -> max-pool, twice, then a linear classifier; sizes
/// (input channels, features) are inferred by `build`.
#[rustfmt::skip] // one stage a line
fn network(seed: u64) -> Result<Sequential<f32>> {
    let bn = || BatchNorm::new(BatchNormConfig::pytorch());
    let mut net = Sequential::new()
        .push(Conv2d::new(16, 3).padding(1)).push(bn()).push(ReLU::new()).push(MaxPool2d::new(2, 2))
        .push(Conv2d::new(32, 3).padding(1)).push(bn()).push(ReLU::new()).push(MaxPool2d::new(2, 2))
        .push(Flatten::new()).push(Linear::new(10));
    net.build(&[1, 28, 28], &mut rng::seeded(seed))?;
    Ok(net)
}

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into());
    let fm = data::load_dir(dir.as_ref())?;
    let mut net = network(0)?;
    print!("{}", net.summary());

    let mut sgd = Sgd::new(SgdConfig::new(0.05))?;
    let mut loss = CrossEntropy::new();
    let mut batches = Batches::new(fm.train.len(), 64, LastBatch::Drop)?.shuffled(0);
    let mut batch = Batch::default();
    // a new Sequential is in training mode (BN uses batch statistics);
    // evaluate() switches to prediction mode and back
    for epoch in 1..=2 {
        let mut total = 0.0;
        for idx in batches.epoch() {
            batch.fill(&fm.train, idx)?;
            let (l, _correct) = loss.forward(net.forward(&batch.x)?, &batch.labels)?;
            net.backward(&batch.x, loss.grad())?;
            sgd.step(&mut net);
            total += l;
        }
        let (mean_loss, acc) =
            (total / batches.num_batches() as f64, evaluate(&mut net, &fm.test, 500, None)?.accuracy);
        println!("epoch {epoch}: train loss {mean_loss:.4}, test accuracy {acc:.4}");
    }

    let path = std::env::temp_dir().join("your_own_network.safetensors");
    checkpoint::save_state_dict(&mut net, &[], &path)?;
    let mut loaded = network(1)?; // other initial weights, replaced by the file's
    checkpoint::load_into(&mut loaded, &path)?;
    let (saved, reloaded) = (evaluate(&mut net, &fm.test, 500, None)?, evaluate(&mut loaded, &fm.test, 500, None)?);
    println!("saved to {}; test accuracy and loss:", path.display());
    println!("trained {:.4} {:.6}, loaded {:.4} {:.6}", saved.accuracy, saved.loss, reloaded.accuracy, reloaded.loss);
    assert_eq!(saved, reloaded, "the loaded network evaluates exactly as the saved one");

    // the library's loop on the same kind of network: the chapter's
    // options (input shape, classes, evaluation), with ours changed
    let mut options = TrainOptions::chapter(ModelKind::BnLenet);
    options.model = "your-own-network".into();
    (options.epochs, options.batch_size, options.label_smoothing) = (2, 64, 0.1);
    options.optimizer = OptimizerKind::adamw();
    options.sgd = SgdConfig { weight_decay: 0.01, ..SgdConfig::new(3e-3) };
    options.schedule = Schedule { warmup_epochs: Some(0.5), ..Schedule::of(ScheduleKind::Cosine) };
    options.augment = Augment { crop_padding: 2, hflip: false }; // no flips: wrong for digits
    let mut trainer = Trainer::with_network(options, network(2)?)?;
    for _ in 0..trainer.options.epochs {
        let m = trainer.run_epoch(&fm.train, &fm.test, &mut NoObserver)?;
        let lr = m.lr.unwrap_or(f64::NAN);
        println!(
            "Trainer epoch {}: lr {lr:.2e}, train loss {:.4}, test accuracy {:.4}",
            m.epoch, m.train_loss, m.val_acc
        );
    }
    Ok(())
}
