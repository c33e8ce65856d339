//! Networks described as data (`models::spec`): model files parsed and
//! checked with the line, layer and field named; built into a Sequential
//! with PyTorch's state names; the LeNets as specs; checkpoints that carry
//! the description and rebuild any network, old files included.

use std::io::Read;
use std::path::{Path, PathBuf};

use normlab::models::{self, Architecture, LayerSpec, ModelKind, ModelSpec};
use normlab::train::checkpoint;
use normlab::{rng, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vgg_file() -> PathBuf {
    repo().join("examples/models/vgg-small.toml")
}

fn input(shape: &[usize], seed: u64) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    let mut r = rng::seeded(seed);
    let v = (0..n).map(|_| rand_value(&mut r)).collect();
    Tensor::from_vec(shape, v).unwrap()
}

fn rand_value(r: &mut normlab::rng::Rng) -> f32 {
    use rand::Rng as _;
    r.gen_range(-1.0..1.0)
}

#[test]
fn the_example_model_file_builds_with_pytorch_state_names() {
    let spec = ModelSpec::from_toml_file(&vgg_file(), Some(&[1, 28, 28])).unwrap();
    assert_eq!(spec.layers.len(), 13);
    assert_eq!(spec.check(None).unwrap(), vec![10]);
    let mut net = spec.build::<f32>(None, &mut rng::seeded(0)).unwrap();
    let names = net.state_names();
    // conv without bias, then BN's five entries, at the list's indices
    assert_eq!(
        names[..6],
        [
            "net.0.weight",
            "net.1.weight",
            "net.1.bias",
            "net.1.running_mean",
            "net.1.running_var",
            "net.1.num_batches_tracked"
        ]
    );
    assert!(names.contains(&"net.12.weight".to_string()) && names.contains(&"net.12.bias".to_string()));
    let y = net.forward(&input(&[2, 1, 28, 28], 1)).unwrap();
    assert_eq!(y.shape(), &[2, 10]);
    // TOML and JSON round trips give the same description
    assert_eq!(ModelSpec::from_toml_str(&spec.to_toml()).unwrap(), spec);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
}

/// The built-in models are specs too: same names, same initial weights as
/// the library's constructors, and their specs survive TOML.
#[test]
fn the_lenets_are_model_specs() {
    for kind in ModelKind::ALL {
        let spec = kind.config().spec();
        let text = spec.to_toml();
        let back = ModelSpec::from_toml_str(&text).unwrap();
        assert_eq!(back, spec, "{}", kind.name());
        let mut a = models::build::<f32>(kind, &mut rng::seeded(3)).unwrap();
        let mut b = back.build::<f32>(None, &mut rng::seeded(3)).unwrap();
        assert_eq!(a.state_names(), b.state_names(), "{}", kind.name());
        let x = input(&[3, 1, 28, 28], 4);
        assert_eq!(a.forward(&x).unwrap().data(), b.forward(&x).unwrap().data(), "{}", kind.name());
    }
    let names = models::bn_lenet::<f32>(&mut rng::seeded(0)).unwrap().state_names();
    assert_eq!(names[0..3], ["net.0.weight", "net.0.bias", "net.1.weight"]);
    assert_eq!(names.last().unwrap(), "net.15.bias");
}

#[test]
fn a_residual_block_builds_with_body_and_shortcut_names() {
    let text = r#"
input = [3, 8, 8]
[[layers]]
type = "residual"
  [[layers.body]]
  type = "conv2d"
  out_channels = 8
  kernel = 3
  stride = 2
  padding = 1
  [[layers.body]]
  type = "batch_norm"
  momentum = "none"
  [[layers.shortcut]]
  type = "conv2d"
  out_channels = 8
  kernel = 1
  stride = 2
[[layers]]
type = "gelu"
approximate = "tanh"
[[layers]]
type = "avg_pool"
kernel = 4
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
out_features = 4
"#;
    let spec = ModelSpec::from_toml_str(text).unwrap();
    let LayerSpec::Residual { body, .. } = &spec.layers[0] else { panic!("not a residual block") };
    assert!(matches!(body[1], LayerSpec::BatchNorm { momentum: None, .. }));
    let mut net = spec.build::<f32>(None, &mut rng::seeded(0)).unwrap();
    let names = net.state_names();
    assert!(names.contains(&"net.0.body.0.weight".to_string()), "{names:?}");
    assert!(names.contains(&"net.0.shortcut.0.bias".to_string()), "{names:?}");
    assert_eq!(net.forward(&input(&[2, 3, 8, 8], 2)).unwrap().shape(), &[2, 4]);
}

/// Bad files: one message naming the file, the line, the layer and the field.
#[test]
fn bad_model_files_name_the_line_layer_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let conv = |extra: &str| format!("[[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 3\n{extra}");
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        ("[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"conv3d\"\n".into(), "unknown layer", vec!["line 4", "conv3d", "conv2d"]),
        (format!("[[layers]]\ntype = \"relu\"\n{}", conv("").replace("out_channels = 4", "out_channels = 0")), "0 channels", vec!["line 3", "layers[1] (conv2d)", "out_channels", "at least 1"]),
        (conv("").replace("kernel = 3", "kernel = 29"), "kernel larger than input", vec!["line 1", "layers[0] (conv2d)", "field kernel", "28x28"]),
        (format!("[[layers]]\ntype = \"flatten\"\n{}", conv("")), "impossible shape", vec!["line 3", "layers[1] (conv2d)", "[C, H, W]", "[784]"]),
        ("[[layers]]\ntype = \"linear\"\nout_features = 10\n".into(), "linear before flatten", vec!["line 1", "layers[0] (linear)", "flatten"]),
        (conv("kernal = 3\n"), "misspelt field", vec!["line 1", "layers[0] (conv2d)", "kernal"]),
        (conv("stride = -1\n"), "negative stride", vec!["line 1", "layers[0] (conv2d)", "field stride"]),
        (format!("{}[[layers]]\ntype = \"batch_norm\"\nmomentum = 1.5\n", conv("")), "momentum out of range", vec!["line 5", "layers[1] (batch_norm)", "momentum", "NEW"]),
        (format!("{}[[layers]]\ntype = \"group_norm\"\nnum_groups = 3\n", conv("")), "groups", vec!["line 5", "num_groups", "4 channels"]),
        ("input = [1, 28, 28]\nlayers = []\n".into(), "no layers", vec!["layers", "at least one"]),
        ("input = [3, 28, 28]\n[[layers]]\ntype = \"relu\"\n".into(), "input disagrees with the data", vec!["input", "[3, 28, 28]", "[1, 28, 28]"]),
        ("[[layers]]\ntype = \"conv2d\"\nout_channels = 4000000\nkernel = 28\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 4000000\n".into(), "a lying size", vec!["layers[0] (conv2d)", "learnable values"]),
    ];
    for (i, (text, what, wants)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = ModelSpec::from_toml_file(&path, Some(&[1, 28, 28])).expect_err(what).to_string();
        println!("{what}: {err}");
        assert!(!err.contains('\n'), "{what}: one line, got {err}");
        assert!(err.contains(&format!("bad{i}.toml")), "{what}: no file name in {err}");
        for want in wants {
            assert!(err.contains(want), "{what}: '{want}' not in: {err}");
        }
    }
}

#[test]
fn a_checkpoint_of_a_model_file_rebuilds_the_network() {
    let spec = ModelSpec::from_toml_file(&vgg_file(), None).unwrap();
    let mut net = spec.build::<f32>(None, &mut rng::seeded(5)).unwrap();
    // a few training-mode passes move the running statistics off 0 and 1
    for s in 0..2 {
        net.forward(&input(&[4, 1, 28, 28], s)).unwrap();
    }
    net.eval();
    let x = input(&[3, 1, 28, 28], 9);
    let want = net.forward(&x).unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    checkpoint::save(&mut net, "vgg-small", &spec, &[("epoch", "1".into())], &path).unwrap();
    let (mut back, info) = checkpoint::load(&path).unwrap();
    assert_eq!(info.model, "vgg-small");
    assert_eq!(info.network, Architecture::Spec(spec.clone()));
    assert_eq!(info.input, [1, 28, 28]);
    back.eval();
    assert_eq!(back.forward(&x).unwrap().data(), want.data());
    // the description says which network: a spec of another shape is refused by name
    let mut other = ModelSpec::from_toml_str(
        "input = [1, 28, 28]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 10\n",
    )
    .unwrap()
    .build::<f32>(None, &mut rng::seeded(0))
    .unwrap();
    let err = checkpoint::load_into(&mut other, &path).unwrap_err().to_string();
    assert!(err.contains("net.1.weight") || err.contains("net.0.weight"), "{err}");
}

/// Files written before model files existed (only `normlab.network`, a
/// LeNetConfig) still load, as the LeNet they describe.
#[test]
fn old_lenet_checkpoints_still_load() {
    let dir = tempfile::tempdir().unwrap();
    for (file, kind) in [
        ("bn-lenet-zeros", ModelKind::BnLenet),
        ("ln-lenet-zeros", ModelKind::LnLenet),
        ("lenet-zeros", ModelKind::Lenet),
    ] {
        let gz = std::fs::read(repo().join(format!("tests/corpus/checkpoint/{file}.safetensors.gz"))).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut bytes).unwrap();
        let text = String::from_utf8_lossy(&bytes[..2000]).to_string();
        assert!(!text.contains(checkpoint::META_SPEC), "{file} is not an old file any more");
        let path = dir.path().join(format!("{file}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        let (mut net, info) = checkpoint::load(&path).unwrap();
        assert_eq!(info.network, Architecture::LeNet(kind.config()));
        assert_eq!(net.state_names(), models::build::<f32>(kind, &mut rng::seeded(0)).unwrap().state_names());
        // saved again, the file gains the spec and loads the same
        let again = dir.path().join(format!("{file}-new.safetensors"));
        checkpoint::save(&mut net, kind.name(), &info.network, &[], &again).unwrap();
        let meta = checkpoint::info(&again).unwrap().metadata;
        let spec: ModelSpec = serde_json::from_str(&meta[checkpoint::META_SPEC]).unwrap();
        assert_eq!(spec, kind.config().spec());
    }
}

/// The normalizations of issue 18 in a model file: parsed with their
/// defaults, checked, built with PyTorch's state names (torchvision's for
/// the frozen BN), saved and loaded, and bad values refused by field.
#[test]
fn the_user_normalizations_build_save_and_load_from_a_model_file() {
    let text = "input = [1, 12, 12]
[[layers]]
type = \"conv2d\"
out_channels = 4
kernel = 3
[[layers]]
type = \"instance_norm\"
affine = true
track_running_stats = true
[[layers]]
type = \"frozen_batch_norm\"
[[layers]]
type = \"ghost_batch_norm\"
virtual_batch = 2
[[layers]]
type = \"batch_renorm\"
warmup_steps = 1
rmax_steps = 3
dmax_steps = 2
[[layers]]
type = \"rms_norm\"
normalized_dims = 2
[[layers]]
type = \"flatten\"
[[layers]]
type = \"linear\"
out_features = 3
";
    let spec = ModelSpec::from_toml_str(text).unwrap();
    assert!(matches!(spec.layers[4], LayerSpec::BatchRenorm { rmax, dmax, .. } if rmax == 3.0 && dmax == 5.0));
    assert!(Architecture::Spec(spec.clone()).has_batch_norm(), "ghost BN and renorm need batches of 2");
    assert_eq!(ModelSpec::from_toml_str(&spec.to_toml()).unwrap(), spec);
    let mut net = spec.build::<f32>(None, &mut rng::seeded(1)).unwrap();
    let names = net.state_names();
    for want in [
        "net.1.weight",
        "net.1.running_mean",
        "net.1.num_batches_tracked",
        "net.2.running_var",
        "net.3.num_batches_tracked",
        "net.4.running_mean",
        "net.5.weight",
    ] {
        assert!(names.contains(&want.to_string()), "{want} in {names:?}");
    }
    assert!(!names.contains(&"net.2.num_batches_tracked".to_string()), "FrozenBatchNorm2d has none");
    assert!(!names.contains(&"net.5.bias".to_string()), "RMSNorm has no bias");
    let kinds: Vec<String> = net.layers().iter().map(|l| l.kind()).collect();
    assert_eq!(kinds[1..6], ["InstanceNorm2d", "FrozenBatchNorm2d", "GhostBatchNorm", "BatchRenorm", "RMSNorm"]);
    for s in 0..4 {
        net.forward(&input(&[4, 1, 12, 12], s)).unwrap();
    }
    net.eval();
    let x = input(&[3, 1, 12, 12], 9);
    let want = net.forward(&x).unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    checkpoint::save(&mut net, "norms", &spec, &[], &path).unwrap();
    let (mut back, info) = checkpoint::load(&path).unwrap();
    assert_eq!(info.network, Architecture::Spec(spec.clone()));
    back.eval();
    assert_eq!(back.forward(&x).unwrap().data(), want.data(), "running statistics and step counts come back");

    for (bad, field) in [
        ("type = \"ghost_batch_norm\"\nvirtual_batch = 0", "virtual_batch"),
        ("type = \"batch_renorm\"\nrmax = 0.5", "rmax"),
        ("type = \"instance_norm\"\nmomentum = 2.0", "momentum"),
        ("type = \"rms_norm\"\neps = -1.0", "eps"),
    ] {
        let file = format!("input = [1, 4, 4]\n[[layers]]\n{bad}\n");
        let err = ModelSpec::from_toml_str(&file).unwrap_err().to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
    let err = ModelSpec::from_toml_str(
        "input = [1, 4, 4]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"instance_norm\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("layers[1] (instance_norm)") && err.contains("before the flatten"), "{err}");
}
