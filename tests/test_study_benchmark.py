"""`benchmarks/study.py`: methods, records, resuming, the paired report."""

import json
import os
import sys

import pytest

from keras_olm import balancers as olm_balancers

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
)
import study  # noqa: E402  (benchmarks/study.py)


def _record(method, seed, val, test, regime="default", problem="p"):
    record = {
        "problem": problem,
        "method": method,
        "seed": seed,
        "epochs": len(val),
        "curves": [
            {"val": v, "test": {"fused": t}} for v, t in zip(val, test)
        ],
    }
    if regime is not None:
        record["regime"] = regime
    return record


RECORDS = [
    _record("joint", 0, [0.5, 0.7, 0.6], [0.50, 0.60, 0.55]),
    _record("joint", 1, [0.6, 0.5, 0.7], [0.62, 0.58, 0.66]),
    # Two epochs only: counts at 2 epochs, not at 3.
    _record("joint", 2, [0.6, 0.5], [0.70, 0.40]),
    _record("olm", 0, [0.6, 0.8, 0.7], [0.61, 0.70, 0.64]),
    _record("olm", 1, [0.9, 0.5, 0.6], [0.72, 0.60, 0.68]),
    # A record without a regime is the default regime's.
    _record("heads", 0, [0.1, 0.2, 0.3], [0.50, 0.60, 0.63], regime=None),
    # Another regime: its own table, never paired with the default's.
    _record("joint", 0, [0.1, 0.2, 0.3], [0.10, 0.10, 0.10], "authors"),
]


def _rows(text, title):
    """The cells of the table under the heading that contains `title`."""
    block = text.split(title, 1)[1].split("\n###")[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) > 2 and cells[0] != "problem" and "---" not in line:
            rows[cells[1]] = cells[2:]
    return rows, block


def test_report_pairs_seed_by_seed():
    text = study.report(RECORDS, [2, 3])
    rows, block = _rows(text, "default, 3 epochs")
    # joint at 3 epochs: final 0.55, 0.66; best val (epochs 2, 3) 0.60,
    # 0.66. olm: final 0.64, 0.68; best val (epochs 2, 1) 0.70, 0.72.
    assert rows["joint"][:3] == ["2", "0.605 ± 0.055", "0.630 ± 0.030"]
    assert rows["olm"] == [
        "2",
        "0.660 ± 0.020",
        "0.710 ± 0.010",
        "+0.055 ± 0.035",  # − joint final: +0.09, +0.02
        "+0.080 ± 0.020",  # − joint best val: +0.10, +0.06
        "+0.010 ± 0.000",  # − heads final: seed 0 only, 0.64 - 0.63
        "+0.070 ± 0.000",  # − heads best val: 0.70 - 0.63
        "–",  # no pmr runs
        "–",
    ]
    # heads - joint, seed 0: final 0.63 - 0.55, best val 0.63 - 0.60.
    assert rows["heads"][3:5] == ["+0.080 ± 0.000", "+0.030 ± 0.000"]
    assert rows["heads"][5:7] == ["–", "–"]
    assert "p: olm 0.660 / olm 0.710." in block
    # At 2 epochs joint's third seed counts; olm pairs with seeds 0 and 1.
    rows, _ = _rows(text, "default, 2 epochs")
    # joint at 2: final 0.60, 0.58, 0.40; best val 0.60, 0.62, 0.70.
    assert rows["joint"][:3] == ["3", "0.527 ± 0.090", "0.640 ± 0.043"]
    # olm at 2: final 0.70, 0.60; best val 0.70, 0.72; joint: final 0.60,
    # 0.58; best val 0.60, 0.62.
    assert rows["olm"][3:5] == ["+0.060 ± 0.040", "+0.100 ± 0.000"]
    rows, _ = _rows(text, "authors, 3 epochs")
    assert list(rows) == ["joint"]
    assert rows["joint"][:3] == ["1", "0.100 ± 0.000", "0.100 ± 0.000"]


def test_summary_counts_the_targets():
    text = study.summary(RECORDS, "olm", [3])
    block = text.split("### olm, default")[1].split("###")[0]
    # Nothing beats olm; it is 5.5 / 8 points above joint.
    assert "| p | 0.000 (olm) / 0.000 (olm) | +0.055 / +0.080 |" in block
    assert (
        "- 3 epochs, 1 problems: within 1 point of the best on 1 (final) "
        "and 1 (best val); at least 1 point above joint on 1 (final) and 1 "
        "(best val)." in block
    )
    text = study.summary(RECORDS, "joint", [3])
    block = text.split("### joint, default")[1].split("###")[0]
    # Final: heads is 8 points above joint on seed 0 (olm 5.5 on seeds 0
    # and 1); best val: olm 8 points (heads 3).
    assert "| p | 0.080 (heads) / 0.080 (olm) | +0.000 / +0.000 |" in block
    assert "within 1 point of the best on 0 (final) and 0 (best val)" in block


def test_methods_follow_the_registry(monkeypatch):
    names = study.study_methods()
    assert names[:4] == ["joint", "heads", "heads+stop", "olm"]
    assert "multihead" not in names and "multihead+stop" not in names
    for name, cls in olm_balancers.REGISTRY.items():
        if name in study.ALIASES:
            continue
        assert name in names
        stop = f"{name}+stop" in names or f"{name}-nostop" in names
        assert stop == cls.accepts_head_stopping, name
    # OLM stops heads by default: `olm` with, `olm-nostop` without.
    assert study.make_balancer("olm", 10).head_stopping is not None
    assert study.make_balancer("olm-nostop", 10).head_stopping is None
    # The default modulates; `olm-closed0` is OLM without modulation.
    assert isinstance(
        study.make_balancer("olm", 10).coefficient_law,
        olm_balancers.LogitLossDescent,
    )
    assert study.make_balancer("olm-closed0+stop", 10).coefficient_law == (
        olm_balancers.ClosedForm(strength=0.0)
    )
    for variant in ("paper", "authors", "closed2", "closed-neg2", "closed0"):
        plain = study.make_balancer(f"olm-{variant}", 10)
        stopped = study.make_balancer(f"olm-{variant}+stop", 10)
        assert plain.head_stopping is None
        assert isinstance(stopped.head_stopping, olm_balancers.HeadStopping)
    authors = study.make_balancer("olm-authors", 17)
    assert authors.rate_estimate.warmup_steps == 17
    assert study.make_balancer("olm-closed-neg2", 1).coefficient_law == (
        olm_balancers.ClosedForm(strength=-2.0)
    )
    # The former names keep their meaning.
    assert study.make_balancer("joint", 1) is None
    law = study.make_balancer("olm-modulated", 1).coefficient_law
    assert law.strength == -2.0
    assert study.make_balancer("olm-stop2", 1).head_stopping.patience == 40
    with pytest.raises(ValueError, match="Unknown method"):
        study.make_balancer("bogus", 1)
    with pytest.raises(ValueError, match="takes no head_stopping"):
        study.make_balancer("agm+stop", 1)

    # A newly registered balancer joins with no edit.
    class Toy(olm_balancers.Balancer):
        pass

    class ToyJoint(olm_balancers.JointTraining):
        pass

    monkeypatch.setitem(olm_balancers.REGISTRY, "toy", Toy)
    monkeypatch.setitem(olm_balancers.REGISTRY, "toyjoint", ToyJoint)
    names = study.study_methods()
    assert "toy" in names and "toy+stop" in names
    assert "toyjoint" in names and "toyjoint+stop" not in names
    assert isinstance(study.make_balancer("toy+stop", 1), Toy)


def test_runs_records_and_skips_done_runs(tmp_path, monkeypatch):
    out = tmp_path / "study.jsonl"
    argv = [
        "--problems",
        "weak-overfits",
        "--methods",
        "joint",
        "heads+stop",
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--regime",
        "authors",
        "--out",
        str(out),
    ]
    text = study.main(argv)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["regime"]) for r in records] == [
        ("joint", "authors"),
        ("heads+stop", "authors"),
    ]
    for r in records:
        assert r["problem"] == "weak-overfits" and r["seed"] == 0
        assert r["epochs"] == 2 and len(r["curves"]) == 2
        assert r["seconds"] > 0
        assert r["heads"] == ["fast", "slow", "fused"]
        # 1,620 training samples in batches of 96.
        assert r["settings"]["steps_per_epoch"] == 17
        assert r["settings"]["batch_size"] == 96
        assert r["settings"]["l2"] == 1e-4 and r["settings"]["l2_heads"]
        assert r["settings"]["dropout"] == 0.5
        assert 0 < r["curves"][0]["seconds"] < r["curves"][1]["seconds"]
        for row in r["curves"]:
            assert 0.0 <= row["val"] <= 1.0
            assert set(row["test"]) == {"fast", "slow", "fused"}
    stopping = records[1]
    assert all(len(row["gate"]) == 3 for row in stopping["curves"])
    assert set(stopping["stopped_epoch"]) == {"fast", "slow"}
    assert records[0]["stopped_epoch"] == {}
    assert "### authors, 2 epochs" in text
    rows, _ = _rows(text, "authors, 2 epochs")
    assert list(rows) == ["joint", "heads+stop"]

    # A rerun trains nothing: both runs are in the file.
    def fail(*args, **kwargs):
        raise AssertionError("trained a run the file already holds")

    monkeypatch.setattr(study, "run", fail)
    assert study.main(argv) == text
    assert len(out.read_text().splitlines()) == 2
    # More epochs, another seed or another regime are new runs.
    changes = (["--epochs", "3"], ["--seeds", "2"], ["--regime", "default"])
    for change in changes:
        with pytest.raises(AssertionError, match="already holds"):
            study.main(argv + change)


def test_regimes_regularize_and_drop_out():
    train = study.splits("weak-overfits", 0)[0]
    model, steps = study.build_model(
        "weak-overfits", "heads", "authors", train, 4
    )
    kinds = [type(layer).__name__ for layer in model.encoders["fast"].layers]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout"]
    # Two kernels per encoder and three heads' kernels.
    assert len(model.losses) == 7
    model, _ = study.build_model(
        "weak-overfits", "heads", "authors", train, 4, l2_heads=False
    )
    assert len(model.losses) == 4
    model, steps = study.build_model(
        "weak-overfits", "heads", "default", train, 4
    )
    assert steps == 26 and not model.losses
    assert study.regime_key("authors", l2_heads=False) == "authors-encoder-l2"
    assert study.regime_key("default", l2_heads=False) == "default"


def test_report_command_reads_a_file(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    text = study.main(["--report", str(path), "--epochs", "3"])
    assert text == study.report(RECORDS, [3])
    # --regime keeps one regime's tables; without --epochs, the longest
    # run's count when it reaches none of the regime's (12, 40, 100).
    text = study.main(["--report", str(path), "--regime", "authors"])
    assert "### authors, 3 epochs" in text and "default" not in text
    text = study.main(
        ["--report", str(path), "--paired", "olm", "--epochs", "3"]
    )
    # Seed 0 only has olm, heads and joint: olm - heads 0.64 - 0.63 and
    # 0.70 - 0.63; olm - joint 0.64 - 0.55 and 0.70 - 0.60.
    assert (
        "| default | p | 1 | +0.010 ± 0.000 / +0.070 ± 0.000 | "
        "+0.090 ± 0.000 / +0.100 ± 0.000 | – |" in text
    )
