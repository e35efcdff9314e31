//! How the kernels' work is split and run: tasks over images, segments of output pixels (or
//! Winograd's tile rows) and groups of output channels, on rayon's threads natively and one
//! after the other in wasm (threads there need cross-origin isolation and a nightly build-std);
//! the output they share; the input copies made before them; and each thread's reused scratch.

use std::ops::Range;

use super::microkernel::TILE_ROWS;

/// One task of a convolution: image `b`, a range of its output pixels (or Winograd's tile rows)
/// and a range of its output channels (whole blocks of the tiles' rows).
#[derive(Debug, Clone)]
pub(super) struct Task {
    pub b: usize,
    pub units: Range<usize>,
    pub channels: Range<usize>,
}

/// Runs `segment(task, out)` for every image, every `step`-long range of `0..units` and every
/// group of the `channels` output channels (on rayon's threads natively), and returns the
/// `out_len` output values. Each task must write exactly its own part of the output, and the
/// tasks together all of it: the output is not zeroed first.
pub(super) fn run_segments(
    batch: usize,
    units: usize,
    step: usize,
    channels: usize,
    out_len: usize,
    segment: impl Fn(Task, SharedOut) + Sync + Send,
) -> Vec<f32> {
    let step = step.max(1);
    let group = channel_group(batch * units.div_ceil(step), channels);
    let tasks: Vec<Task> = (0..batch)
        .flat_map(|b| {
            (0..units)
                .step_by(step)
                .map(move |s| (b, s..(s + step).min(units)))
        })
        .flat_map(|(b, units)| {
            (0..channels).step_by(group).map(move |c| Task {
                b,
                units: units.clone(),
                channels: c..(c + group).min(channels),
            })
        })
        .collect();
    let mut out: Vec<f32> = Vec::with_capacity(out_len);
    // In this crate's tests every value starts as NaN: a value that no task writes then fails
    // the comparisons with burn's operations, instead of passing on what the allocator left.
    if cfg!(test) {
        out.resize(out_len, f32::NAN);
    }
    let out_ptr = SharedOut(out.as_mut_ptr());
    // `out` outlives the loop; the tasks write disjoint parts of it (the caller's contract).
    for_each_task(&tasks, |task| segment(task.clone(), out_ptr));
    // SAFETY: the tasks have written all `out_len` values (the caller's contract).
    unsafe { out.set_len(out_len) };
    out
}

/// Output channels per task: all of them when the pixel segments alone give each thread a task;
/// else fewer (whole blocks of [`TILE_ROWS`]), so that the last, small layers (one or two
/// segments) do not run on one thread while the others wait.
fn channel_group(segments: usize, channels: usize) -> usize {
    let wanted = threads();
    if segments >= wanted {
        return channels.max(1);
    }
    let groups = wanted.div_ceil(segments.max(1));
    channels
        .div_ceil(groups)
        .next_multiple_of(TILE_ROWS)
        .max(TILE_ROWS)
}

#[cfg(not(target_family = "wasm"))]
fn threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(target_family = "wasm")]
fn threads() -> usize {
    1
}

/// The output buffer, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(pub(super) *mut f32);
// SAFETY: tasks write disjoint elements (`run_segments` contract).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

#[cfg(not(target_family = "wasm"))]
fn for_each_task<T: Sync>(tasks: &[T], run: impl Fn(&T) + Sync + Send) {
    use rayon::prelude::*;
    tasks.par_iter().for_each(run);
}

/// Runs `work` on one of rayon's threads natively, so that the kernels' parallel loops inside it
/// start from a worker (which runs its share itself while the others steal) instead of each
/// loop handing its tasks from the caller's thread to the pool and sleeping until they are done:
/// one hand-over per forward pass instead of one per convolution. In wasm, `work` runs here.
pub fn on_workers<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_family = "wasm"))]
    return rayon::scope(|_| work());
    #[cfg(target_family = "wasm")]
    return work();
}

/// `(a(), b())`, side by side on rayon's threads natively (two convolutions that read the same
/// input: a block's first convolution and its downsample), one after the other in wasm.
pub fn join<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    #[cfg(not(target_family = "wasm"))]
    return rayon::join(a, b);
    #[cfg(target_family = "wasm")]
    return (a(), b());
}

/// `copy(from, to)` for each plane of `input` (`from_len` values) and its place in `out`
/// (`to_len` values), on rayon's threads natively: the input copies that some kernels make
/// before their tasks start (which would otherwise leave the other threads waiting).
pub(super) fn copy_planes(
    input: &[f32],
    from_len: usize,
    out: &mut [f32],
    to_len: usize,
    copy: impl Fn(&[f32], &mut [f32]) + Sync + Send,
) {
    let (from_len, to_len) = (from_len.max(1), to_len.max(1));
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        let planes = out
            .par_chunks_exact_mut(to_len)
            .zip(input.par_chunks_exact(from_len));
        planes.for_each(|(to, from)| copy(from, to));
    }
    #[cfg(target_family = "wasm")]
    for (to, from) in out
        .chunks_exact_mut(to_len)
        .zip(input.chunks_exact(from_len))
    {
        copy(from, to);
    }
}

/// One thread in wasm (threads there need cross-origin isolation and a nightly build-std).
#[cfg(target_family = "wasm")]
fn for_each_task<T: Sync>(tasks: &[T], run: impl Fn(&T) + Sync + Send) {
    tasks.iter().for_each(run);
}

/// The first `len` values of a reused buffer, grown when it is short. (`Vec::resize` to each
/// call's length would zero again whatever a smaller call before it gave back.) Its values are
/// what an earlier call left: the caller overwrites them.
pub(super) fn scratch(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}
