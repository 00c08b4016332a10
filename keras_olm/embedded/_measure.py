"""Measure how informative each modality of an embedded dataset is.

Reads a generated dataset from disk (the files a reader would read), fits
scikit-learn logistic regressions on simple features of each modality and
of both concatenated, and reports test accuracy: the check behind the
generators' defaults; a quick check, not a benchmark.

```
python -m keras_olm.embedded._measure rgbd_rooms [--root DIR]
python -m keras_olm.embedded._measure av_digits [--root DIR]
```

Needs scikit-learn (the `test` or `speech` extra).
"""

import argparse
import pathlib
import time
import wave

import numpy as np


def _logistic_accuracy(train_x, train_y, test_x, test_y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.05, max_iter=3000)
    )
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def _compare(train, test, names):
    """Accuracy of each modality alone and of all concatenated."""
    out = {}
    for i, name in enumerate(names):
        out[name] = _logistic_accuracy(train[i], train[-1], test[i], test[-1])
    out["fused"] = _logistic_accuracy(
        np.hstack(train[:-1]), train[-1], np.hstack(test[:-1]), test[-1]
    )
    return out


def measure_rgbd_rooms(root):
    """RGB (16x16 pixels) vs depth (16x16 `depth_bfx` metres) vs both."""
    from PIL import Image

    from keras_olm.data.image import decode_depth_bits
    from keras_olm.embedded import rgbd_rooms

    root = pathlib.Path(root)

    def load(split):
        rgb, depth, y = [], [], []
        for rel in (root / f"{split}.txt").read_text().split():
            name = rel.split("/")[-1]
            img = Image.open(root / rel / "image" / f"{name}.jpg")
            img = img.resize((16, 16), Image.BILINEAR)
            raw = np.array(Image.open(root / rel / "depth_bfx" / f"{name}.png"))
            d = decode_depth_bits(raw).astype(np.float32) / 1000
            d = np.asarray(
                Image.fromarray(d).resize((16, 16), Image.BILINEAR), np.float32
            )
            rgb.append(np.asarray(img, np.float32).ravel() / 255)
            depth.append(d.ravel())
            scene = (root / rel / "scene.txt").read_text().strip()
            y.append(rgbd_rooms.CLASSES.index(scene))
        return np.array(rgb), np.array(depth), np.array(y)

    return _compare(load("train"), load("test"), ("rgb", "depth"))


def _audio_features(x, sample_rate=22050):
    """Log band energies of the CREMA-D STFT: stats + a patch at the peak."""
    clip_frames = max(min(len(x), 3 * sample_rate) // 353, 1)
    x = np.tile(x, 3)[: 3 * sample_rate]  # the CREMA-D convention
    n_fft, hop = 512, 353
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    edges = np.unique(np.geomspace(2, 200, 25).astype(int))
    bands = np.log(np.add.reduceat(power, edges, axis=1)[:, :-1] + 1e-7)
    energy = np.convolve(bands[:, 3:15].mean(1), np.ones(9) / 9, "same")
    peak = int(np.argmax(energy[:clip_frames]))
    idx = np.clip(np.arange(peak - 16, peak + 16, 2), 0, len(bands) - 1)
    patch = (bands[idx] + bands[np.clip(idx + 1, 0, len(bands) - 1)]) / 2
    return np.concatenate([bands.mean(0), bands.std(0), patch.ravel()])


def measure_av_digits(root):
    """Audio (log band energies) vs image (16x16 pixels) vs both."""
    from PIL import Image

    from keras_olm.embedded import av_digits

    root = pathlib.Path(root)

    def load(split):
        audio, image, y = [], [], []
        for line in (root / f"{split}.csv").read_text().split():
            clip, label = line.split(",")
            with wave.open(str(root / "AudioWAV" / f"{clip}.wav")) as w:
                pcm = w.readframes(w.getnframes())
            audio.append(_audio_features(np.frombuffer(pcm, "<i2") / 32768.0))
            img = Image.open(root / "Image-01-FPS" / clip / "00000.jpg")
            img = img.convert("L").resize((16, 16), Image.BILINEAR)
            image.append(np.asarray(img, np.float32).ravel() / 255)
            y.append(av_digits.LABELS.index(label))
        return np.array(audio), np.array(image), np.array(y)

    return _compare(load("train"), load("test"), ("audio", "image"))


def main(argv=None):
    from keras_olm import embedded

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["rgbd_rooms", "av_digits"])
    parser.add_argument("--root", default=None, help="dataset directory")
    args = parser.parse_args(argv)
    module = getattr(embedded, args.dataset)
    start = time.time()
    root = module.generate(root=args.root)
    print(f"{root} ready in {time.time() - start:.1f} s")
    measure = globals()[f"measure_{args.dataset}"]
    for name, acc in measure(root).items():
        print(f"{name:>6}: {acc:.3f}")


if __name__ == "__main__":
    main()
