//! Mutation testing of the checkpoint loader (`checkpoint::info`, `load`
//! and `load_into`) over real checkpoints, structure-aware (the JSON header,
//! the network description, tensor names, metadata) and byte by byte: no
//! panic, hang or unjustified allocation, no empty message, and a loaded
//! model predicts. The seeds include checkpoints trained by the binary,
//! which is why this library test lives here. The harness, its settings and
//! the long mode are described in `normlab/tests/it/fuzz/mod.rs`.

use crate::common;

use std::collections::BTreeMap;
use std::panic;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

use normlab::models::{self, ModelKind};
use normlab::train::checkpoint;
use normlab::{rng, Tensor};

use crate::fuzz;
use crate::largest_alloc;
use fuzz::{apply, corpus_seeds, fuzz, mutation, Mutation, Target, Verdict};
use largest_alloc::largest_allocation;

use common::checkpoints::{safetensors_raw, split_safetensors, trained};
use common::s;

/// A structure-aware change to a checkpoint's JSON header.
#[derive(Clone, Debug)]
enum JsonMutation {
    /// Replaces a node (object, array or leaf) of the header with a value.
    HeaderNode(Index, Index),
    /// The same inside the metadata's network description.
    NetworkNode(Index, Index),
    RemoveTensor(Index),
    RenameTensor(Index, Index),
    DuplicateTensor(Index),
    /// Sets or removes a metadata entry.
    Meta(Index, Option<Index>),
}

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMutation::HeaderNode(a, b)),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMutation::NetworkNode(a, b)),
        1 => any::<Index>().prop_map(JsonMutation::RemoveTensor),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMutation::RenameTensor(a, b)),
        1 => any::<Index>().prop_map(JsonMutation::DuplicateTensor),
        1 => (any::<Index>(), proptest::option::of(any::<Index>())).prop_map(|(a, b)| JsonMutation::Meta(a, b)),
    ]
}

/// Values a mutated JSON node may take: extremes, wrong types, the names of
/// normlab's enums, dtypes, shapes and offsets.
fn json_pool() -> Vec<Value> {
    let mut pool = vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(0.5),
        json!(1e-300),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(4294967296u64),
        json!(null),
        json!(true),
        json!(""),
        json!("x"),
        json!([]),
        json!({}),
        json!([0]),
        json!([6]),
        json!([6, 1, 5, 5]),
        json!([0, 0]),
        json!([0, 24]),
        json!([u64::MAX]),
        json!([4294967296u64, 4294967296u64]),
        json!([0, u64::MAX]),
        json!([u64::MAX, 0]),
        json!([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        json!({"NewStatWeight": 0.1}),
        json!({"OldStatWeight": 0.99}),
        json!({"NewStatWeight": -1.0}),
        json!({"Group": {"groups": 0}}),
        json!({"Group": {"groups": 2}}),
        json!({"Group": {"groups": 3}}),
        json!({"Group": {"groups": u64::MAX}}),
    ];
    for s in [
        "None",
        "Layer",
        "Batch",
        "BeforeActivation",
        "AfterActivation",
        "Sigmoid",
        "ReLU",
        "Fused",
        "Scratch",
        "Unbiased",
        "Biased",
        "Full",
        "CenterOnly",
        "ScaleOnly",
        "CumulativeAverage",
        "F32",
        "F64",
        "F16",
        "BF16",
        "I64",
        "I32",
        "U8",
        "BOOL",
        "F8_E4M3",
    ] {
        pool.push(json!(s));
    }
    for kind in ModelKind::ALL {
        let config = serde_json::to_value(kind.config()).unwrap();
        pool.push(config["norm"].clone());
        pool.push(json!(serde_json::to_string(&config).unwrap()));
        pool.push(json!(kind.name()));
    }
    pool
}

/// JSON pointers of every node under `v`.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(x, format!("{here}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(here);
}

fn replace_node(v: &mut Value, node: &Index, value: &Value) {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let p = &ps[node.index(ps.len())];
    if p.is_empty() {
        *v = value.clone();
    } else if let Some(slot) = v.pointer_mut(p) {
        *slot = value.clone();
    }
}

fn tensor_names(header: &Value) -> Vec<String> {
    header.as_object().map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect()).unwrap_or_default()
}

fn mutate_header(header: &mut Value, m: &JsonMutation, pool: &[Value]) {
    const NAMES: [&str; 6] =
        ["net.99.weight", "", "__metadata__", "net.0.weight", "optimizer.momentum.net.0.weight", "net.1"];
    const KEYS: [&str; 5] = ["normlab.model", "normlab.network", "normlab.version", "format", "epoch"];
    let names = tensor_names(header);
    let Some(obj) = header.as_object_mut() else { return };
    match m {
        JsonMutation::HeaderNode(node, value) => replace_node(header, node, &pool[value.index(pool.len())]),
        JsonMutation::NetworkNode(node, value) => {
            let Some(text) = obj.get("__metadata__").and_then(|m| m.get("normlab.network")).and_then(Value::as_str)
            else {
                return;
            };
            let Ok(mut net) = serde_json::from_str::<Value>(text) else { return };
            replace_node(&mut net, node, &pool[value.index(pool.len())]);
            obj["__metadata__"]["normlab.network"] = json!(net.to_string());
        }
        JsonMutation::RemoveTensor(i) if !names.is_empty() => {
            obj.remove(&names[i.index(names.len())]);
        }
        JsonMutation::RenameTensor(i, to) if !names.is_empty() => {
            if let Some(v) = obj.remove(&names[i.index(names.len())]) {
                obj.insert(NAMES[to.index(NAMES.len())].to_string(), v);
            }
        }
        JsonMutation::DuplicateTensor(i) if !names.is_empty() => {
            let v = obj[&names[i.index(names.len())]].clone();
            obj.insert("net.77.weight".into(), v);
        }
        JsonMutation::Meta(key, value) => {
            let key = KEYS[key.index(KEYS.len())];
            if let Some(meta) = obj.get_mut("__metadata__").and_then(Value::as_object_mut) {
                match value {
                    None => {
                        meta.remove(key);
                    }
                    Some(v) => {
                        let v = &pool[v.index(pool.len())];
                        meta.insert(key.into(), v.as_str().map(|s| json!(s)).unwrap_or_else(|| json!(v.to_string())));
                    }
                }
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
struct CheckpointCase {
    seed: Index,
    json: Vec<JsonMutation>,
    bytes: Vec<Mutation>,
    /// Draw the byte mutations' positions from the 8-byte length and the
    /// JSON header only (the data section only holds weights).
    in_header: bool,
}

/// Checkpoint seeds: the four models as `checkpoint::to_bytes` writes them
/// (initial weights), the two trained checkpoints, and the corpus.
fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for kind in ModelKind::ALL {
        let mut net = models::build(kind, &mut rng::seeded(1)).unwrap();
        seeds.push(checkpoint::to_bytes(&mut net, kind.name(), kind.config(), &[("epoch", "1".into())]).unwrap());
    }
    seeds.push(std::fs::read(&trained().bn).unwrap());
    seeds.push(std::fs::read(&trained().ln).unwrap());
    seeds.extend(corpus_seeds("checkpoint", true));
    seeds
}

#[test]
fn fuzz_checkpoint_loader() {
    let seeds = checkpoint_seeds();
    let parsed: Vec<Option<(Value, Vec<u8>)>> = seeds
        .iter()
        .map(|b| panic::catch_unwind(|| split_safetensors(b)).ok().filter(|(h, _)| h.is_object()))
        .collect();
    let pool = json_pool();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzz.safetensors");
    // the largest allocation of a valid load: the network's own buffers
    let valid = seeds
        .iter()
        .map(|b| {
            std::fs::write(&file, b).unwrap();
            largest_allocation(|| checkpoint::load(&file).map(|_| ())).1
        })
        .max()
        .unwrap();
    let bn = std::cell::RefCell::new(models::bn_lenet::<f32>(&mut rng::seeded(0)).unwrap());
    // errors that do not name the file, by kind (the invalid network
    // descriptions of the dedicated test): counted and printed, not failed
    let unnamed: std::cell::RefCell<BTreeMap<String, u64>> = Default::default();
    let run = |bytes: &[u8]| {
        std::fs::write(&file, bytes).unwrap();
        let info = checkpoint::info(&file);
        let load = checkpoint::load(&file);
        let into = checkpoint::load_into(&mut bn.borrow_mut(), &file);
        for e in [info.as_ref().err(), load.as_ref().err(), into.as_ref().err()].into_iter().flatten() {
            let m = e.to_string();
            if m.is_empty() {
                return Verdict::Wrong("an empty error message".into());
            }
            if !m.contains(s(&file)) {
                let kind: String = m.split(':').next().unwrap_or_default().chars().take(40).collect();
                *unnamed.borrow_mut().entry(kind).or_default() += 1;
            }
        }
        match load {
            Ok((mut net, _)) => {
                // what a loaded model must be able to do: predict
                net.eval();
                match net.forward(&Tensor::zeros(&[1, 1, 28, 28])) {
                    Ok(y) if y.shape() == [1, 10] => Verdict::Ok,
                    Ok(y) => Verdict::Wrong(format!("a loaded model outputs {:?}", y.shape())),
                    Err(e) => Verdict::Wrong(format!("a loaded model cannot predict: {e}")),
                }
            }
            Err(_) if info.is_ok() || into.is_ok() => Verdict::Ok,
            Err(_) => Verdict::Err,
        }
    };
    let strategy = (
        any::<Index>(),
        prop::collection::vec(json_mutation(), 0..3),
        prop::collection::vec(mutation(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(seed, json, bytes, in_header)| CheckpointCase { seed, json, bytes, in_header });
    fuzz(
        Target {
            name: "checkpoint",
            time_bound: Duration::from_secs(2),
            alloc_bound: &|b| valid.max(2 * b.len()) + (1 << 20),
            run: &run,
            describe: &|_| "checkpoint".into(),
        },
        strategy,
        |c: &CheckpointCase| {
            let i = c.seed.index(seeds.len());
            let mut b = match (&parsed[i], c.json.is_empty()) {
                (Some((header, data)), false) => {
                    let mut h = header.clone();
                    for m in &c.json {
                        mutate_header(&mut h, m, &pool);
                    }
                    safetensors_raw(&h, data)
                }
                _ => seeds[i].clone(),
            };
            let header_end = if b.len() >= 8 {
                (u64::from_le_bytes(b[..8].try_into().unwrap()) as usize).saturating_add(8).min(b.len())
            } else {
                b.len()
            };
            for m in &c.bytes {
                apply(&mut b, m, c.in_header.then_some(header_end));
            }
            b
        },
    );
    eprintln!("fuzz checkpoint: errors that do not name the file, by kind: {:?}", unnamed.borrow());
}
