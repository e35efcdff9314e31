//! One data-parallel epoch, and the glue between the training loop and the replicas.

use anyhow::{Result, anyhow};
use burn::module::Module;
use cxr::ResNet;

use super::{Replicas, Topology};
use crate::epoch::run_epoch;
use crate::options::TrainOptions;
use crate::train::{Plan, Trainee};

/// Start the replicas of `topology` from `t`'s model and optimizer, after checking that every
/// machine trains the same thing from the same epoch.
pub fn start(
    topology: Topology,
    t: &Trainee,
    opts: &TrainOptions,
    plan: &Plan,
) -> Result<Replicas> {
    let replicas = Replicas::start(topology, &t.model, &t.optim, &plan.loss, opts.input_size)?;
    replicas.check_agreement(
        &[
            "the committed epoch",
            "the number of training images",
            "--batch-size",
            "the number of parameters",
            "--input-size",
            "--epochs",
        ],
        &[
            t.state.epoch as f32,
            plan.train_items.len() as f32,
            opts.batch_size as f32,
            t.model.num_params() as f32,
            opts.input_size as f32,
            opts.epochs as f32,
        ],
    )?;
    Ok(replicas)
}

/// One pass over the training items, each global batch split over the replicas; the mean
/// training loss and the last learning rate. The replicas' buffers are averaged at the end and
/// `t` gets the first replica's model and optimizer.
pub fn train_epoch(
    replicas: &Replicas,
    t: &mut Trainee,
    opts: &TrainOptions,
    plan: &Plan,
    epoch: usize,
    quiet: bool,
) -> Result<(f64, f64)> {
    let ((), loss, lr) = run_epoch((), opts, plan, epoch, quiet, |(), batch, lr, i| {
        let value = replicas
            .step(batch, lr)
            .map_err(|e| anyhow!("epoch {} step {i}: {e}", epoch + 1))?;
        Ok(((), value))
    })?;
    replicas.average_buffers()?;
    let (model, optim): (ResNet, _) = replicas.model()?;
    t.model = model;
    t.optim = optim;
    Ok((loss, lr))
}

/// Whether to stop, agreed by all machines (any one's early stop stops all).
pub fn agree_stop(replicas: &Replicas, stop: bool) -> Result<bool> {
    let votes = replicas.sum(vec![f32::from(u8::from(stop))])?;
    Ok(votes.first().copied().unwrap_or(0.0) > 0.0)
}
