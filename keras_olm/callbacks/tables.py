"""The diagnostics table on disk: the CSV rows of `LogitNormHistory`.

One row per epoch x head x class. `write_csv` writes the rows (the columns
of `COLUMNS` first, then any other column in order of appearance);
`read_csv` reads them back with their types, and `typed_records` gives
records of a pandas DataFrame the same text columns.
"""

import csv
import math
import os

#: Name of the CSV file that `LogitNormHistory` writes under `out_dir`.
CSV_NAME = "olm_diagnostics.csv"

#: The leading columns of every row, in the order the CSV file lists them.
COLUMNS = (
    "epoch",
    "head",
    "class",
    "class_name",
    "count",
    "logit_norm",
    "modulated_norm",
    "logit_score",
    "class_acc",
    "acc",
    "head_logit_norm",
    "coef",
    "lambda",
)
_TEXT_COLUMNS = ("head", "class_name")
_INT_COLUMNS = ("epoch", "class", "count")


def column_order(rows):
    """`COLUMNS`, then the other columns of `rows` in order of appearance."""
    extra = []
    seen = set(COLUMNS)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                extra.append(key)
    return list(COLUMNS) + extra


def write_csv(rows, path):
    """Writes diagnostic rows to a CSV file (atomically).

    Args:
        rows: list of dicts, e.g. `LogitNormHistory.history`.
        path: str. The file to write.
    """
    columns = column_order(rows)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_csv(path):
    """Reads a CSV file written by `LogitNormHistory` into dict rows.

    Args:
        path: str. The file.

    Returns:
        A list of dicts with `epoch`, `class`, `count` as int, `head` and
        `class_name` as str, and every other column as float (NaN where
        empty).
    """
    with open(path, newline="") as f:
        return [_typed(row) for row in csv.DictReader(f)]


def typed_records(frame):
    """The rows of a pandas DataFrame of diagnostics, text columns as str."""
    return [
        {k: (str(v) if k in _TEXT_COLUMNS else v) for k, v in dict(r).items()}
        for r in frame.to_dict("records")
    ]


def _typed(row):
    out = {}
    for key, value in row.items():
        if key in _TEXT_COLUMNS:
            out[key] = value
        elif key in _INT_COLUMNS:
            out[key] = int(float(value))
        else:
            out[key] = float(value) if value not in ("", None) else math.nan
    return out
