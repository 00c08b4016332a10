"""Command line: extract 1-fps frames and WAV audio from a video folder.

Usage:

```
python -m keras_olm.data.extract_frames SRC_DIR OUT_ROOT \
    [--fps 1] [--sample-rate 22050] [--audio-dir AudioWAV] [--skip-errors]
```

writes `OUT_ROOT/Image-01-FPS/<clip>/<idx:05d>.jpg` and
`OUT_ROOT/AudioWAV/<clip>.wav` (see `keras_olm.data.video`).
"""

import argparse
import sys

from keras_olm.data.errors import DataError
from keras_olm.data.video import extract_directory


def main(argv=None):
    """Runs the frame extractor; returns the process exit code.

    Args:
        argv: list of str or None. Arguments (without the program name).
            Defaults to `sys.argv[1:]`.

    Returns:
        int. 0 on success, 1 if a video failed (without `--skip-errors`).
    """
    parser = argparse.ArgumentParser(
        prog="python -m keras_olm.data.extract_frames",
        description="Extract frames at FPS and the audio track (WAV) of "
        "every video in SRC_DIR into the Image-01-FPS/ + AudioWAV/ layout.",
    )
    parser.add_argument("src_dir", help="folder of .mp4/.flv videos")
    parser.add_argument("out_root", help="dataset root to write into")
    parser.add_argument("--fps", type=int, default=1)
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="WAV sample rate (default: the stream's)",
    )
    parser.add_argument(
        "--audio-dir",
        default="AudioWAV",
        help="WAV folder under OUT_ROOT (default AudioWAV)",
    )
    parser.add_argument(
        "--skip-errors",
        action="store_true",
        help="skip unreadable videos (counted and reported) instead of "
        "stopping",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress")
    args = parser.parse_args(argv)
    try:
        done, report = extract_directory(
            args.src_dir,
            args.out_root,
            fps=args.fps,
            sample_rate=args.sample_rate,
            audio_dirname=args.audio_dir,
            on_error="skip" if args.skip_errors else "raise",
            verbose=not args.quiet,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Extracted {done} video(s) into {args.out_root}.")
    if report.count:
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
