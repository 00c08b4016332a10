"""Frame + audio extraction from mp4 and flv written with PyAV."""

import numpy as np
import pytest

from keras_olm.data import CremaD
from keras_olm.data import DataError
from keras_olm.data import extract_directory
from keras_olm.data.extract_frames import main

av = pytest.importorskip("av")
soundfile = pytest.importorskip("soundfile")


def write_video(path, container_format, vcodec, seconds=3, fps=10, sr=16000):
    """A 64x48 video whose brightness ramps, with a 440 Hz mono track."""
    with av.open(str(path), "w", format=container_format) as out:
        video = out.add_stream(vcodec, rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=sr)
        audio.layout = "mono"
        for i in range(seconds * fps):
            img = np.full((48, 64, 3), (i * 8) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(seconds * sr) / sr
        x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k in range(0, x.size, 1024):
            chunk = av.AudioFrame.from_ndarray(
                x[None, k : k + 1024], format="flt", layout="mono"
            )
            chunk.sample_rate, chunk.pts = sr, k
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)


@pytest.fixture
def videos(tmp_path):
    src = tmp_path / "VideoFlash"
    src.mkdir()
    write_video(src / "1001_DFA_ANG_XX.mp4", "mp4", "mpeg4")
    write_video(src / "1002_DFA_HAP_XX.flv", "flv", "flv1")
    return src


def test_extract_mp4_and_flv_into_cremad_layout(videos, tmp_path, capsys):
    root = tmp_path / "CREMA-D"
    code = main([str(videos), str(root), "--sample-rate", "22050"])
    assert code == 0
    assert "Extracted 2 video(s)" in capsys.readouterr().out
    for clip in ("1001_DFA_ANG_XX", "1002_DFA_HAP_XX"):
        frames = sorted((root / "Image-01-FPS" / clip).iterdir())
        assert [f.name for f in frames] == [
            "00001.jpg",
            "00002.jpg",
            "00003.jpg",
        ]
        info = soundfile.info(str(root / "AudioWAV" / f"{clip}.wav"))
        assert info.samplerate == 22050 and info.subtype == "PCM_16"
        assert info.duration == pytest.approx(3.0, abs=0.15)
    # Frames follow the video at 1 fps: brightness ramps up second by second.
    from PIL import Image

    means = [
        np.asarray(Image.open(f)).mean()
        for f in sorted((root / "Image-01-FPS" / "1001_DFA_ANG_XX").iterdir())
    ]
    assert means[0] < means[1] < means[2]
    # The extracted layout is what the CREMA-D reader reads.
    (root / "train.csv").write_text("1001_DFA_ANG_XX,ANG\n")
    (root / "test.csv").write_text("1002_DFA_HAP_XX,HAP\n")
    reader = CremaD(root, image_size=(16, 16))
    x, y = next(iter(reader.as_dataset("test", batch_size=1)))
    assert x["audio"].shape == (1, 257, 188, 1) and int(y[0]) == 1


def test_corrupt_video_names_file_or_is_skipped(videos, tmp_path):
    bad = videos / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 nothing else")
    with pytest.raises(DataError, match="broken.mp4"):
        extract_directory(videos, tmp_path / "out", verbose=False)
    done, report = extract_directory(
        videos, tmp_path / "out2", on_error="skip", verbose=False
    )
    assert done == 2 and report.count == 1
    assert report.paths == [str(bad)]
    assert main([str(videos), str(tmp_path / "out3"), "--quiet"]) == 1
