//! ONNX export of a built network (`normlab export --onnx`).
//!
//! The graph computes what the network computes in eval mode: one input
//! `images`, `(batch, C, H, W)` with a dynamic batch dimension, one output
//! `logits`, `(batch, classes)`, opset 17 (IR version 8). Each layer becomes
//! the standard operator PyTorch's exporter would give it:
//!
//! | normlab layer | ONNX |
//! |---|---|
//! | Conv2d | `Conv` (kernel, stride, symmetric pads) |
//! | Linear | `Gemm` with `transB = 1` |
//! | BatchNorm (full, running statistics) | `BatchNormalization` |
//! | BatchNorm centring- or scaling-only | `Mul` and `Add` by its eval-mode scale and shift |
//! | LayerNorm | `LayerNormalization` over the trailing dimensions |
//! | ReLU, Sigmoid, Tanh, LeakyReLU | `Relu`, `Sigmoid`, `Tanh`, `LeakyRelu` |
//! | SiLU, GELU | `x·Sigmoid(x)`; `x·(1 + Erf(x/√2))/2` or its tanh form (GELU is an operator only from opset 20) |
//! | MaxPool2d, AvgPool2d | `MaxPool`, `AveragePool` |
//! | Flatten | `Flatten` (axis 1) |
//! | Dropout | nothing (the identity in eval mode) |
//! | Residual | its body and shortcut, then `Add` |
//!
//! The network must be built unfused (`Sequential::fusion(false)`): a fused
//! layer does not say what it is made of. Anything else (group norm, RMS
//! norm, instance norm, frozen or ghost batch norm, batch renormalization,
//! a layer of one's own, batch norm without running statistics) is refused
//! with its index and name.

pub mod proto;

use std::any::Any;

use prost::Message;

use normlab::layers::{
    AvgPool2d, BatchNorm, BnParts, Conv2d, Dropout, Flatten, GELUFn, Layer, LayerNorm, LeakyReLUFn, Linear, MaxPool2d,
    Pointwise, ReLU, SiLUFn, Sigmoid, TanhFn,
};
use normlab::models::{Residual, Sequential};
use normlab::{Error, Result, Tensor};

use proto::tensor_shape_proto::{dimension, Dimension};
use proto::{
    type_proto, AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The operator set the graph is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version 8, the one that goes with opset 17.
const IR_VERSION: i64 = 8;
/// The graph's input: a batch of images.
pub const INPUT: &str = "images";
/// The graph's output: one row of class scores per image.
pub const OUTPUT: &str = "logits";
/// The name of the dynamic batch dimension.
pub const BATCH: &str = "batch";

/// The ONNX model (serialized `ModelProto`) of `net`, built unfused, with
/// `metadata` stored as the model's metadata properties.
pub fn export(net: &Sequential<f32>, name: &str, metadata: &[(&str, String)]) -> Result<Vec<u8>> {
    let input_shape = net.example_shape().to_vec();
    let output_shape = net.output_shape().to_vec();
    if input_shape.is_empty() || output_shape.is_empty() {
        return Err(Error::config("model", "build the network before exporting it"));
    }
    let mut graph = Graph::default();
    let last = graph.sequential(net, INPUT, "net")?;
    // the output gets its name from a node of its own (Identity is free in
    // ONNX Runtime): the last layer may be one without a node (dropout)
    graph.node("Identity", "output", &[&last], OUTPUT, vec![]);
    let value = |name: &str, shape: &[usize]| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: proto::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(Dimension { value: Some(dimension::Value::DimParam(BATCH.into())) })
                        .chain(shape.iter().map(|&d| Dimension { value: Some(dimension::Value::DimValue(d as i64)) }))
                        .collect(),
                }),
            })),
        }),
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "normlab".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{name}, exported by normlab in eval mode"),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: name.into(),
            initializer: graph.initializers,
            doc_string: String::new(),
            input: vec![value(INPUT, &input_shape)],
            output: vec![value(OUTPUT, &output_shape)],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: (*k).into(), value: v.clone() })
            .collect(),
    };
    Ok(model.encode_to_vec())
}

/// The nodes and weights written so far.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.iter().map(|&v| v as i64).collect(),
        r#type: AttributeType::Ints as i32,
        ..Default::default()
    }
}
fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: Some(value), r#type: AttributeType::Int as i32, ..Default::default() }
}
fn float(name: &str, value: f64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f: Some(value as f32),
        r#type: AttributeType::Float as i32,
        ..Default::default()
    }
}

impl Graph {
    /// Adds `op(inputs) -> output` named `name`; returns `output`.
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: name.into(),
            op_type: op.into(),
            attribute,
        });
        output.into()
    }

    /// Adds the constant `name` of `shape`; returns its name.
    fn constant(&mut self, name: &str, shape: &[usize], values: impl IntoIterator<Item = f32>) -> String {
        let raw_data: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
        debug_assert_eq!(raw_data.len(), 4 * shape.iter().product::<usize>());
        self.initializers.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: proto::FLOAT,
            name: name.into(),
            raw_data,
        });
        name.into()
    }

    fn tensor(&mut self, name: &str, t: &Tensor<f32>) -> String {
        self.constant(name, t.shape(), t.data().iter().copied())
    }

    /// A scalar constant, for the arithmetic of SiLU and GELU.
    fn scalar(&mut self, name: &str, v: f64) -> String {
        self.constant(name, &[], [v as f32])
    }

    /// The nodes of `net`'s layers applied to `input`, their values named
    /// after PyTorch's modules (`net.3`, `net.4.body.0`); returns the name
    /// of the last output.
    fn sequential(&mut self, net: &Sequential<f32>, input: &str, prefix: &str) -> Result<String> {
        let mut x = input.to_string();
        for (layer, slot) in net.layers().iter().zip(net.slots()) {
            let name = format!("{prefix}.{slot}");
            x = self.layer(&**layer, &x, &name).map_err(|e| match e {
                Error::Config { message, .. } => Error::config(format!("{name} ({})", layer.kind()), message),
                other => other,
            })?;
        }
        Ok(x)
    }

    /// The nodes of one layer applied to `x`; returns the output's name.
    fn layer(&mut self, layer: &dyn Layer<f32>, x: &str, name: &str) -> Result<String> {
        let any = layer as &dyn Any;
        let out = name.to_string();
        if let Some(conv) = any.downcast_ref::<Conv2d<f32>>() {
            let g = conv.geometry().ok_or_else(|| Error::config("model", "not built"))?;
            let w = self.tensor(&format!("{name}.weight"), conv.weight());
            let mut inputs = vec![x.to_string(), w];
            if let Some(b) = conv.bias_values() {
                inputs.push(self.tensor(&format!("{name}.bias"), b));
            }
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let p = g.padding;
            let attrs =
                vec![ints("kernel_shape", &[g.kernel; 2]), ints("strides", &[g.stride; 2]), ints("pads", &[p; 4])];
            return Ok(self.node("Conv", name, &inputs, &out, attrs));
        }
        if let Some(linear) = any.downcast_ref::<Linear<f32>>() {
            let w = self.tensor(&format!("{name}.weight"), linear.weight());
            let mut inputs = vec![x.to_string(), w];
            if let Some(b) = linear.bias_values() {
                inputs.push(self.tensor(&format!("{name}.bias"), b));
            }
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            return Ok(self.node("Gemm", name, &inputs, &out, vec![int("transB", 1)]));
        }
        if let Some(bn) = any.downcast_ref::<BatchNorm<f32>>() {
            return self.batch_norm(bn, x, name);
        }
        if let Some(ln) = any.downcast_ref::<LayerNorm<f32>>() {
            let dims = ln.normalized_dims();
            if dims == 0 {
                return Err(Error::config("model", "not built"));
            }
            let (scale, bias) = match ln.affine_params() {
                Some((g, b)) => (self.tensor(&format!("{name}.weight"), g), self.tensor(&format!("{name}.bias"), b)),
                None => {
                    return Err(Error::config(
                        "model",
                        "layer norm without elementwise affine parameters is not exported yet; train with them",
                    ))
                }
            };
            let attrs = vec![int("axis", -(dims as i64)), float("epsilon", ln.epsilon())];
            return Ok(self.node("LayerNormalization", name, &[x, &scale, &bias], &out, attrs));
        }
        if any.is::<ReLU<f32>>() {
            return Ok(self.node("Relu", name, &[x], &out, vec![]));
        }
        if any.is::<Sigmoid<f32>>() {
            return Ok(self.node("Sigmoid", name, &[x], &out, vec![]));
        }
        if any.is::<Pointwise<f32, TanhFn>>() {
            return Ok(self.node("Tanh", name, &[x], &out, vec![]));
        }
        if let Some(leaky) = any.downcast_ref::<Pointwise<f32, LeakyReLUFn>>() {
            let alpha = float("alpha", leaky.function().negative_slope);
            return Ok(self.node("LeakyRelu", name, &[x], &out, vec![alpha]));
        }
        if any.is::<Pointwise<f32, SiLUFn>>() {
            let s = self.node("Sigmoid", &format!("{name}.sigmoid"), &[x], &format!("{name}.sigmoid"), vec![]);
            return Ok(self.node("Mul", name, &[x, &s], &out, vec![]));
        }
        if let Some(gelu) = any.downcast_ref::<Pointwise<f32, GELUFn>>() {
            return Ok(self.gelu(gelu.function().tanh, x, name));
        }
        if let Some(pool) = any.downcast_ref::<MaxPool2d<f32>>() {
            let (k, s) = pool.window();
            return Ok(self.node(
                "MaxPool",
                name,
                &[x],
                &out,
                vec![ints("kernel_shape", &[k; 2]), ints("strides", &[s; 2])],
            ));
        }
        if let Some(pool) = any.downcast_ref::<AvgPool2d<f32>>() {
            let (k, s) = pool.window();
            let attrs = vec![ints("kernel_shape", &[k; 2]), ints("strides", &[s; 2])];
            return Ok(self.node("AveragePool", name, &[x], &out, attrs));
        }
        if any.is::<Flatten<f32>>() {
            return Ok(self.node("Flatten", name, &[x], &out, vec![int("axis", 1)]));
        }
        if any.is::<Dropout<f32>>() {
            return Ok(x.to_string());
        }
        if let Some(block) = any.downcast_ref::<Residual<f32>>() {
            let body = self.sequential(block.body(), x, &format!("{name}.body"))?;
            let shortcut = match block.shortcut() {
                Some(s) => self.sequential(s, x, &format!("{name}.shortcut"))?,
                None => x.to_string(),
            };
            return Ok(self.node("Add", name, &[&body, &shortcut], &out, vec![]));
        }
        Err(Error::config(
            "model",
            "normlab has no ONNX export for this kind of layer (see the table in crates/cli/src/onnx/mod.rs: RMS, instance, \
             group, ghost and frozen batch norm and batch renormalization are not in it); remove it or replace it, \
             or, for a fused block, build the network with .fusion(false)",
        ))
    }

    fn batch_norm(&mut self, bn: &BatchNorm<f32>, x: &str, name: &str) -> Result<String> {
        let (scale, shift) = bn.eval_affine().ok_or_else(|| {
            Error::config(
                "model",
                "batch norm without running statistics depends on the batch in eval mode; cannot export it",
            )
        })?;
        let c = bn.num_features();
        let out = name.to_string();
        let (Some(mean), Some(var)) = (bn.running_mean(), bn.running_var()) else {
            unreachable!("eval_affine is Some only with running statistics")
        };
        if bn.config().parts == BnParts::Full {
            let gamma = match bn.gamma() {
                Some(g) => self.tensor(&format!("{name}.weight"), g),
                None => self.constant(&format!("{name}.weight"), &[c], vec![1.0; c]),
            };
            let beta = match bn.beta() {
                Some(b) => self.tensor(&format!("{name}.bias"), b),
                None => self.constant(&format!("{name}.bias"), &[c], vec![0.0; c]),
            };
            let mean = self.tensor(&format!("{name}.running_mean"), mean);
            let var = self.tensor(&format!("{name}.running_var"), var);
            let attrs = vec![float("epsilon", bn.config().eps)];
            return Ok(self.node("BatchNormalization", name, &[x, &gamma, &beta, &mean, &var], &out, attrs));
        }
        // centring- or scaling-only: y = scale·x + shift per channel,
        // broadcast over the spatial dimensions that follow the channels
        let spatial = bn_spatial_rank(bn);
        let shape: Vec<usize> = std::iter::once(c).chain(std::iter::repeat_n(1, spatial)).collect();
        let s = self.constant(&format!("{name}.scale"), &shape, scale.iter().map(|&v| v as f32));
        let t = self.constant(&format!("{name}.shift"), &shape, shift.iter().map(|&v| v as f32));
        let scaled = self.node("Mul", &format!("{name}.mul"), &[x, &s], &format!("{name}.mul"), vec![]);
        Ok(self.node("Add", name, &[&scaled, &t], &out, vec![]))
    }

    /// GELU from opset-17 operators: `x·(1 + erf(x/√2))/2`, or with `tanh`
    /// `x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))/2`.
    fn gelu(&mut self, tanh: bool, x: &str, name: &str) -> String {
        let half = self.scalar(&format!("{name}.half"), 0.5);
        let one = self.scalar(&format!("{name}.one"), 1.0);
        let v = |s: &str| format!("{name}.{s}");
        let inner = if tanh {
            let k = self.scalar(&v("sqrt_2_over_pi"), (2.0 / std::f64::consts::PI).sqrt());
            let c = self.scalar(&v("cubic"), 0.044715);
            let x2 = self.node("Mul", &v("x2"), &[x, x], &v("x2"), vec![]);
            let x3 = self.node("Mul", &v("x3"), &[&x2, x], &v("x3"), vec![]);
            let cx3 = self.node("Mul", &v("cx3"), &[&x3, &c], &v("cx3"), vec![]);
            let sum = self.node("Add", &v("sum"), &[x, &cx3], &v("sum"), vec![]);
            let u = self.node("Mul", &v("u"), &[&sum, &k], &v("u"), vec![]);
            self.node("Tanh", &v("tanh"), &[&u], &v("tanh"), vec![])
        } else {
            let r = self.scalar(&v("inv_sqrt2"), std::f64::consts::FRAC_1_SQRT_2);
            let scaled = self.node("Mul", &v("scaled"), &[x, &r], &v("scaled"), vec![]);
            self.node("Erf", &v("erf"), &[&scaled], &v("erf"), vec![])
        };
        let plus = self.node("Add", &v("plus_one"), &[&inner, &one], &v("plus_one"), vec![]);
        let hx = self.node("Mul", &v("half_x"), &[x, &half], &v("half_x"), vec![]);
        self.node("Mul", name, &[&hx, &plus], name, vec![])
    }
}

/// The number of dimensions after the channels of a built batch norm's
/// input (0 for `BatchNorm1d` on `(N, C)`, 2 for `BatchNorm2d`).
fn bn_spatial_rank(bn: &BatchNorm<f32>) -> usize {
    bn.example_shape().len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use normlab::layers::{
        BatchRenorm, Conv2d, Flatten, FrozenBatchNorm, GhostBatchNorm, InstanceNorm, Layer, Linear, RenormSchedule,
        RmsNorm,
    };
    use normlab::models::Sequential;

    /// A layer the exporter has no operator for is refused with its index,
    /// its name and the way out, not a panic.
    #[test]
    fn layers_without_an_onnx_operator_are_refused_by_name() {
        let norms: Vec<(Box<dyn Layer<f32>>, &str)> = vec![
            (Box::new(RmsNorm::per_example()), "RMSNorm"),
            (Box::new(InstanceNorm::new()), "InstanceNorm2d"),
            (Box::new(FrozenBatchNorm::new()), "FrozenBatchNorm2d"),
            (Box::new(GhostBatchNorm::new(4)), "GhostBatchNorm"),
            (Box::new(BatchRenorm::new(RenormSchedule::paper())), "BatchRenorm"),
        ];
        for (norm, kind) in norms {
            let mut net = Sequential::<f32>::new().push(Conv2d::new(2, 3)).fusion(false);
            net.push_boxed(norm);
            let mut net = net.push(Flatten::new()).push(Linear::new(3));
            net.build(&[1, 6, 6], &mut normlab::rng::seeded(0)).unwrap();
            let err = super::export(&net, "m", &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("({kind})")) && err.contains("no ONNX export"), "{kind}: {err}");
        }
    }
}
