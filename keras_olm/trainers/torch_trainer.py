"""PyTorch steps: gradients from `loss.backward()`.

With a `torch.distributed` process group of several processes (e.g. the
gloo backend, one process per device), every process runs `fit` on its
own shard of each global batch, and the step keeps the processes in
lockstep, as `DistributedDataParallel` does:

- the gradients are averaged over the processes after `backward()`;
- a step is skipped on every process when its loss was not finite on
  any of them, and `fit` then stops on every process (`NonFiniteGuard`);
- the balancer reads the measurements of the whole global batch (labels,
  logits and features gathered from every process, held-out losses
  averaged over them), so every process computes the same new state, the
  one a single device would.

The shards must have the same number of samples on every process.
"""

import keras
import torch

from keras_olm.balancers.base import Balancer
from keras_olm.trainers import step as step_lib
from keras_olm.trainers.step import TrainingStep


def process_count():
    """The processes of the default `torch.distributed` group; 1 when
    there is none."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _all_finite(finite):
    """`finite` and-ed over every process."""
    failed = torch.logical_not(torch.as_tensor(finite)).to(torch.float32)
    torch.distributed.all_reduce(failed)
    return failed == 0


def _mean(tensor):
    """`tensor` averaged over every process."""
    tensor = tensor.detach().clone()
    torch.distributed.all_reduce(tensor)
    return tensor / process_count()


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
    _finite_everywhere = True

    def _loss_and_gradients(self, batch):
        self.zero_grad()
        total, aux = self._compute_loss(batch, training=True)
        total.backward()
        grads = [v.value.grad for v in self.trainable_variables]
        if process_count() > 1:
            grads = _average_gradients(grads)
        return total, aux, grads

    def _state_scope(self):
        return torch.no_grad()

    def _transform_gradients(self, grads, total, y, aux):
        """The shared step's gradient hook. With several processes the
        loss is checked on every one, and a balancer that transforms
        gradients (OGM-GE) reads the whole global batch."""
        if process_count() == 1:
            return super()._transform_gradients(grads, total, y, aux)
        # Finite on every process iff the sum is (the sum only decides
        # that).
        total = total.detach().clone()
        torch.distributed.all_reduce(total)
        self._finite_everywhere = torch.all(torch.isfinite(total))
        if (
            type(self.balancer).transform_gradients
            is Balancer.transform_gradients
        ):
            return super()._transform_gradients(grads, total, y, aux)
        logits, head_losses, features, predictions = aux
        y, logits, features = _gather((y, logits, features))
        grads, finite, _ = super()._transform_gradients(
            grads, total, y, (logits, head_losses, features, predictions)
        )
        # The rest of the step (metrics) reads this process's shard.
        return grads, finite, step_lib._detached(aux)

    def _update_balancer(self, *measurements):
        """The balancer update; with several processes, from the whole
        global batch, the same on every process."""
        if process_count() > 1:
            y, logits, held_out_losses, flag, finite, features = measurements
            y, logits, features = _gather((y, logits, features))
            held_out_losses = _mean(held_out_losses)
            finite = _all_finite(finite)
            measurements = (y, logits, held_out_losses, flag, finite, features)
        super()._update_balancer(*measurements)

    def _held_out_batches(self, dataset):
        """Torch tensors: `torch.compile` (`jit_compile=True`) cannot trace
        numpy arrays that wrap TensorFlow buffers, which tf.data's numpy
        iterator yields."""
        for batch in super()._held_out_batches(dataset):
            yield keras.tree.map_structure(keras.ops.convert_to_tensor, batch)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        step = self.train_function

        def train_function(data):
            feed = self._held_out_feed
            if feed is not None:
                data = [feed.merge(batch) for batch in data]
            return step(data)

        self.train_function = train_function
        return train_function

    def train_step(self, data):
        logs = self._train_step(data)
        if process_count() > 1 and not self._finite_everywhere:
            # A step skipped everywhere stops `fit` everywhere: the
            # processes whose own loss was finite log the total as NaN,
            # for `NonFiniteGuard` (a process that went on alone would
            # wait for the others forever).
            logs["loss"] = torch.tensor(float("nan"))
        return logs

    def test_step(self, data):
        return self._test_step(data)
