"""Video to frames + audio: the preprocessing step of the audio-visual sets.

Uses PyAV (`pip install av`; its wheels bundle FFmpeg) to turn each video
(`.mp4`, `.flv`, ...) into the layout the readers read:

```
<out_root>/Image-01-FPS/<clip>/00001.jpg, 00002.jpg, ...   1 frame a second
<out_root>/AudioWAV/<clip>.wav                             16-bit PCM
```

Frame `i` (1-based) is the first decoded frame at or after `(i - 1) / fps`
seconds. The audio is mixed to mono and resampled to `sample_rate` (the
stream's own rate if `None`).
"""

import os

import numpy as np

from keras_olm.data.errors import DataError
from keras_olm.data.errors import SkipReport
from keras_olm.data.errors import check_on_error

VIDEO_EXTENSIONS = (".mp4", ".flv", ".avi", ".mkv", ".webm", ".mov")


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the install.
        raise ImportError(
            "Extracting frames needs PyAV: `pip install av`."
        ) from e
    return av


def extract_video(
    video_path,
    out_root,
    clip=None,
    fps=1,
    sample_rate=None,
    frames_dirname=None,
    audio_dirname="AudioWAV",
    jpeg_quality=95,
):
    """Extracts the frames (at `fps`) and the audio track of one video.

    Args:
        video_path: str. The video file.
        out_root: str. The dataset root to write into.
        clip: str or None. The clip name. Defaults to the file name
            without its extension.
        fps: int. Frames per second to keep. Defaults to `1`.
        sample_rate: int or None. Audio rate of the WAV. Defaults to `None`
            (the stream's rate).
        frames_dirname: str or None. Defaults to `f"Image-{fps:02d}-FPS"`.
        audio_dirname: str or None. Folder of the WAVs; `None` skips the
            audio. Defaults to `"AudioWAV"`.
        jpeg_quality: int. Defaults to `95`.

    Returns:
        A dict `{"frames": int, "audio": str or None}`: the number of frames
        written and the WAV path (None if the video has no audio stream).

    Example:

    ```python
    extract_video("VideoFlash/1001_DFA_ANG_XX.flv", "/data/CREMA-D")
    ```
    """
    av = _import_av()
    import soundfile

    video_path = os.fspath(video_path)
    clip = clip or os.path.splitext(os.path.basename(video_path))[0]
    frames_dirname = frames_dirname or f"Image-{fps:02d}-FPS"
    frame_dir = os.path.join(out_root, frames_dirname, clip)
    try:
        container = av.open(video_path)
    except Exception as e:
        raise DataError(f"Could not open video {video_path}: {e}") from e
    written = 0
    try:
        with container:
            if not container.streams.video:
                raise DataError(f"{video_path}: no video stream.")
            os.makedirs(frame_dir, exist_ok=True)
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            next_time = 0.0
            for index, frame in enumerate(container.decode(stream)):
                # Streams without timestamps fall back to the frame rate.
                time = frame.time if frame.time is not None else index / rate
                if time + 1e-6 < next_time:
                    continue
                written += 1
                frame.to_image().save(
                    os.path.join(frame_dir, f"{written:05d}.jpg"),
                    quality=jpeg_quality,
                )
                next_time = written / fps
        wav_path = None
        if audio_dirname is not None:
            wave, rate = _read_audio(av, video_path, sample_rate)
            if wave is not None:
                wav_dir = os.path.join(out_root, audio_dirname)
                os.makedirs(wav_dir, exist_ok=True)
                wav_path = os.path.join(wav_dir, f"{clip}.wav")
                soundfile.write(wav_path, wave, rate, subtype="PCM_16")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"Could not decode video {video_path}: {e}") from e
    if written == 0:
        raise DataError(f"{video_path}: no video frames decoded.")
    return {"frames": written, "audio": wav_path}


def _read_audio(av, video_path, sample_rate):
    with av.open(video_path) as container:
        if not container.streams.audio:
            return None, None
        stream = container.streams.audio[0]
        rate = int(sample_rate or stream.rate)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, np.int16), rate
    return np.concatenate(chunks).astype(np.int16), rate


def extract_directory(
    src_dir,
    out_root,
    fps=1,
    sample_rate=None,
    audio_dirname="AudioWAV",
    on_error="raise",
    verbose=True,
):
    """Extracts frames and audio of every video in `src_dir` (with a bar).

    Args:
        src_dir: str. Folder of videos (not recursive); extensions in
            `VIDEO_EXTENSIONS`.
        out_root: str. The dataset root to write into.
        fps: int. Defaults to `1`.
        sample_rate: int or None. Defaults to `None` (the stream's rate).
        audio_dirname: str or None. Defaults to `"AudioWAV"`.
        on_error: str. `"raise"` or `"skip"` (counted in the report).
            Defaults to `"raise"`.
        verbose: bool. Show a progress bar. Defaults to `True`.

    Returns:
        A tuple `(num_extracted, SkipReport)`.

    Example:

    ```python
    n, report = extract_directory("CREMA-D/VideoFlash", "CREMA-D",
                                  sample_rate=22050)
    ```
    """
    check_on_error(on_error)
    if not os.path.isdir(src_dir):
        raise DataError(f"Video folder not found: {src_dir}")
    videos = sorted(
        f for f in os.listdir(src_dir) if f.lower().endswith(VIDEO_EXTENSIONS)
    )
    if not videos:
        raise DataError(f"No video files ({VIDEO_EXTENSIONS}) in {src_dir}.")
    report = SkipReport("extract_frames")
    progbar = None
    if verbose:
        from keras.utils import Progbar

        progbar = Progbar(len(videos), unit_name="video")
    done = 0
    for i, name in enumerate(videos):
        path = os.path.join(src_dir, name)
        try:
            extract_video(
                path,
                out_root,
                fps=fps,
                sample_rate=sample_rate,
                audio_dirname=audio_dirname,
            )
            done += 1
        except DataError as e:
            if on_error == "raise":
                raise
            report.add(path, str(e))
        if progbar is not None:
            progbar.update(i + 1)
    if on_error == "skip":
        report.log()
    return done, report
