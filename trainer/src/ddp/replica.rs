//! The replicas of this machine: one thread per device, each holding the model and its
//! optimizer, driven step by step by the training loop's thread, which splits each global batch
//! into shards.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use cxr::ResNet;
use cxr::classifier::batch_input;

use super::collective::{self, Peer};
use super::grads::{flatten_buffers, flatten_grads, grads_len, replace_buffers, unflatten_grads};
use super::{DdpError, Topology};
use crate::loader::Batch;
use crate::objective::{LossSpec, Share, batch_loss, normaliser};

/// One device's part of a global batch.
struct Shard {
    pixels: Vec<f32>,
    labels: Vec<u8>,
    files: Vec<String>,
    share: Share,
}

enum Job {
    Step(Shard, f64),
    /// Sum these values over all peers (the loop's thread gives zeros to all but the first).
    Sum(Vec<f32>),
    AverageBuffers,
    Model,
    Finish,
}

enum Reply {
    Loss(f32),
    Values(Vec<f32>),
    Model(Box<(ResNet, ModuleOptimizer)>),
    Done,
}

struct Worker {
    jobs: Sender<Job>,
    replies: Receiver<Result<Reply, DdpError>>,
    handle: Option<JoinHandle<()>>,
}

/// The replicas of this machine's devices.
pub struct Replicas {
    workers: Vec<Worker>,
    topology: Topology,
    spec: LossSpec,
}

/// What a replica thread holds.
struct Replica {
    peer: Peer,
    model: ResNet,
    optim: ModuleOptimizer,
    /// The gradients' device (the model's, without autodiff).
    base: Device,
    device: Device,
    spec: LossSpec,
    input_size: usize,
    world: usize,
}

impl Replicas {
    /// Copy `model` and `optim` onto each device of `topology` and register the peers (which
    /// waits for the other machines' peers).
    pub fn start(
        topology: Topology,
        model: &ResNet,
        optim: &ModuleOptimizer,
        spec: &LossSpec,
        input_size: usize,
    ) -> Result<Self, DdpError> {
        collective::reset();
        let config = collective::config(&topology);
        let world = topology.world_size();
        let mut workers = Vec::new();
        for (index, spec_device) in topology.devices.iter().enumerate() {
            let base = spec_device.device();
            let device = base.clone().autodiff();
            let (model, optim, spec) = (model.clone().fork(&device), optim.clone(), spec.clone());
            let config = config.clone();
            let (jobs, job_rx) = channel();
            let (reply_tx, replies) = channel();
            let handle = std::thread::spawn(move || {
                let replica = match Peer::register(index, config) {
                    Ok(peer) => Replica {
                        peer,
                        model,
                        optim,
                        base,
                        device,
                        spec,
                        input_size,
                        world,
                    },
                    Err(e) => {
                        let _ = reply_tx.send(Err(e));
                        return;
                    }
                };
                let _ = reply_tx.send(Ok(Reply::Done));
                replica.serve(job_rx, reply_tx);
            });
            workers.push(Worker {
                jobs,
                replies,
                handle: Some(handle),
            });
        }
        let replicas = Self {
            workers,
            topology,
            spec: spec.clone(),
        };
        replicas.collect()?;
        Ok(replicas)
    }

    /// Wait for every worker's reply to its last job; the first worker's reply.
    fn collect(&self) -> Result<Reply, DdpError> {
        let mut first = None;
        let mut error = None;
        for (i, worker) in self.workers.iter().enumerate() {
            let reply = worker
                .replies
                .recv()
                .map_err(|_| DdpError::Worker(i, "it ended without replying".into()))
                .and_then(|r| r);
            match reply {
                Ok(reply) if i == 0 => first = Some(reply),
                Ok(_) => {}
                Err(e) => error = error.or(Some(e)),
            }
        }
        match (error, first) {
            (Some(e), _) => Err(e),
            (None, Some(reply)) => Ok(reply),
            (None, None) => Err(DdpError::Worker(0, "no reply".into())),
        }
    }

    fn send(&self, i: usize, job: Job) -> Result<(), DdpError> {
        self.workers[i]
            .jobs
            .send(job)
            .map_err(|_| DdpError::Worker(i, "it has ended".into()))
    }

    /// Train every replica on its shard of the global `batch`; the batch's loss.
    pub fn step(&self, batch: Batch, lr: f64) -> Result<f32, DdpError> {
        let n = batch.len();
        let size = self.workers.len().max(1);
        let total = self.topology.world_size();
        let pixels_per = batch.pixels.len().checked_div(n).unwrap_or(0);
        let whole_norm = normaliser(&batch.labels, self.spec.kind, self.spec.weights);
        for d in 0..size {
            let k = self.topology.first_shard() + d;
            let (start, end) = (k * n / total, (k + 1) * n / total);
            let labels = batch.labels[start..end].to_vec();
            let part = normaliser(&labels, self.spec.kind, self.spec.weights);
            let share = Share {
                labelled: if whole_norm > 0.0 {
                    part / whole_norm
                } else {
                    0.0
                },
                distilled: (end - start) as f32 / n.max(1) as f32,
            };
            let shard = Shard {
                pixels: batch.pixels[start * pixels_per..end * pixels_per].to_vec(),
                labels,
                files: batch.files[start..end].to_vec(),
                share,
            };
            self.send(d, Job::Step(shard, lr))?;
        }
        match self.collect()? {
            Reply::Loss(loss) => Ok(loss),
            _ => Err(DdpError::Worker(0, "unexpected reply".into())),
        }
    }

    /// `values` summed over the machines (each machine's first device contributes them).
    pub fn sum(&self, values: Vec<f32>) -> Result<Vec<f32>, DdpError> {
        let zeros = vec![0.0; values.len()];
        self.send(0, Job::Sum(values))?;
        for d in 1..self.workers.len() {
            self.send(d, Job::Sum(zeros.clone()))?;
        }
        match self.collect()? {
            Reply::Values(v) => Ok(v),
            _ => Err(DdpError::Worker(0, "unexpected reply".into())),
        }
    }

    /// Check that every machine trains the same thing: `facts` (named by `names`) of each machine
    /// must equal this one's.
    pub fn check_agreement(&self, names: &[&str], facts: &[f32]) -> Result<(), DdpError> {
        let Some(nodes) = &self.topology.nodes else {
            return Ok(());
        };
        let width = facts.len();
        let mut slots = vec![0.0; width * nodes.count as usize];
        let rank = nodes.rank as usize;
        slots[rank * width..(rank + 1) * width].copy_from_slice(facts);
        let all = self.sum(slots)?;
        for (node, theirs) in all.chunks(width).enumerate() {
            for ((name, mine), theirs) in names.iter().zip(facts).zip(theirs) {
                if mine != theirs {
                    return Err(DdpError::Disagree(format!(
                        "{name} is {mine} on node {rank} but {theirs} on node {node} (same options, data and run state on every machine)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Average the replicas' buffers (BatchNorm's running statistics) over all devices.
    pub fn average_buffers(&self) -> Result<(), DdpError> {
        for d in 0..self.workers.len() {
            self.send(d, Job::AverageBuffers)?;
        }
        self.collect().map(|_| ())
    }

    /// A copy of the first replica's model and optimizer.
    pub fn model(&self) -> Result<(ResNet, ModuleOptimizer), DdpError> {
        self.send(0, Job::Model)?;
        match self.workers[0].replies.recv() {
            Ok(Ok(Reply::Model(m))) => Ok(*m),
            Ok(Err(e)) => Err(e),
            _ => Err(DdpError::Worker(0, "no model".into())),
        }
    }

    /// Leave the collective and end the threads.
    pub fn finish(mut self) -> Result<(), DdpError> {
        for d in 0..self.workers.len() {
            self.send(d, Job::Finish)?;
        }
        let result = self.collect().map(|_| ());
        for worker in &mut self.workers {
            if let Some(handle) = worker.handle.take() {
                let _ = handle.join();
            }
        }
        result
    }
}

impl Replica {
    fn serve(mut self, jobs: Receiver<Job>, replies: Sender<Result<Reply, DdpError>>) {
        while let Ok(job) = jobs.recv() {
            let reply = match job {
                Job::Step(shard, lr) => self.step(shard, lr).map(Reply::Loss),
                Job::Sum(values) => self.peer.all_reduce_sum(values).map(Reply::Values),
                Job::AverageBuffers => self.average_buffers().map(|()| Reply::Done),
                Job::Model => Ok(Reply::Model(Box::new((
                    self.model.clone(),
                    self.optim.clone(),
                )))),
                Job::Finish => {
                    let _ = replies.send(self.peer.finish().map(|()| Reply::Done));
                    return;
                }
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
    }

    fn step(&mut self, shard: Shard, lr: f64) -> Result<f32, DdpError> {
        let n = shard.labels.len();
        let (flat, loss) = if n == 0 {
            (vec![0.0; grads_len(&self.model)], 0.0)
        } else {
            let x = batch_input(shard.pixels, n, self.input_size, &self.device);
            let logits = self.model.forward(x);
            let l = batch_loss(logits, &shard.labels, &shard.files, &self.spec, shard.share);
            let value: f32 = l.clone().into_scalar();
            let grads = GradientsParams::from_grads(l.backward(), &self.model);
            (flatten_grads(&self.model, grads), value)
        };
        let (model, loss) = reduce_and_step(
            &self.peer,
            self.model.clone(),
            &mut self.optim,
            flat,
            loss,
            lr,
            &self.base,
        )?;
        self.model = model;
        Ok(loss)
    }

    fn average_buffers(&mut self) -> Result<(), DdpError> {
        // burn's running states hold each thread's latest update apart until synchronised
        // (`valid` does it): fold them in before reading the buffers.
        let _ = self.model.valid();
        let summed = self.peer.all_reduce_sum(flatten_buffers(&self.model))?;
        let mean: Vec<f32> = summed.iter().map(|v| v / self.world as f32).collect();
        self.model = replace_buffers(self.model.clone(), &mean);
        Ok(())
    }
}

/// The data-parallel step: sum the replicas' flattened gradients ([`flatten_grads`]) and shard
/// losses over all peers, then step `model` with the summed gradients. Every replica gets the
/// same sums, so every replica takes the same step. The summed loss comes back; a non-finite one
/// stops every replica before the step.
pub fn reduce_and_step<M: Module>(
    peer: &Peer,
    model: M,
    optim: &mut ModuleOptimizer,
    mut flat: Vec<f32>,
    loss: f32,
    lr: f64,
    grads_device: &Device,
) -> Result<(M, f32), DdpError> {
    flat.push(loss);
    let mut summed = peer.all_reduce_sum(flat)?;
    let loss = summed.pop().unwrap_or(f32::NAN);
    if !loss.is_finite() {
        return Err(DdpError::NonFinite(loss));
    }
    let grads = unflatten_grads(&model, &summed, grads_device);
    Ok((optim.step(lr, model, grads), loss))
}
