//! Shared helpers for the integration tests: PyTorch fixtures and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use normlab::layers::{Layer, StateMut};
use normlab::models::Sequential;
use normlab::{Real, Tensor};

pub struct Fixture {
    pub name: String,
    floats: HashMap<String, (Vec<usize>, Vec<f64>)>,
    ints: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

pub fn fixture(name: &str) -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors fixture");
    let (mut floats, mut ints) = (HashMap::new(), HashMap::new());
    for (key, view) in st.tensors() {
        let shape = view.shape().to_vec();
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let v = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
                floats.insert(key, (shape, v));
            }
            safetensors::Dtype::I64 => {
                let v = view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                ints.insert(key, (shape, v));
            }
            other => panic!("{name}: unexpected dtype {other:?} for {key}"),
        }
    }
    Fixture { name: name.into(), floats, ints }
}

impl Fixture {
    pub fn t<T: Real>(&self, key: &str) -> Tensor<T> {
        let (shape, v) = self.floats.get(key).unwrap_or_else(|| panic!("{}: no tensor {key}", self.name));
        Tensor::from_f64(shape, v).unwrap()
    }
    pub fn f(&self, key: &str) -> Vec<f64> {
        self.floats.get(key).unwrap_or_else(|| panic!("{}: no tensor {key}", self.name)).1.clone()
    }
    pub fn i(&self, key: &str) -> Vec<i64> {
        self.ints.get(key).unwrap_or_else(|| panic!("{}: no int tensor {key}", self.name)).1.clone()
    }
    pub fn has(&self, key: &str) -> bool {
        self.floats.contains_key(key) || self.ints.contains_key(key)
    }
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut k: Vec<String> =
            self.floats.keys().chain(self.ints.keys()).filter(|k| k.starts_with(prefix)).cloned().collect();
        k.sort();
        k
    }
}

/// Largest `|got - want| / max(1, |want|)`; panics above `tol`. Prints the
/// figure so the test log records how close each comparison is.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g} is not finite");
        let e = (g - w).abs() / w.abs().max(1.0);
        if e > worst {
            worst = e;
        }
    }
    assert!(worst <= tol, "{what}: max error {worst:.3e} > {tol:e}");
    eprintln!("  {what:<48} max err {worst:.2e}");
    worst
}

pub fn close_t<T: Real>(what: &str, got: &Tensor<T>, want: &Tensor<f64>, tol: f64) -> f64 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_close(what, &got.to_f64_vec(), want.data(), tol)
}

/// Sets a parameter or buffer of a layer by its PyTorch name.
pub fn set_state<T: Real>(layer: &mut dyn Layer<T>, name: &str, value: &Tensor<T>) {
    for (n, s) in layer.state_mut() {
        if n == name {
            let target = match s {
                StateMut::Param { value, .. } => value,
                StateMut::Buffer(b) => b,
                StateMut::Count(_) => panic!("{name} is a counter"),
            };
            assert_eq!(target.shape(), value.shape(), "shape of {name}");
            target.copy_from(value);
            return;
        }
    }
    panic!("layer has no state named {name}");
}

pub fn get_state<T: Real>(layer: &mut dyn Layer<T>, name: &str) -> Tensor<T> {
    for (n, s) in layer.state_mut() {
        if n == name {
            return match s {
                StateMut::Param { value, .. } => value.clone(),
                StateMut::Buffer(b) => b.clone(),
                StateMut::Count(c) => Tensor::from_f64(&[], &[*c as f64]).unwrap(),
            };
        }
    }
    panic!("layer has no state named {name}");
}

pub fn get_grad<T: Real>(layer: &mut dyn Layer<T>, name: &str) -> Tensor<T> {
    for (n, s) in layer.state_mut() {
        if n == name {
            if let StateMut::Param { grad, .. } = s {
                return grad.clone();
            }
        }
    }
    panic!("layer has no parameter named {name}");
}

/// Sets every state entry of `net` from the fixture's `prefix<name>` tensors
/// (all of them: as many as the net has).
pub fn load_state(net: &mut Sequential<f32>, f: &Fixture, prefix: &str) {
    let mut n = 0;
    for (name, s) in net.state_mut() {
        let key = format!("{prefix}{name}");
        match s {
            StateMut::Param { value, .. } | StateMut::Buffer(value) => value.copy_from(&f.t(&key)),
            StateMut::Count(c) => *c = f.i(&key)[0],
        }
        n += 1;
    }
    assert_eq!(n, f.keys_with_prefix(prefix).len(), "model and fixture have the same state entries");
}

/// Compares every state entry of `net` with the fixture's `prefix<name>`.
pub fn compare_state(net: &mut Sequential<f32>, f: &Fixture, prefix: &str, tag: &str, tol: f64) {
    for (name, s) in net.state_mut() {
        let key = format!("{prefix}{name}");
        match s {
            StateMut::Param { value, .. } | StateMut::Buffer(value) => {
                close_t(&format!("{tag} {key}"), value, &f.t(&key), tol);
            }
            StateMut::Count(c) => assert_eq!(*c, f.i(&key)[0], "{tag} {key}"),
        }
    }
}
