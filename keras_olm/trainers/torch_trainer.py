"""PyTorch steps: gradients from `loss.backward()`.

With a `torch.distributed` process group of several processes (e.g. the
gloo backend, one process per device), every process runs `fit` on its
own shard of each global batch, and the step keeps the processes in
lockstep, as `DistributedDataParallel` does:

- the gradients are averaged over the processes after `backward()`;
- a step is skipped on every process when any part of it was not finite
  on any of them, and `fit` then stops on every process
  (`NonFiniteGuard`);
- the balancer reads the measurements of the whole global batch (labels,
  logits and features gathered from every process, held-out losses
  averaged over them), so every process computes the same new state, the
  one a single device would; a balancer's loss reads the global batch's
  sums (`balancers.common.replica_sum`, summed over the processes while
  the loss is computed).

The shards must have the same number of samples on every process.
"""

import contextlib
import os
import time

import keras
import tensorflow as tf
import torch

from keras_olm.balancers.common import summing_over_replicas
from keras_olm.trainers import resume
from keras_olm.trainers.step import TrainingStep


def other_running_tasks(samples=3, interval=0.005):
    """Runnable threads on the machine besides the caller, from
    `/proc/loadavg` (the median of `samples` readings); 0 where it cannot
    be read."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(running - 1)
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, sorted(counts)[len(counts) // 2])


def cpu_threads_for_fit(threads, cores, others, pipeline=False):
    """torch's intra-op threads for a `fit` on the CPU: `threads` (its
    setting) but no more than the cores that no other runnable task uses,
    less one core for a tf.data input pipeline (`pipeline`), and at least
    1. OpenMP threads that share a core with other work wait for each
    other at every parallel op."""
    return max(1, min(threads, cores - others - int(pipeline)))


def process_count():
    """The processes of the default `torch.distributed` group; 1 when
    there is none."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _mean(tensor):
    """`tensor` averaged over every process."""
    tensor = tensor.detach().clone()
    torch.distributed.all_reduce(tensor)
    return tensor / process_count()


def _sum(tensor):
    """`tensor` summed over every process."""
    tensor = tensor.detach().clone()
    torch.distributed.all_reduce(tensor)
    return tensor


def _gather(tensors):
    """Every tensor of the structure, concatenated over the processes along
    the batch axis (process order)."""

    def gather(t):
        if t is None:
            return None
        t = t.detach().contiguous()
        parts = [torch.empty_like(t) for _ in range(process_count())]
        torch.distributed.all_gather(parts, t)
        return torch.cat(parts)

    return keras.tree.map_structure(gather, tensors, none_is_leaf=True)


def _average_gradients(grads):
    """The gradients averaged over every process, in one all-reduce."""
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    flat = torch.cat([g.reshape(-1) for g in present])
    torch.distributed.all_reduce(flat)
    flat /= process_count()
    out, offset = [], 0
    for g in grads:
        if g is None:
            out.append(None)
            continue
        out.append(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return out


class StepMixin(TrainingStep):
    def _loss_and_gradients(self, batch, scale=None):
        def scaled(loss):
            return loss if scale is None else loss * scale

        self.zero_grad()
        with summing_over_replicas(_sum if process_count() > 1 else None):
            total, aux = self._compute_loss(batch, training=True)
        values = [v.value for v in self.trainable_variables]
        head_grads = {
            h: list(
                torch.autograd.grad(
                    scaled(aux[1][i]),
                    values,
                    retain_graph=True,
                    allow_unused=True,
                )
            )
            for h, i in self._head_gradient_indices().items()
        }
        scaled(total).backward()
        grads = [v.value.grad for v in self.trainable_variables]
        if process_count() > 1:
            grads = _average_gradients(grads)
            head_grads = {
                h: _average_gradients(g) for h, g in head_grads.items()
            }
        return total, aux, grads, head_grads

    def _state_scope(self):
        return torch.no_grad()

    def _global_batch(self, y, logits, features, held_out_losses):
        """With several processes: labels, logits and features gathered
        from every process, held-out losses averaged."""
        if process_count() == 1:
            return y, logits, features, held_out_losses
        y, logits, features = _gather((y, logits, features))
        return y, logits, features, _mean(held_out_losses)

    def _any_replica(self, flags):
        """With several processes, the fault flags summed over all of
        them: every process skips the step and `NonFiniteGuard` stops
        `fit` on every one (a process that went on alone would wait for
        the others forever)."""
        if process_count() == 1:
            return flags
        flags = flags.detach().clone()
        torch.distributed.all_reduce(flags)
        return flags

    def _held_out_batches(self, dataset):
        """Torch tensors: `torch.compile` (`jit_compile=True`) cannot trace
        numpy arrays that wrap TensorFlow buffers, which tf.data's numpy
        iterator yields."""
        for batch in super()._held_out_batches(dataset):
            yield keras.tree.map_structure(keras.ops.convert_to_tensor, batch)

    @contextlib.contextmanager
    def _fit_scope(self, x=None):
        """On a CPU, torch's threads for this `fit` (`cpu_threads_for_fit`,
        a core left to tf.data when `x` is a `tf.data.Dataset`) and back
        to the setting after it; unchanged where `OMP_NUM_THREADS` is set,
        on a GPU or in a process group."""
        threads = torch.get_num_threads()
        chosen = threads
        if (
            threads > 1
            and "OMP_NUM_THREADS" not in os.environ
            and keras.src.backend.torch.core.get_device() == "cpu"
            and process_count() == 1
        ):
            chosen = cpu_threads_for_fit(
                threads,
                len(os.sched_getaffinity(0)),
                other_running_tasks(),
                pipeline=isinstance(x, tf.data.Dataset),
            )
        if chosen == threads:
            yield
            return
        torch.set_num_threads(chosen)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function

        def train_function(data):
            data = data[resume.batches_to_pass(self, len(data)) :]
            if not data:
                return resume.passed_logs(self)
            feed = self._held_out_feed
            if feed is not None:
                data = [feed.merge(batch) for batch in data]
            return step(data)

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        return self._train_step(data)

    def test_step(self, data):
        return self._test_step(data)
