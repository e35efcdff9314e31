//! The loop of one training epoch, shared by one-device and data-parallel training: the
//! epoch's shuffled, augmented batches, the learning-rate schedule, the progress bar and the
//! files that failed to decode.

use anyhow::Result;

use crate::augment::AugmentConfig;
use crate::loader::{Batch, Failures, Loader};
use crate::objective::learning_rate;
use crate::options::TrainOptions;
use crate::rng::Rng;
use crate::train::{Plan, loader_config};
use crate::validation::bar;

/// The batches of one pass over the (shuffled, augmented) training items of `epoch`.
pub(crate) fn epoch_batches(
    opts: &TrainOptions,
    plan: &Plan,
    epoch: usize,
    failures: &Failures,
) -> Loader {
    let mut order = plan.train_items.clone();
    Rng::new(opts.seed)
        .fork(1000 + epoch as u64)
        .shuffle(&mut order);
    let augmentation = AugmentConfig::with_strength(opts.augment_p, opts.augment_strength);
    Loader::start(
        plan.data.root.clone(),
        order,
        &loader_config(opts),
        Some(augmentation),
        opts.seed.wrapping_mul(31).wrapping_add(epoch as u64),
        failures.clone(),
    )
}

/// The loop of one training epoch, whatever takes the steps (one device or several): the
/// shuffled batches, the learning-rate schedule, the progress bar and the failed files.
/// `step(state, batch, lr, index)` trains on one batch and returns the state and the batch's
/// loss; the result is the final state, the mean training loss and the last learning rate.
pub(crate) fn run_epoch<S>(
    mut state: S,
    opts: &TrainOptions,
    plan: &Plan,
    epoch: usize,
    quiet: bool,
    mut step: impl FnMut(S, Batch, f64, usize) -> Result<(S, f32)>,
) -> Result<(S, f64, f64)> {
    let failures: Failures = Default::default();
    let batches = epoch_batches(opts, plan, epoch, &failures);
    let steps_per_epoch = plan.train_items.len().div_ceil(opts.batch_size);
    let total_steps = steps_per_epoch * opts.epochs;
    let pb = bar(
        plan.train_items.len(),
        format!("epoch {}/{}", epoch + 1, opts.epochs),
        quiet,
    );
    let (mut loss_sum, mut seen, mut lr) = (0.0f64, 0usize, opts.lr);
    for (i, batch) in batches.enumerate() {
        let n = batch.len();
        lr = learning_rate(opts.lr, epoch * steps_per_epoch + i, total_steps);
        let value;
        (state, value) = step(state, batch, lr, i)?;
        loss_sum += f64::from(value) * n as f64;
        seen += n;
        pb.inc(n as u64);
        pb.set_message(format!("loss {:.4}", loss_sum / seen as f64));
    }
    pb.finish_and_clear();
    let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
    if failed > 0 && !quiet {
        eprintln!("  {failed} training image(s) could not be decoded and were skipped");
    }
    Ok((state, loss_sum / seen.max(1) as f64, lr))
}
