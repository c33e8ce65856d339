//! `normlab inspect`: the learned gamma and beta, and the running statistics,
//! of every batch-norm layer (the chapter's last look at the model).

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use normlab::layers::Layer;
use normlab::train::checkpoint;
use normlab::Error;

use super::args::PathArg;

#[derive(clap::Args, Debug)]
#[command(
    about = "Show every BN layer's gamma, beta, running mean and running variance",
    after_help = "Examples:\n  normlab inspect --checkpoint model.safetensors            # summary of every BN layer\n  normlab inspect --checkpoint model.safetensors --layer net.1   # full vectors of the first BN layer"
)]
pub struct InspectArgs {
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    checkpoint: PathBuf,
    /// Print the full vectors of this layer (e.g. net.1).
    #[arg(long, value_name = "NAME")]
    layer: Option<String>,
    #[arg(long)]
    json: bool,
}

fn stats(v: &[f32]) -> serde_json::Value {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = v.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    json!({"mean": mean, "std": std, "min": min, "max": max})
}

pub fn run(args: InspectArgs) -> Result<()> {
    let (mut net, info) = checkpoint::load(&args.checkpoint)?;
    let mut layers = Vec::new();
    let slot_names: Vec<String> = (0..net.len()).map(|i| net.batch_norm_name(i)).collect();
    for (i, layer) in net.layers_mut().iter_mut().enumerate() {
        let Some(bn) = layer.as_batch_norm_mut() else {
            continue;
        };
        let kind = bn.kind();
        let name = slot_names[i].clone();
        let vectors: Vec<(&str, Vec<f32>)> = [
            ("gamma", bn.gamma().map(|t| t.data().to_vec())),
            ("beta", bn.beta().map(|t| t.data().to_vec())),
            ("running_mean", bn.running_mean().map(|t| t.data().to_vec())),
            ("running_var", bn.running_var().map(|t| t.data().to_vec())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        layers.push((name, kind, bn.num_features(), bn.num_batches_tracked(), vectors));
    }
    if layers.is_empty() && args.layer.is_none() {
        if args.json {
            outln!("{}", json!({"checkpoint": args.checkpoint, "model": info.model, "batch_norm_layers": []}));
        } else {
            outln!("{} ({}) has no batch-norm layers", args.checkpoint.display(), info.model);
        }
        return Ok(());
    }
    if let Some(wanted) = &args.layer {
        let names: Vec<String> = layers.iter().map(|l| l.0.clone()).collect();
        layers.retain(|l| &l.0 == wanted);
        if layers.is_empty() {
            let choices = if names.is_empty() {
                "this model has none".to_string()
            } else {
                format!("choose one of {}", names.join(", "))
            };
            return Err(Error::config(
                "--layer",
                format!("'{wanted}' is not a batch-norm layer of this model; {choices}"),
            )
            .into());
        }
    }
    let full = args.layer.is_some();
    if args.json {
        let out: Vec<_> = layers
            .iter()
            .map(|(name, kind, c, nbt, vectors)| {
                let mut o = json!({"layer": name, "kind": kind, "num_features": c, "num_batches_tracked": nbt});
                for (k, v) in vectors {
                    o[*k] = if full { json!(v) } else { stats(v) };
                }
                o
            })
            .collect();
        outln!("{}", json!({"checkpoint": args.checkpoint, "model": info.model, "batch_norm_layers": out}));
        return Ok(());
    }
    outln!("{} ({})", args.checkpoint.display(), info.model);
    for (name, kind, c, nbt, vectors) in &layers {
        outln!("\n{name}  {kind}({c})  num_batches_tracked {nbt}");
        if full {
            for (k, v) in vectors {
                let items: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
                outln!("  {k:<13} [{}]", items.join(", "));
            }
        } else {
            outln!("  {:<13} {:>9} {:>9} {:>9} {:>9}", "", "mean", "std", "min", "max");
            for (k, v) in vectors {
                let s = stats(v);
                outln!(
                    "  {k:<13} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
                    s["mean"].as_f64().unwrap_or(f64::NAN),
                    s["std"].as_f64().unwrap_or(f64::NAN),
                    s["min"].as_f64().unwrap_or(f64::NAN),
                    s["max"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(())
}
