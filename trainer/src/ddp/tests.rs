//! Data-parallel training gives the one-device weights: two CPU devices in one process, and two
//! processes through burn-collective's global orchestrator on 127.0.0.1, each training a small
//! model without BatchNorm on shards of the same global batches.
//!
//! Tolerance: 1e-5 absolute on every weight after 6 AdamW steps. The summed shard gradients
//! equal the whole batch's up to the order of float additions (two partial sums, then their sum,
//! instead of one running sum), i.e. a few ulps of each gradient; AdamW's normalised update
//! keeps such differences at the same relative scale, far below 1e-5 for weights of order 0.1-1.

use std::path::PathBuf;
use std::process::Command;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};

use super::collective::{self, Peer};
use super::grads::flatten_grads;
use super::replica::reduce_and_step;
use super::*;
use crate::objective::{LossKind, LossSpec, Share, batch_loss, normaliser};

/// A two-layer perceptron: no BatchNorm, so a shard's gradient depends on its images alone.
#[derive(Module, Debug)]
struct Tiny {
    a: Linear,
    b: Linear,
    relu: Relu,
}

/// Replaces every parameter with values of a fixed sequence.
struct Fixed(usize);

impl ModuleMapper for Fixed {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let values: Vec<f32> = (0..shape.num_elements())
            .map(|i| ((i + 3 * self.0) as f32 * 0.7).sin() * 0.5)
            .collect();
        self.0 += 1;
        let value = Tensor::<D>::from_data(TensorData::new(values, shape), &tensor.device())
            .set_require_grad(tensor.is_require_grad());
        Param::from_mapped_value(id, value, mapper)
    }
}

const INPUTS: usize = 5;
const STEPS: usize = 6;
const BATCH: usize = 7;
const TOLERANCE: f32 = 1e-5;

impl Tiny {
    /// Fixed weights (not the device's generator, which the tests running in parallel share).
    fn new(device: &Device) -> Self {
        let model = Self {
            a: LinearConfig::new(INPUTS, 8).init(device),
            b: LinearConfig::new(8, 2).init(device),
            relu: Relu::new(),
        };
        model.map(&mut Fixed(0))
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.b.forward(self.relu.forward(self.a.forward(x)))
    }
}

fn spec() -> LossSpec {
    LossSpec {
        kind: LossKind::ClassWeighted,
        weights: [0.6, 2.5],
        cost: 5.0,
        teacher: None,
        distill_weight: 0.5,
        temperature: 2.0,
    }
}

/// The global batch of `step`: BATCH rows of inputs and labels (an odd size, so the shards
/// differ in size, and in class mix).
fn batch(step: usize) -> (Vec<f32>, Vec<u8>) {
    let x = (0..BATCH * INPUTS)
        .map(|i| (((i * 37 + step * 11) % 23) as f32 / 11.0) - 1.0)
        .collect();
    let y = (0..BATCH)
        .map(|i| u8::from((i + step).is_multiple_of(3)))
        .collect();
    (x, y)
}

/// Rows `k * n / shards .. (k + 1) * n / shards` of a batch, as [`Replicas::step`] cuts them.
fn shard(x: &[f32], y: &[u8], k: usize, shards: usize) -> (Vec<f32>, Vec<u8>, Share) {
    let n = y.len();
    let (s, e) = (k * n / shards, (k + 1) * n / shards);
    let labels = y[s..e].to_vec();
    let spec = spec();
    let share = Share {
        labelled: normaliser(&labels, spec.kind, spec.weights)
            / normaliser(y, spec.kind, spec.weights),
        distilled: (e - s) as f32 / n as f32,
    };
    (x[s * INPUTS..e * INPUTS].to_vec(), labels, share)
}

fn loss_of(model: &Tiny, x: Vec<f32>, y: &[u8], share: Share, device: &Device) -> Tensor<1> {
    let n = y.len();
    let x = Tensor::<2>::from_data(TensorData::new(x, [n, INPUTS]), device);
    let files = vec![String::new(); n];
    batch_loss(model.forward(x), y, &files, &spec(), share)
}

fn weights(model: &Tiny) -> Vec<f32> {
    let mut out = Vec::new();
    for t in [
        model.a.weight.val().flatten::<1>(0, 1),
        model.a.bias.as_ref().unwrap().val(),
        model.b.weight.val().flatten::<1>(0, 1),
        model.b.bias.as_ref().unwrap().val(),
    ] {
        out.extend(t.into_data().try_into_vec::<f32>().unwrap());
    }
    out
}

fn optimizer() -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(1e-4).init()
}

/// The reference: STEPS steps on one device, whole batches.
fn one_device() -> Vec<f32> {
    let device = Device::flex().autodiff();
    let mut model = Tiny::new(&device);
    let mut optim = optimizer();
    for step in 0..STEPS {
        let (x, y) = batch(step);
        let l = loss_of(&model, x, &y, Share::WHOLE, &device);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(0.05, model, grads);
    }
    weights(&model)
}

/// Peer `index` of this process trains shard `shard` of `shards` of every global batch.
fn replica(index: usize, shard_index: usize, shards: usize, config: CollectiveConfig) -> Vec<f32> {
    let device = Device::flex().autodiff();
    let base = Device::flex();
    let peer = Peer::register(index, config).expect("register");
    let mut model = Tiny::new(&device);
    let mut optim = optimizer();
    for step in 0..STEPS {
        let (x, y) = batch(step);
        let (x, y, share) = shard(&x, &y, shard_index, shards);
        let l = loss_of(&model, x, &y, share, &device);
        let value: f32 = l.clone().into_scalar();
        let grads = GradientsParams::from_grads(l.backward(), &model);
        let flat = flatten_grads(&model, grads);
        let (stepped, _) =
            reduce_and_step(&peer, model, &mut optim, flat, value, 0.05, &base).expect("step");
        model = stepped;
    }
    peer.finish().expect("finish");
    weights(&model)
}

use burn_collective::CollectiveConfig;

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{what}: largest weight difference {worst:e} (tolerance {TOLERANCE:e})");
    assert!(worst <= TOLERANCE, "{what}: {worst}");
}

#[test]
fn two_cpu_devices_in_one_process_match_one_device() {
    let reference = one_device();
    collective::reset();
    let config = CollectiveConfig::default().with_num_devices(2);
    let threads: Vec<_> = (0..2)
        .map(|k| {
            let config = config.clone();
            std::thread::spawn(move || replica(k, k, 2, config))
        })
        .collect();
    let results: Vec<Vec<f32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results[0], results[1], "the replicas must stay identical");
    assert_close(&results[0], &reference, "2 devices vs 1");
    assert_ne!(weights(&Tiny::new(&Device::flex())), reference);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The child process of [`two_processes_through_the_orchestrator_match_one_device`]: one node.
#[test]
#[ignore = "run as a child process by two_processes_through_the_orchestrator_match_one_device"]
fn node_process() {
    let var = |name: &str| std::env::var(name).expect(name);
    let rank: u32 = var("CXR_DDP_RANK").parse().unwrap();
    let port: u16 = var("CXR_DDP_PORT").parse().unwrap();
    let config = CollectiveConfig::default()
        .with_num_devices(1)
        .with_num_nodes(2)
        .with_global_address(ws_address(&var("CXR_DDP_GLOBAL")).unwrap())
        .with_node_address(ws_address(&format!("ws://127.0.0.1:{port}")).unwrap())
        .with_data_service_port(port);
    let result = replica(0, rank as usize, 2, config);
    std::fs::write(var("CXR_DDP_OUT"), serde_json::to_string(&result).unwrap()).unwrap();
}

#[test]
fn two_processes_through_the_orchestrator_match_one_device() {
    let reference = one_device();
    let global_port = free_port();
    std::thread::spawn(move || {
        OrchestratorArgs { port: global_port }.run().unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dir = std::env::temp_dir().join(format!("cxr-ddp-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let outs: Vec<PathBuf> = (0..2).map(|r| dir.join(format!("node{r}.json"))).collect();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["ddp::tests::node_process", "--exact", "--ignored"])
                .env("CXR_DDP_RANK", rank.to_string())
                .env("CXR_DDP_PORT", free_port().to_string())
                .env("CXR_DDP_GLOBAL", format!("ws://127.0.0.1:{global_port}"))
                .env("CXR_DDP_OUT", &outs[rank])
                .spawn()
                .expect("start a node")
        })
        .collect();
    for mut child in children {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "a node failed: {status}");
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("a node did not finish within 2 minutes");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let read = |p: &PathBuf| -> Vec<f32> {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (read(&outs[0]), read(&outs[1]));
    assert_eq!(a, b, "both machines must hold the same weights");
    assert_close(&a, &reference, "2 processes vs 1 device");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn devices_parse() {
    use DeviceSpec::*;
    assert_eq!(parse_devices("cpu*2").unwrap(), vec![Cpu, Cpu]);
    assert_eq!(parse_devices("cpu, cpu").unwrap(), vec![Cpu, Cpu]);
    for bad in ["", "gpu", "cpu*x", "wgpu:a", "cpu*0", "cpu*100"] {
        assert!(
            matches!(parse_devices(bad), Err(DdpError::Devices(..))),
            "{bad}"
        );
    }
    if cfg!(feature = "wgpu") {
        assert_eq!(
            parse_devices("wgpu:0,wgpu:1").unwrap(),
            vec![WgpuIndex(0), WgpuIndex(1)]
        );
    }
}

#[test]
fn node_options_are_checked() {
    let full = DdpArgs {
        devices: None,
        num_nodes: Some(2),
        node_rank: Some(1),
        global_address: Some("ws://127.0.0.1:3000".into()),
        node_address: Some("ws://127.0.0.1:3001".into()),
        data_service_port: Some(3001),
    };
    let top = full.topology().unwrap().unwrap();
    assert_eq!((top.world_size(), top.first_shard()), (2, 1));
    let cases = [
        DdpArgs {
            node_rank: Some(2),
            ..full.clone()
        },
        DdpArgs {
            data_service_port: None,
            ..full.clone()
        },
        DdpArgs {
            global_address: Some("127.0.0.1:3000".into()),
            ..full.clone()
        },
        DdpArgs {
            node_address: Some("ws://127.0.0.1".into()),
            ..full.clone()
        },
    ];
    for case in cases {
        assert!(
            matches!(case.topology(), Err(DdpError::Nodes(_))),
            "{case:?}"
        );
    }
    assert!(DdpArgs::default().topology().unwrap().is_none());
    let one = DdpArgs {
        devices: Some(DeviceList(vec![DeviceSpec::Cpu])),
        ..DdpArgs::default()
    };
    assert!(one.topology().unwrap().is_none());
}
