//! The model's tensors under torchvision's names, for a PyTorch reference of the same network.

use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use super::ResNet;

/// One tensor of a model under its torchvision name (`layer1.0.conv1.weight`…), row-major f32.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

fn named<const D: usize>(name: String, tensor: Tensor<D>) -> NamedTensor {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    NamedTensor {
        name,
        shape,
        values,
    }
}

fn named_bn(prefix: &str, bn: &BatchNorm, out: &mut Vec<NamedTensor>) {
    out.push(named(format!("{prefix}.weight"), bn.gamma.val()));
    out.push(named(format!("{prefix}.bias"), bn.beta.val()));
    out.push(named(
        format!("{prefix}.running_mean"),
        bn.running_mean.value(),
    ));
    out.push(named(
        format!("{prefix}.running_var"),
        bn.running_var.value(),
    ));
}

impl ResNet {
    /// Every parameter and BatchNorm statistic under the names torchvision's ResNet uses
    /// (`conv1`, `bn1`, `layerN.i.…`, `downsample.0/1`, `fc`; `fc.weight` as `[out, in]`), so a
    /// PyTorch reference of the same architecture loads them with `load_state_dict`.
    pub fn torchvision_tensors(&self) -> Vec<NamedTensor> {
        let mut out = vec![named("conv1.weight".into(), self.conv1.weight.val())];
        named_bn("bn1", &self.bn1, &mut out);
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, block) in stage.blocks.iter().enumerate() {
                let p = format!("layer{}.{j}", i + 1);
                out.push(named(format!("{p}.conv1.weight"), block.conv1.weight.val()));
                named_bn(&format!("{p}.bn1"), &block.bn1, &mut out);
                out.push(named(format!("{p}.conv2.weight"), block.conv2.weight.val()));
                named_bn(&format!("{p}.bn2"), &block.bn2, &mut out);
                if let Some(d) = &block.downsample {
                    out.push(named(
                        format!("{p}.downsample.0.weight"),
                        d.conv.weight.val(),
                    ));
                    named_bn(&format!("{p}.downsample.1"), &d.bn, &mut out);
                }
            }
        }
        out.push(named(
            "fc.weight".into(),
            self.head.weight.val().transpose(),
        ));
        if let Some(bias) = &self.head.bias {
            out.push(named("fc.bias".into(), bias.val()));
        }
        out
    }
}
