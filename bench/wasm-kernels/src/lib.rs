//! The convolution layers of the x0.25 ResNet-18 at 256x256, on the project's kernels
//! (`src/kernels/`, compiled in by path), as a small wasm module: a quick loop for trying
//! kernel changes in wasm without the 5-minute LTO build of the whole crate. See run.mjs.
#![allow(dead_code)]
#[path = "../../../src/kernels/conv.rs"]
mod conv;
#[path = "../../../src/kernels/microkernel.rs"]
mod microkernel;
#[path = "../../../src/kernels/winograd.rs"]
mod winograd;
use conv::*;

// (cin, cout, size, k, stride) of ResNet-18 x0.25 at 256.
const LAYERS: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 16, 256, 7, 2, 1),
    (16, 16, 64, 3, 1, 4),
    (16, 32, 64, 3, 2, 1),
    (16, 32, 64, 1, 2, 1),
    (32, 32, 32, 3, 1, 3),
    (32, 64, 32, 3, 2, 1),
    (32, 64, 32, 1, 2, 1),
    (64, 64, 16, 3, 1, 3),
    (64, 128, 16, 3, 2, 1),
    (64, 128, 16, 1, 2, 1),
    (128, 128, 8, 3, 1, 3),
];

static mut SINK: f32 = 0.0;
struct Data {
    filters: Vec<f32>,
    /// The weights and Winograd filters packed once for the tiles, as a loaded model holds them.
    packed: Vec<f32>,
    packed_filters: Vec<f32>,
    g: ConvGeometry,
    input: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    reps: usize,
}
std::thread_local! { static DATA: Vec<Data> = LAYERS.iter().map(|&(cin, cout, size, k, stride, reps)| {
    let g = ConvGeometry { batch: 1, in_channels: cin, height: size, width: size, out_channels: cout, kernel: k, stride, padding: k / 2 };
    let weight: Vec<f32> = (0..cout * g.patch_len()).map(|i| ((i * 104729) % 17) as f32 * 0.01 - 0.08).collect();
    Data { filters: if k == 3 { winograd::transform_filters(&weight, cout, cin) } else { vec![] }, g, reps,
        packed: Weights::prepare(&weight, cout, g.patch_len(), Product::Tiles),
        packed_filters: if k == 3 { winograd::prepare_filters(&weight, cout, cin, Product::Tiles) } else { vec![] }, input: (0..cin * size * size).map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6).collect(),
        weight: (0..cout * g.patch_len()).map(|i| ((i * 104729) % 17) as f32 * 0.01 - 0.08).collect(), bias: vec![0.1f32; cout] }
}).collect(); }

#[unsafe(no_mangle)]
/// `product`: 0 gemm, 1 tiles, 2 tiles + Winograd, each packing the weights on the call; 3 tiles
/// and 4 tiles + Winograd with the weights packed once.
pub extern "C" fn run(product: u32, layer: i32) -> f32 {
    let wino = product == 2 || product == 4;
    let prepacked = product >= 3;
    let product = if product == 0 {
        Product::Gemm
    } else {
        Product::Tiles
    };
    let mut total = 0.0;
    DATA.with(|data| {
        for (i, d) in data.iter().enumerate() {
            if layer >= 0 && layer as usize != i {
                continue;
            }
            for _ in 0..d.reps {
                let e = Epilogue {
                    bias: &d.bias,
                    residual: None,
                    relu: true,
                };
                let out = if wino && d.g.kernel == 3 && d.g.stride == 1 {
                    let g = winograd::WinogradGeometry {
                        batch: 1,
                        in_channels: d.g.in_channels,
                        out_channels: d.g.out_channels,
                        height: d.g.height,
                        width: d.g.width,
                    };
                    if prepacked {
                        let filters = winograd::prepared_filters(&d.packed_filters, g.out_channels, g.in_channels, product);
                        winograd::conv3x3_prepared(&d.input, g, &filters, e)
                    } else {
                        winograd::conv3x3_with(&d.input, g, &d.filters, e, product)
                    }
                } else if prepacked {
                    let weights = Weights::prepared(&d.packed, d.g.out_channels, d.g.patch_len(), product);
                    conv2d_prepared(&d.input, d.g, &weights, e)
                } else {
                    conv2d_with(&d.input, d.g, &d.weight, e, product)
                };
                total += out[out.len() / 2];
            }
        }
    });
    unsafe { SINK += total };
    total
}
