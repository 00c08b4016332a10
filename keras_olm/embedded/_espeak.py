"""In-process espeak-ng speech synthesis through the `espeakng-loader` wheel.

`espeakng-loader` bundles the espeak-ng shared library and its voice data;
this module drives the library's C API with `ctypes` (synchronous mode,
samples collected by a callback), at espeak-ng's native 22,050 Hz.

espeak-ng keeps internal state between utterances in one process, so the
same utterance can differ by a few samples depending on what was spoken
before. `synthesize_batch` therefore runs the whole batch in a fresh Python
subprocess that imports only numpy and ctypes: the same list of utterances
gives bit-identical audio on every call.

Run as a script (`python _espeak.py JOB.json OUT.npz`) it synthesises the
job list and writes the samples; that is how `synthesize_batch` uses it.
espeak-ng is GPL-licensed, which is why `espeakng-loader` is an optional
dependency (the `speech` extra).
"""

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

SAMPLE_RATE = 22050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_DONT_EXIT = 0x8000
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_POS_CHARACTER, _CHARS_UTF8 = 1, 1

MISSING_MESSAGE = (
    "The audio-visual digits dataset synthesises speech with espeak-ng, "
    "which comes from the optional package `espeakng-loader` (espeak-ng is "
    "GPL-licensed, so keras-olm does not depend on it by default). Install "
    "it with `pip install espeakng-loader` or `pip install keras-olm[speech]`."
)


def available():
    """Whether the `espeakng-loader` package is importable."""
    return importlib.util.find_spec("espeakng_loader") is not None


def require():
    """Raise a clear `ImportError` when the speech backend is missing."""
    if not available():
        raise ImportError(MISSING_MESSAGE)


class Synthesizer:
    """espeak-ng loaded once per process; `speak` returns int16 samples."""

    def __init__(self):
        require()
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode("utf-8")
        self.lib.espeak_Initialize.restype = ctypes.c_int
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INIT_DONT_EXIT
        )
        if rate != SAMPLE_RATE:
            raise RuntimeError(
                f"espeak-ng initialisation failed or runs at {rate} Hz "
                f"(expected {SAMPLE_RATE})."
            )
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._chunks = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_short),
            ctypes.c_int,
            ctypes.c_void_p,
        )
        self._callback = callback_type(self._collect)  # keep a reference
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events):
        if num_samples > 0 and wav:
            self._chunks.append(
                np.ctypeslib.as_array(wav, shape=(num_samples,)).copy()
            )
        return 0

    def speak(self, text, voice="en", rate=175, pitch=50):
        """Synthesise `text`; returns int16 samples at 22,050 Hz."""
        if self.lib.espeak_SetVoiceByName(voice.encode("utf-8")) != 0:
            raise ValueError(f"espeak-ng does not know the voice {voice!r}.")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
        self.lib.espeak_ng_SetRandSeed(0)
        self._chunks = []
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}.")
        self.lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, np.int16)
        return np.concatenate(self._chunks).astype(np.int16)


def variants():
    """Names of the voice variants bundled with espeak-ng (`!v` folder)."""
    require()
    import espeakng_loader

    folder = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    return sorted(
        name
        for name in os.listdir(folder)
        if " " not in name and os.path.isfile(os.path.join(folder, name))
    )


def _run_job(job_path, out_path):
    with open(job_path, encoding="utf-8") as f:
        jobs = json.load(f)
    synth = Synthesizer()
    audio = [synth.speak(**job) for job in jobs]
    lengths = np.array([len(a) for a in audio], np.int64)
    flat = np.concatenate(audio) if audio else np.zeros(0, np.int16)
    np.savez(out_path, audio=flat, lengths=lengths)


def synthesize_batch(jobs):
    """Synthesise utterances in a fresh subprocess, bit-reproducibly.

    Args:
        jobs: list of dicts with keys `text`, `voice`, `rate`, `pitch`.

    Returns:
        A list of int16 arrays at 22,050 Hz, one per job.
    """
    require()
    with tempfile.TemporaryDirectory(prefix="keras_olm_espeak_") as tmp:
        job_path = os.path.join(tmp, "jobs.json")
        out_path = os.path.join(tmp, "out.npz")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(list(jobs), f)
        try:
            result = subprocess.run(
                [sys.executable, os.path.abspath(__file__), job_path, out_path],
                capture_output=True,
                text=True,
            )
        except OSError as error:  # no usable interpreter to start
            warnings.warn(
                f"Could not start a synthesis subprocess ({error}); "
                "synthesising in-process, which is not bit-reproducible.",
                stacklevel=2,
            )
            synth = Synthesizer()
            return [synth.speak(**job) for job in jobs]
        if result.returncode != 0:
            raise RuntimeError(
                "espeak-ng synthesis subprocess failed:\n" + result.stderr
            )
        with np.load(out_path) as data:
            flat, lengths = data["audio"], data["lengths"]
    return np.split(flat, np.cumsum(lengths)[:-1])


if __name__ == "__main__":
    _run_job(sys.argv[1], sys.argv[2])
