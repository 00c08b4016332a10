"""Diagnostics of balanced multimodal training: the paper's figures, live.

`LogitNormHistory` is a Keras callback that measures, at the end of every
few epochs and on held-out data of your choosing, what Zong et al. (IJCAI
2024) plot to show modality imbalance and what OLM does about it:

- the per-class mean L2 norm of every head's logit vectors (Fig. 1 C-D,
  Fig. 5), raw and multiplied by the head's OLM coefficient (the modulated
  norm, the quantity OLM steers);
- the per-class average logit score (Fig. 1 B, Fig. 6 B and D);
- every head's accuracy (Fig. 1 A, Fig. 6 A and C);
- the balancer's coefficients and rebalancing factors λ, when it has them.

It keeps one tidy table (one row per epoch x head x class), writes it to a
CSV file, draws the figures as PNG files when training ends and, when asked,
writes TensorBoard scalars. The module-level `plot_*` functions draw the
same figures from saved CSV files, so that runs with and without OLM can be
shown side by side, as in the paper's Fig. 5 (A-B against C-D).

Everything here runs on the host, with numpy, on every Keras backend.
Modules: `history` (the callback and `head_statistics`), `tables` (the
CSV file), `plots` (the figures).
"""

from keras_olm.callbacks.history import LogitNormHistory
from keras_olm.callbacks.history import head_statistics
from keras_olm.callbacks.plots import PER_CLASS_VALUES
from keras_olm.callbacks.plots import plot_accuracy
from keras_olm.callbacks.plots import plot_coefficients
from keras_olm.callbacks.plots import plot_diagnostics
from keras_olm.callbacks.plots import plot_logit_norms
from keras_olm.callbacks.tables import CSV_NAME
from keras_olm.callbacks.tables import read_csv
from keras_olm.callbacks.tables import write_csv

__all__ = [
    "CSV_NAME",
    "PER_CLASS_VALUES",
    "LogitNormHistory",
    "head_statistics",
    "plot_accuracy",
    "plot_coefficients",
    "plot_diagnostics",
    "plot_logit_norms",
    "read_csv",
    "write_csv",
]
