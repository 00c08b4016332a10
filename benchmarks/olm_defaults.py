"""The former name of `study.py`: the same command line, methods, records.

    KERAS_BACKEND=tensorflow python benchmarks/olm_defaults.py \\
        --methods joint heads olm --epochs 12 40 100 --seeds 3
    python benchmarks/olm_defaults.py --report benchmarks/results/study.jsonl

See `study.py`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study import main  # noqa: E402

if __name__ == "__main__":
    main()
