"""What the three backends' steps share: the defaults of their hooks."""

from keras_olm.trainers.dev_feed import HostFeedMixin


class StepBase(HostFeedMixin):
    """Default hooks of `BalancedMultimodalModel`'s step.

    Each backend's `StepMixin` derives from this and overrides only the
    hooks its backend does differently (TensorFlow compiles the balancer
    update apart; JAX keeps the state apart from the variables during an
    epoch).
    """

    def _update_balancer(self, *measurements):
        """Runs the balancer update in the step as it is."""
        self._balancer_update_fn(*measurements)

    def _sync_training_state(self):
        """Writes the state of the last finished step into the variables;
        nothing to do where the variables are always current."""
