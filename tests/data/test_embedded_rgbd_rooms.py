"""The embedded RGB-D rooms: SUN RGB-D layout, depth encoding, cache."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from keras_olm.embedded import _cache
from keras_olm.embedded import rgbd_rooms

TINY = {"samples_per_class": 2, "seed": 0, "verbose": False}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return rgbd_rooms.generate(tmp_path_factory.mktemp("rooms") / "r", **TINY)


def _split(root, name):
    return (root / f"{name}.txt").read_text().splitlines()


def _all_files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != _cache.MARKER
    }


def test_layout(tiny_root):
    train, test = _split(tiny_root, "train"), _split(tiny_root, "test")
    assert len(train) == len(test) == len(rgbd_rooms.CLASSES)
    assert not set(train) & set(test)
    folders = {
        p.parent.relative_to(tiny_root).as_posix()
        for p in tiny_root.glob("*/*/scene.txt")
    }
    assert folders == set(train) | set(test)
    scenes = {"train": set(), "test": set()}
    for split, rows in (("train", train), ("test", test)):
        for rel in rows:
            sensor, name = rel.split("/")
            assert sensor in rgbd_rooms.SENSORS
            folder = tiny_root / rel
            img = Image.open(folder / "image" / f"{name}.jpg")
            assert img.format == "JPEG"
            assert img.size == (64, 64) and img.mode == "RGB"
            for sub in ("depth", "depth_bfx"):
                png = Image.open(folder / sub / f"{name}.png")
                assert png.format == "PNG" and png.mode == "I;16"
                assert np.array(png).dtype == np.uint16
            k = np.loadtxt(folder / "intrinsics.txt")
            assert k.shape == (3, 3) and k[2, 2] == 1 and k[0, 0] > 0
            scene = (folder / "scene.txt").read_text()
            assert scene in rgbd_rooms.CLASSES
            scenes[split].add(scene)
    # Stratified: every class in both splits.
    assert scenes["train"] == scenes["test"] == set(rgbd_rooms.CLASSES)


def test_depth_bit_rotation_round_trip(tiny_root):
    rel = _split(tiny_root, "test")[3]
    folder, name = tiny_root / rel, rel.split("/")[1]
    scene = (folder / "scene.txt").read_text()
    c = rgbd_rooms.CLASSES.index(scene)
    index = int(name.split("_")[1]) - c * TINY["samples_per_class"]
    ref = rgbd_rooms.render_sample(c, index, seed=0)

    for sub in ("depth", "depth_bfx"):
        raw = np.array(Image.open(folder / sub / f"{name}.png"))
        # The SUN RGB-D toolbox's decoding, in 16-bit arithmetic.
        mm = ((raw >> 3) | (raw << 13)).astype(np.uint16)
        np.testing.assert_array_equal(mm, ref[sub])
        assert not np.array_equal(raw, mm)  # the rotation was applied
    bfx = ref["depth_bfx"].astype(np.float64)
    true = ref["depth_true"]
    assert (bfx > 0).all() and 300 < true.min() and true.max() < 9000
    # Sensor noise only: close to the renderer's exact depth.
    assert np.median(np.abs(bfx - true)) < 60
    holes = ref["depth"] == 0
    assert 0 < holes.mean() < 0.5
    np.testing.assert_array_equal(
        ref["depth"][~holes], ref["depth_bfx"][~holes]
    )


def test_class_pairs_share_layout_and_palette():
    pairs = [(c, c + 1) for c in range(0, len(rgbd_rooms.CLASSES) - 1, 2)]
    assert len(pairs) == 9
    for a, b in pairs:
        assert rgbd_rooms.class_layout(a) == rgbd_rooms.class_layout(b)
        assert rgbd_rooms.class_palette(a) == rgbd_rooms.class_palette(b)
        assert not rgbd_rooms.is_palette_variant(a)
        assert rgbd_rooms.is_palette_variant(b)
        assert not rgbd_rooms.has_pillars(a) and rgbd_rooms.has_pillars(b)
    last = len(rgbd_rooms.CLASSES) - 1
    assert rgbd_rooms.class_layout(last) == rgbd_rooms.NUM_LAYOUTS - 1
    assert not rgbd_rooms.has_pillars(last)


def test_pillars_change_only_the_second_class_of_a_pair():
    kw = {"image_size": 32, "dark_fraction": 0.0}
    for c in (2, 3):
        plain = rgbd_rooms.render_sample(c, 0, pillars=0, **kw)
        pillared = rgbd_rooms.render_sample(c, 0, pillars=4, **kw)
        same = np.array_equal(plain["depth_true"], pillared["depth_true"])
        assert same == (not rgbd_rooms.has_pillars(c))
    # Pillars stand in front of the room: they only bring depth nearer.
    assert (pillared["depth_true"] <= plain["depth_true"] + 1e-6).all()
    assert (pillared["depth_true"] < plain["depth_true"] - 1).mean() > 0.05


def test_dark_samples_keep_depth_and_lose_colour():
    kw = {"image_size": 32}
    lit = rgbd_rooms.render_sample(5, 1, dark_fraction=0.0, **kw)
    dark = rgbd_rooms.render_sample(5, 1, dark_fraction=1.0, **kw)
    for key in ("depth", "depth_bfx", "depth_true", "intrinsics"):
        np.testing.assert_array_equal(dark[key], lit[key])
    rgb = dark["rgb"].astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all()
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb.mean() < 0.1 * 255 < lit["rgb"].mean()
    # About a quarter of the samples are dark by default.
    dark_share = np.mean(
        [
            np.ptp(
                rgbd_rooms.render_sample(c, i, image_size=8)["rgb"].astype(int),
                axis=-1,
            ).max()
            == 0
            for c in range(19)
            for i in range(8)
        ]
    )
    assert 0.1 < dark_share < 0.4


def test_deterministic_given_seed(tiny_root, tmp_path):
    again = rgbd_rooms.generate(tmp_path / "again", **TINY)
    assert _all_files(again) == _all_files(tiny_root)
    other = rgbd_rooms.generate(tmp_path / "other", **{**TINY, "seed": 1})
    assert _all_files(other) != _all_files(tiny_root)


def test_cache_reused_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_OLM_CACHE", str(tmp_path / "cache"))
    params = {"samples_per_class": 1, "verbose": False}
    default = _cache.default_dir(
        rgbd_rooms.NAME,
        rgbd_rooms.VERSION,
        {
            "samples_per_class": 1,
            "seed": 0,
            "image_size": 64,
            "test_fraction": 0.5,
            "jpeg_quality": 95,
            "palette_shift": rgbd_rooms.PALETTE_SHIFT,
            "dark_fraction": rgbd_rooms.DARK_FRACTION,
            "pillars": rgbd_rooms.PILLARS,
            "pillar_radius": rgbd_rooms.PILLAR_RADIUS,
            "color_jitter": rgbd_rooms.COLOR_JITTER,
        },
    )
    # Leftovers of an interrupted run: a temp dir and a marker-less target.
    stale = default.parent / f".{default.name}.incomplete-deadbeef"
    (stale / "kv1" / "room_000000").mkdir(parents=True)
    (default / "kv1").mkdir(parents=True)
    root = rgbd_rooms.generate(**params)
    assert root == default.absolute()
    assert _cache.is_complete(root) and len(_split(root, "train")) == 19

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(rgbd_rooms, "render_sample", fail)
    assert rgbd_rooms.generate(**params) == root
    # A different parameter set is a different directory.
    with pytest.raises(AssertionError, match="regenerated"):
        rgbd_rooms.generate(samples_per_class=1, seed=5, verbose=False)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = rgbd_rooms.render_sample

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rgbd_rooms, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        rgbd_rooms.generate(tmp_path / "r", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_explicit_root_guards(tmp_path, tiny_root):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="no complete generated"):
        rgbd_rooms.generate(foreign, **TINY)
    assert (foreign / "mine.txt").exists()
    with pytest.raises(FileExistsError, match="other parameters"):
        rgbd_rooms.generate(tiny_root, **{**TINY, "seed": 3})
    # An empty directory is simply filled.
    empty = tmp_path / "empty"
    empty.mkdir()
    root = rgbd_rooms.generate(empty, samples_per_class=1, verbose=False)
    assert pathlib.Path(root) == empty and _cache.is_complete(empty)


def test_progress_bar(tmp_path, capsys):
    rgbd_rooms.generate(tmp_path / "r", samples_per_class=1, verbose=True)
    out = capsys.readouterr().out
    assert "Generating rgbd_rooms" in out and "19/19" in out


def test_overwrite_regenerates(tmp_path, monkeypatch):
    root = rgbd_rooms.generate(
        tmp_path / "r", samples_per_class=1, verbose=False
    )
    calls = []
    real = rgbd_rooms.render_sample

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rgbd_rooms, "render_sample", counting)
    again = rgbd_rooms.generate(
        root, samples_per_class=1, overwrite=True, verbose=False
    )
    assert again == root and len(calls) == 19 and _cache.is_complete(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
