"""Tiny fixtures in the real on-disk layouts, written into tmp_path.

Helpers live here (imported by the tests by this unique module name);
`conftest.py` registers the fixtures.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SR = 22050


def tone(seconds, sr=SR, freq=440.0, seed=0):
    """A tone plus noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t) + 0.1 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def write_wav(path, wave, sr=SR):
    import soundfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, wave, sr, subtype="PCM_16")


def write_jpeg(path, seed=0, size=(24, 32)):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size + (3,), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_frames(folder, n=3, seed=0):
    for i in range(n):
        write_jpeg(os.path.join(folder, f"{i + 1:05d}.jpg"), seed + i)


CREMAD_LABELS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


@pytest.fixture
def cremad_root(tmp_path):
    """CREMA-D layout: 9 train and 3 test clips, 2 frames each."""
    root = tmp_path / "cremad"
    rows = []
    for i in range(12):
        label = CREMAD_LABELS[i % 6]
        clip = f"10{i:02d}_DFA_{label}_XX"
        write_wav(str(root / "AudioWAV" / f"{clip}.wav"), tone(1.2, seed=i))
        write_frames(str(root / "Image-01-FPS" / clip), n=2, seed=i)
        rows.append(f"{clip},{label}\n")
    (root / "train.csv").write_text("".join(rows[:9]))
    (root / "test.csv").write_text("".join(rows[9:]))
    return root


def _av_clips(root, names, audio_dir, sr=16000, seconds=2.0, frames=4):
    for i, name in enumerate(names):
        write_wav(
            str(root / audio_dir / f"{name}.wav"),
            tone(seconds, sr=sr, seed=i),
            sr=sr,
        )
        write_frames(str(root / "Image-01-FPS" / name), n=frames, seed=i)


@pytest.fixture
def ks_root(tmp_path):
    """Kinetics-Sounds layout: 4 train, 2 test clips, 3 classes."""
    root = tmp_path / "ks"
    labels = ["playing bagpipes", "dog barking", "singing"]
    train = [(f"vid{i}_0_10", labels[i % 3]) for i in range(4)]
    test = [(f"tst{i}_0_10", labels[i % 3]) for i in range(2)]
    _av_clips(root, [c for c, _ in train], "audio_train")
    _av_clips(root, [c for c, _ in test], "audio_test")
    (root / "my_train.txt").write_text(
        "".join(f"{c},10,{lab}\n" for c, lab in train)
    )
    (root / "my_test.txt").write_text(
        "".join(f"{c},10,{lab}\n" for c, lab in test)
    )
    return root


@pytest.fixture
def vggsound_root(tmp_path):
    """VGGSound layout: 3 train, 2 test clips in vggsound.csv."""
    root = tmp_path / "vggsound"
    rows = [
        ("abc", 30, "dog barking", "train"),
        ("def", 0, "cat meowing", "train"),
        ("ghi", 12, "dog barking", "train"),
        ("jkl", 5, "cat meowing", "test"),
        ("mno", 7, "dog barking", "test"),
    ]
    for split in ("train", "test"):
        names = [f"{y}_{s:06d}" for y, s, _, sp in rows if sp == split]
        _av_clips(root, names, f"audio_{split}", seconds=1.5)
    (root / "vggsound.csv").write_text(
        "".join(f"{y},{s},{lab},{sp}\n" for y, s, lab, sp in rows)
    )
    return root


@pytest.fixture
def ave_root(tmp_path):
    """AVE layout: 3 train, 1 val, 2 test clips with event intervals."""
    root = tmp_path / "ave"
    cats = ["Church bell", "Dog", "Violin"]
    splits = {
        "trainSet.txt": [(0, "tr0", 0, 10), (1, "tr1", 2, 5), (2, "tr2", 3, 9)],
        "valSet.txt": [(1, "va0", 0, 4)],
        "testSet.txt": [(2, "te0", 1, 3), (0, "te1", 6, 10)],
    }
    for fname, rows in splits.items():
        _av_clips(root, [r[1] for r in rows], "AudioWAV", seconds=2.0)
        lines = ["Category&VideoID&Quality&StartTime&EndTime\n"]
        lines += [f"{cats[c]}&{v}&good&{s}&{e}\n" for c, v, s, e in rows]
        (root / fname).write_text("".join(lines))
    return root


def write_depth_png(path, depth_m):
    from PIL import Image

    from keras_olm.data import encode_sunrgbd_depth

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(encode_sunrgbd_depth(depth_m)).save(path)


SUN_SAMPLES = [
    ("kv1/NYUdata/NYU0001", "bedroom"),
    ("kv1/NYUdata/NYU0002", "kitchen"),
    ("kv2/kinect2data/000002_2014-05-26", "office"),
    ("kv2/align_kv2/000003", "bedroom"),
    ("realsense/lg/2014_10_24-1", "kitchen"),
    ("realsense/sa/2014_10_25-2", "office"),
    ("xtion/sun3ddata/mit_1/0001", "bathroom"),
    ("xtion/xtion_align_data/0002", "corridor"),
    ("kv1/b3dodata/img_0063", "bedroom"),
    ("kv2/kinect2data/000010", "office"),
    ("xtion/sun3ddata/mit_2/0003", "gym"),  # Not one of the 19 classes.
]


@pytest.fixture
def sunrgbd_root(tmp_path):
    """SUN RGB-D layout with train.txt/test.txt; 1 out-of-protocol scene."""
    root = tmp_path / "SUNRGBD"
    for i, (rel, scene) in enumerate(SUN_SAMPLES):
        folder = root / rel
        name = rel.split("/")[-1]
        write_jpeg(str(folder / "image" / f"{name}.jpg"), seed=i)
        depth = np.full((24, 32), 0.5 + 0.25 * i)
        depth[0, 0] = 0.0  # A hole.
        write_depth_png(str(folder / "depth" / f"{name}.png"), depth)
        write_depth_png(str(folder / "depth_bfx" / f"{name}.png"), depth + 1)
        (folder / "scene.txt").write_text(scene + "\n")
        (folder / "intrinsics.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    train = [r for i, (r, _) in enumerate(SUN_SAMPLES) if i % 3 != 2]
    test = [r for i, (r, _) in enumerate(SUN_SAMPLES) if i % 3 == 2]
    (root / "train.txt").write_text("".join(r + "\n" for r in train))
    (root / "test.txt").write_text("".join(r + "\n" for r in test))
    return root
