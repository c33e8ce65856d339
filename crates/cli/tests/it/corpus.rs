//! The committed seed corpus of the mutation tests (`tests/corpus/`, see
//! the README there): present, each file under 50 KB and valid;
//! `NORMLAB_WRITE_CORPUS=1 cargo test --release -p normlab-cli --test corpus`
//! regenerates it.

use crate::common;

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use safetensors::tensor::SafeTensors;
use serde_json::json;

use normlab::data::idx;
use normlab::models::{self, ModelKind};
use normlab::rng;
use normlab::train::checkpoint;

use crate::fuzz;
use fuzz::{corpus, corpus_seeds};

use common::checkpoints::{f32_bytes, safetensors_raw, split_safetensors};
use common::images::{jpeg, load_image_like_predict, png_variants, test_images};
use common::subset;

/// The committed seed corpus: written by `NORMLAB_WRITE_CORPUS=1`, checked
/// otherwise (present, each file under 50 KB, and each one valid: the seeds
/// are good files, the mutations make them bad).
#[test]
fn corpus_seeds_are_small_and_valid() {
    if std::env::var_os("NORMLAB_WRITE_CORPUS").is_some() {
        write_corpus();
    }
    for kind in ["idx", "checkpoint", "image"] {
        let dir = corpus().join(kind);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let size = std::fs::metadata(&p).unwrap().len();
            assert!(size < 50_000, "{}: {size} bytes, seeds must stay under 50 KB", p.display());
            n += 1;
        }
        assert!(n >= 3, "{}: only {n} seeds", dir.display());
    }
    for b in corpus_seeds("idx", false) {
        assert!(idx::parse_images(&b, Path::new("seed")).is_ok() || idx::parse_labels(&b, Path::new("seed")).is_ok());
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, b) in corpus_seeds("checkpoint", true).iter().enumerate() {
        let p = dir.path().join(format!("{i}.safetensors"));
        std::fs::write(&p, b).unwrap();
        // normlab's checkpoints load; the foreign one is valid safetensors
        let normlab_made = SafeTensors::read_metadata(b).unwrap().1.metadata().is_some();
        assert_eq!(checkpoint::load(&p).is_ok(), normlab_made, "checkpoint seed {i}");
        assert!(SafeTensors::deserialize(b).is_ok());
    }
    for (i, b) in corpus_seeds("image", false).iter().enumerate() {
        let v = load_image_like_predict(b).unwrap_or_else(|e| panic!("image seed {i}: {e}"));
        assert_eq!(v.len(), 784);
    }
}

fn write_corpus() {
    let root = corpus();
    for kind in ["idx", "checkpoint", "image"] {
        std::fs::create_dir_all(root.join(kind)).unwrap();
    }
    let fm = normlab::data::load_dir(&subset()).expect("the subset loads");
    let put = |rel: &str, b: &[u8]| std::fs::write(root.join(rel), b).unwrap();
    let gz_best = |b: &[u8]| {
        // mtime 0, no name: the same bytes every time
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    // IDX: gzip as distributed, raw, and an odd shape
    put("idx/train-images-16.idx.gz", &gz_best(&idx::encode_images(&fm.train.images[..16 * 784], 16, 28, 28)));
    put("idx/train-labels-16.idx.gz", &gz_best(&idx::encode_labels(&fm.train.labels[..16])));
    put("idx/t10k-images-4.idx", &idx::encode_images(&fm.test.images[..4 * 784], 4, 28, 28));
    put("idx/t10k-labels-4.idx", &idx::encode_labels(&fm.test.labels[..4]));
    put("idx/images-3x7x5.idx", &idx::encode_images(&(0..105).map(|i| i as u8).collect::<Vec<_>>(), 3, 7, 5));
    put("idx/labels-empty.idx", &idx::encode_labels(&[]));
    // checkpoints: a full normlab header with weights set to zero (the
    // running variances to one) compresses to a few kilobytes
    for kind in [ModelKind::BnLenet, ModelKind::LnLenet, ModelKind::Lenet] {
        let mut net = models::build(kind, &mut rng::seeded(0)).unwrap();
        let bytes = checkpoint::to_bytes(&mut net, kind.name(), kind.config(), &[("epoch", "1".into())]).unwrap();
        let (header, mut data) = split_safetensors(&bytes);
        data.iter_mut().for_each(|b| *b = 0);
        for (name, t) in header.as_object().unwrap() {
            if name.ends_with("running_var") {
                let o = &t["data_offsets"];
                let (a, z) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
                data[a..z].copy_from_slice(&f32_bytes(&vec![1.0; (z - a) / 4]));
            }
        }
        put(&format!("checkpoint/{}-zeros.safetensors.gz", kind.name()), &gz_best(&safetensors_raw(&header, &data)));
    }
    // a safetensors file normlab did not write: one tensor, no metadata
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let header = json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}});
    put("checkpoint/foreign.safetensors", &safetensors_raw(&header, &data));
    // images: real Fashion-MNIST images in the flavours predict must take
    let imgs = test_images(2);
    for (label, bytes, _) in png_variants(&imgs[0]) {
        if ["grey8", "grey16", "palette8-trns", "rgba8", "palette4"].contains(&label) {
            put(&format!("image/{label}.png"), &bytes);
        }
    }
    put("image/grey.jpg", &jpeg(&imgs[1], 28, 28, image::ExtendedColorType::L8));
    let rgb: Vec<u8> = imgs[1].iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
    put("image/rgb.jpg", &jpeg(&rgb, 28, 28, image::ExtendedColorType::Rgb8));
}
