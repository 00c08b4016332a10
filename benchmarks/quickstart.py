"""Times the README's quick start, as a user pastes it, on each backend.

Extracts the Python block of the README's "Quick start" section, writes it
to a temporary folder and runs it there in a fresh process per backend
(`KERAS_BACKEND`), timing the whole process: imports, the first `fit`
with its tracing, and the nine runs of `compare_balancers`.

    python benchmarks/quickstart.py                  # every backend
    python benchmarks/quickstart.py --backends torch --repeats 2
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def quickstart_code(path=README):
    """The Python block of the `## Quick start` section of `path`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.index("## Quick start")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], re.DOTALL)
    if len(blocks) != 1:
        raise ValueError(
            f"{path}: the Quick start section has {len(blocks)} Python "
            "blocks; expected 1."
        )
    return blocks[0]


def run(code, backend, folder, timeout=1800):
    """Runs `code` in `folder` under `backend`; returns (seconds, output)."""
    script = os.path.join(folder, "quickstart.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(code)
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, env.get("PYTHONPATH")) if p
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(
            f"the quick start failed under {backend} (exit "
            f"{done.returncode}):\n{done.stderr[-3000:]}"
        )
    return seconds, done.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--backends", nargs="+", default=["tensorflow", "jax", "torch"]
    )
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    code = quickstart_code()
    print("| backend | seconds (each repeat) | fused test accuracy (OLM) |")
    print("|---|---|---|")
    for backend in args.backends:
        times, accuracy = [], "–"
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                seconds, out = run(code, backend, folder)
            times.append(f"{seconds:.0f}")
            found = re.search(r"^fused accuracy (\S+)", out, re.MULTILINE)
            accuracy = found.group(1) if found else "–"
        print(f"| {backend} | {', '.join(times)} | {accuracy} |", flush=True)


if __name__ == "__main__":
    main()
