//! Data-parallel training over several devices (`train --devices`) and machines (`--num-nodes`,
//! with `trainer orchestrator`): one replica of the model per device, each global batch split
//! into one shard per device (of all machines), the shards' gradients summed by
//! burn-collective's all-reduce, and the same optimizer step on every replica.
//!
//! burn 0.22's own data-parallel strategy (burn-train's `LearningStrategy::DistributedDataParallel`
//! over `DistributedOps`) all-reduces through the backend, which only CUDA (NCCL) implements:
//! burn-flex leaves it `unimplemented!()` and wgpu has no device transport. So the reduction is
//! burn-collective's (its last release, 0.21, on burn 0.21's backend traits): the gradients
//! cross as one flat f32 buffer per step into a burn-flex 0.21 tensor ([`collective`]).
//!
//! Exactness: each shard's loss is scaled to its share of the whole batch's loss
//! ([`crate::objective::Share`]), so the summed gradients are the whole batch's up to the order
//! of float additions. BatchNorm normalises each shard by its own statistics (as PyTorch's DDP
//! without SyncBatchNorm), so a ResNet's steps differ from one device's; the running statistics
//! are averaged over the replicas at the end of each epoch, which leaves every replica (and every
//! machine) with the same model.

pub mod collective;
pub mod epoch;
mod grads;
mod replica;

use std::str::FromStr;

use burn::tensor::Device;
use burn_communication::Address;
use clap::Args;

pub use replica::Replicas;

/// Errors of the data-parallel layer: bad options, and anything that comes from another peer or
/// machine (collective operations, disagreeing nodes).
#[derive(Debug, thiserror::Error)]
pub enum DdpError {
    #[error("--devices {0:?}: {1}")]
    Devices(String, String),
    #[error(
        "--num-nodes, --node-rank, --global-address, --node-address and --data-service-port go together: {0}"
    )]
    Nodes(String),
    #[error("collective {operation} failed: {detail}")]
    Collective {
        operation: &'static str,
        detail: String,
    },
    #[error("the all-reduce returned {got} values for {expected}")]
    Length { expected: usize, got: usize },
    #[error("the machines disagree: {0}")]
    Disagree(String),
    #[error("the loss became {0} (summed over the devices); lower --lr")]
    NonFinite(f32),
    #[error("the worker of device {0} stopped: {1}")]
    Worker(usize, String),
}

/// One device of `--devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's flex CPU backend.
    Cpu,
    /// wgpu's default adapter.
    Wgpu,
    /// The N-th discrete GPU through wgpu.
    WgpuIndex(usize),
}

impl DeviceSpec {
    pub fn device(self) -> Device {
        match self {
            DeviceSpec::Cpu => Device::flex(),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "wgpu")]
            DeviceSpec::WgpuIndex(i) => Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i)),
            #[cfg(not(feature = "wgpu"))]
            _ => Device::flex(),
        }
    }
}

/// The devices of `--devices` (one value on the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceSpec>);

/// `--devices`: comma-separated `cpu`, `wgpu` or `wgpu:INDEX`, each optionally `*COUNT`
/// (`cpu*2` = `cpu,cpu`).
pub fn parse_device_list(text: &str) -> Result<DeviceList, DdpError> {
    parse_devices(text).map(DeviceList)
}

/// The devices of a `--devices` value.
pub fn parse_devices(text: &str) -> Result<Vec<DeviceSpec>, DdpError> {
    let bad = |why: &str| DdpError::Devices(text.to_string(), why.to_string());
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim) {
        let (name, count) = match entry.split_once('*') {
            Some((name, count)) => {
                let count = usize::from_str(count.trim())
                    .map_err(|_| bad("the count after `*` is not a whole number"))?;
                (name.trim(), count)
            }
            None => (entry, 1),
        };
        let spec = match name.split_once(':') {
            None if name == "cpu" => DeviceSpec::Cpu,
            None if name == "wgpu" => DeviceSpec::Wgpu,
            Some(("wgpu", index)) => DeviceSpec::WgpuIndex(
                usize::from_str(index).map_err(|_| bad("a wgpu index is a whole number"))?,
            ),
            _ => {
                return Err(bad(
                    "each device is cpu, wgpu or wgpu:INDEX, optionally *COUNT",
                ));
            }
        };
        if spec != DeviceSpec::Cpu && !cfg!(feature = "wgpu") {
            return Err(bad("this build has no wgpu support"));
        }
        out.extend(std::iter::repeat_n(spec, count));
    }
    if out.is_empty() || out.len() > 64 {
        return Err(bad("give between 1 and 64 devices"));
    }
    Ok(out)
}

/// The command-line options of data-parallel training (not saved with the run: a run may be
/// resumed on other devices).
#[derive(Args, Debug, Clone, Default)]
pub struct DdpArgs {
    /// Train data-parallel on these devices of this machine: comma-separated `cpu`, `wgpu`
    /// (default adapter) or `wgpu:INDEX` (discrete GPU), each optionally `*COUNT`, e.g. `cpu*2`,
    /// `wgpu:0,wgpu:1`. The global batch (--batch-size) is split over all devices of all machines.
    #[arg(long, value_parser = parse_device_list)]
    pub devices: Option<DeviceList>,
    /// Machines taking part (each runs `trainer train` with the same options and data).
    #[arg(long)]
    pub num_nodes: Option<u32>,
    /// This machine's place among them, 0 to --num-nodes - 1 (0 is the run of record).
    #[arg(long)]
    pub node_rank: Option<u32>,
    /// WebSocket address of the running `trainer orchestrator`, e.g. ws://10.0.0.1:3000.
    #[arg(long)]
    pub global_address: Option<String>,
    /// This machine's WebSocket address as the others reach it, e.g. ws://10.0.0.2:3001.
    #[arg(long)]
    pub node_address: Option<String>,
    /// Port this machine serves its tensors on (the port of --node-address).
    #[arg(long)]
    pub data_service_port: Option<u16>,
}

/// Where the replicas run: this machine's devices and, with several machines, the cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    pub devices: Vec<DeviceSpec>,
    pub nodes: Option<Nodes>,
}

/// The machines of a multi-machine run, as burn-collective's global level needs them.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub count: u32,
    pub rank: u32,
    pub global_address: Address,
    pub node_address: Address,
    pub data_service_port: u16,
}

impl Topology {
    /// Devices of all machines (each machine must give the same number).
    pub fn world_size(&self) -> usize {
        self.devices.len() * self.nodes.as_ref().map_or(1, |n| n.count as usize)
    }

    /// The global index of this machine's first device.
    pub fn first_shard(&self) -> usize {
        self.devices.len() * self.nodes.as_ref().map_or(0, |n| n.rank as usize)
    }
}

impl DdpArgs {
    /// The device of `--devices` when it names one alone (ordinary one-device training there).
    pub fn single_device(&self) -> Option<DeviceSpec> {
        match &self.devices {
            Some(DeviceList(d)) if d.len() == 1 => Some(d[0]),
            _ => None,
        }
    }

    /// The topology, or `None` for the ordinary one-device training.
    pub fn topology(&self) -> Result<Option<Topology>, DdpError> {
        let nodes = self.nodes()?;
        let devices = match (&self.devices, &nodes) {
            (None, None) => return Ok(None),
            (Some(d), _) => d.0.clone(),
            (None, Some(_)) => vec![DeviceSpec::Cpu],
        };
        if devices.len() == 1 && nodes.is_none() {
            return Ok(None);
        }
        Ok(Some(Topology { devices, nodes }))
    }

    fn nodes(&self) -> Result<Option<Nodes>, DdpError> {
        let given = [
            self.num_nodes.is_some(),
            self.node_rank.is_some(),
            self.global_address.is_some(),
            self.node_address.is_some(),
            self.data_service_port.is_some(),
        ];
        if given.iter().all(|g| !g) {
            return Ok(None);
        }
        let (
            Some(count),
            Some(rank),
            Some(global_address),
            Some(node_address),
            Some(data_service_port),
        ) = (
            self.num_nodes,
            self.node_rank,
            &self.global_address,
            &self.node_address,
            self.data_service_port,
        )
        else {
            return Err(DdpError::Nodes("some are missing".into()));
        };
        if count == 0 || rank >= count {
            return Err(DdpError::Nodes(format!(
                "--node-rank {rank} is not below --num-nodes {count}"
            )));
        }
        Ok(Some(Nodes {
            count,
            rank,
            global_address: ws_address(global_address)?,
            node_address: ws_address(node_address)?,
            data_service_port,
        }))
    }
}

/// A line saying where the replicas run.
pub fn describe(topology: &Topology) -> String {
    let devices: Vec<String> = topology
        .devices
        .iter()
        .map(|d| match d {
            DeviceSpec::Cpu => "cpu".to_string(),
            DeviceSpec::Wgpu => "wgpu".to_string(),
            DeviceSpec::WgpuIndex(i) => format!("wgpu:{i}"),
        })
        .collect();
    let nodes = match &topology.nodes {
        Some(n) => format!(" on node {} of {}", n.rank, n.count),
        None => String::new(),
    };
    format!(
        "data-parallel over {} device(s) here ({}){nodes}, {} in all (burn-collective all-reduce)",
        topology.devices.len(),
        devices.join(","),
        topology.world_size()
    )
}

/// A `ws://HOST:PORT` address, checked.
fn ws_address(text: &str) -> Result<Address, DdpError> {
    let rest = text
        .strip_prefix("ws://")
        .or_else(|| text.strip_prefix("wss://"))
        .ok_or_else(|| DdpError::Nodes(format!("{text:?} is not a ws:// address")))?;
    let port = rest.rsplit_once(':').map(|(_, p)| p.trim_end_matches('/'));
    if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
        return Err(DdpError::Nodes(format!("{text:?} has no :PORT")));
    }
    Address::from_str(text).map_err(DdpError::Nodes)
}

/// `trainer orchestrator`: burn-collective's global orchestrator, which the machines of a
/// multi-machine run (`train --num-nodes`) register with. Runs until interrupted.
#[derive(Args, Debug, Clone)]
pub struct OrchestratorArgs {
    /// Port to listen on (WebSocket); the nodes' --global-address is ws://THIS_HOST:PORT.
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
}

impl OrchestratorArgs {
    pub fn run(self) -> anyhow::Result<()> {
        eprintln!(
            "burn-collective global orchestrator listening on port {} (Ctrl-C stops it)",
            self.port
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(burn_collective::start_global_orchestrator(self.port));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
