//! The bridge to burn-collective 0.21: a peer per device, registered with this process's local
//! collective server (and, with several machines, through it with the global orchestrator), whose
//! all-reduce sums flat f32 buffers. The buffers become burn-flex 0.21 tensors for the reduction,
//! since burn-collective works on burn 0.21's backend traits.

use burn_collective::{
    CollectiveConfig, CollectiveError, PeerId, ReduceOperation, all_reduce, finish_collective,
    register, reset_collective,
};
use collective_backend::ops::FloatTensorOps;
use collective_backend::{TensorData, read_sync};
use collective_flex::{Flex, FlexDevice};

use super::{DdpError, Topology};

/// Buffers shorter than this are padded (more than any number of machines a run would use).
const MIN_LEN: usize = 1024;

/// The backend the reductions run on (host memory).
type Comm = Flex;

fn collective_error(operation: &'static str, e: CollectiveError) -> DdpError {
    DdpError::Collective {
        operation,
        detail: format!("{e:?}"),
    }
}

/// burn-collective's configuration for `topology`.
pub fn config(topology: &Topology) -> CollectiveConfig {
    let config = CollectiveConfig::default().with_num_devices(topology.devices.len());
    match &topology.nodes {
        None => config,
        Some(nodes) => config
            .with_num_nodes(nodes.count)
            .with_global_address(nodes.global_address.clone())
            .with_node_address(nodes.node_address.clone())
            .with_data_service_port(nodes.data_service_port),
    }
}

/// Forget every peer of this process (before a new set registers).
pub fn reset() {
    reset_collective::<Comm>();
}

/// One participant of the collective (one per device, each on its own thread).
#[derive(Debug)]
pub struct Peer {
    id: PeerId,
}

impl Peer {
    /// Register local peer `index`. Blocks until every peer of the collective (all devices of
    /// all machines) has registered.
    pub fn register(index: usize, config: CollectiveConfig) -> Result<Self, DdpError> {
        let id = PeerId::from(index);
        register::<Comm>(id, FlexDevice, config).map_err(|e| collective_error("register", e))?;
        Ok(Self { id })
    }

    /// The element-wise sum of `values` over all peers, returned to each.
    pub fn all_reduce_sum(&self, mut values: Vec<f32>) -> Result<Vec<f32>, DdpError> {
        let expected = values.len();
        // The ring all-reduce between machines cuts the buffer into one slice per machine and
        // refuses a shorter one: pad small buffers with zeros.
        values.resize(expected.max(MIN_LEN), 0.0);
        let len = values.len();
        let tensor = Comm::float_from_data(TensorData::new(values, [len]), &FlexDevice);
        let summed = all_reduce::<Comm>(self.id, tensor, ReduceOperation::Sum)
            .map_err(|e| collective_error("all-reduce", e))?;
        let data = read_sync(Comm::float_into_data(summed)).map_err(|e| DdpError::Collective {
            operation: "all-reduce (reading the result)",
            detail: format!("{e:?}"),
        })?;
        let mut out = data.into_vec::<f32>().map_err(|e| DdpError::Collective {
            operation: "all-reduce (reading the result)",
            detail: format!("{e:?}"),
        })?;
        if out.len() != len {
            return Err(DdpError::Length {
                expected: len,
                got: out.len(),
            });
        }
        out.truncate(expected);
        Ok(out)
    }

    /// Leave the collective (every peer must, at the end).
    pub fn finish(self) -> Result<(), DdpError> {
        finish_collective::<Comm>(self.id).map_err(|e| collective_error("finish", e))
    }
}
