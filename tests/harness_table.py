"""The component harness's coverage table, from actual runs.

Runs `tests/test_components.py` once per backend (a child process each,
with `--junitxml`), or reads the XML files of earlier runs, and prints a
Markdown table: one row per component, one column per check, each cell the
outcome on TensorFlow / JAX / torch (`P` passed, `F` failed or error, `X`
expected failure, `S` skipped, `-` not run, e.g. deselected as slow). A
head or `SequenceEncoder` takes checks 3-5 inside its carrier's model: its
cells name the carrier and show the carrier's outcomes.

Usage, from the repository root:

    python tests/harness_table.py                  # runs all 3 backends
    python tests/harness_table.py --xml-dir /tmp/h # reuses /tmp/h/<backend>.xml
    python tests/harness_table.py -- -m ""         # passes `-m ""` to pytest

With `--xml-dir`, a `<backend>.slow.xml` there (a `-m slow` run) is read
too.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")
CHECKS = {
    "test_config_round_trip": "config",
    "test_keras_round_trip": "keras",
    "test_layer_keras_round_trip": "keras",
    "test_resume_equals_straight_run": "resume",
    "test_non_finite_step_changes_nothing": "non_finite",
    "test_one_step_agrees_across_backends": "backends",
    "test_layer_is_carried": "carried",
}
COLUMNS = ("config", "keras", "resume", "non_finite", "backends")
# Worst first: what a cell shows when several tests make it.
ORDER = ("F", "X", "P", "S")


def run(backend, xml_path, pytest_args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        sys.executable,
        "-m",
        "pytest",
        os.path.join(HERE, "test_components.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml_path}",
        *pytest_args,
    ]
    start = time.perf_counter()
    cpu = _children_cpu()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    summary = proc.stdout.strip().splitlines()[-1:] or [""]
    line = f"{backend}: {seconds:.0f} s wall, {cpu:.0f} s CPU; {summary[0]}"
    print(line, file=sys.stderr)
    return line


def _children_cpu():
    """CPU seconds (user + system) of the finished child processes (and
    theirs: the cross-backend children included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def outcomes(xml_path):
    """{(component id, check): [outcome, ...]} of one run."""
    out = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        match = re.match(r"(\w+)\[(.+)\]$", case.get("name"))
        if not match or match.group(1) not in CHECKS:
            continue
        test, params = match.groups()
        component = params
        if test == "test_one_step_agrees_across_backends":
            component = params.rsplit("-", 1)[0]
        children = {child.tag: child for child in case}
        if "failure" in children or "error" in children:
            outcome = "F"
        elif "skipped" in children:
            kind = children["skipped"].get("type", "")
            message = children["skipped"].get("message", "")
            xfail = "xfail" in kind or "xfail" in message
            outcome = "X" if xfail else "S"
        else:
            outcome = "P"
        out.setdefault((component, CHECKS[test]), []).append(outcome)
    return out


def cell(results, component, check):
    letters = []
    for backend in BACKENDS:
        got = results.get(backend, {}).get((component, check), [])
        # Across backends: the current backend against itself is skipped.
        if check == "backends" and len(got) > 1:
            got = [o for o in got if o != "S"] or got
        letters.append(min(got, key=ORDER.index) if got else "-")
    return "/".join(letters)


def table(results):
    # This checkout's keras_olm, not an installed one.
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    import component_harness

    lines = [
        "| component | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for c in component_harness.ALL:
        cells = []
        for check in COLUMNS:
            if c.kind == "layer" and check not in ("config", "keras"):
                carried = cell(results, c.id, "carried")
                via = cell(results, c.carrier, check)
                cells.append(f"via {c.carrier} {via} (carried {carried})")
            else:
                cells.append(cell(results, c.id, check))
        lines.append(f"| {c.id} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xml-dir", help="read <backend>.xml from here")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    directory = args.xml_dir or os.path.join("/tmp", "harness_table")
    os.makedirs(directory, exist_ok=True)
    results, seconds = {}, {}
    for backend in args.backends:
        path = os.path.join(directory, f"{backend}.xml")
        if not args.xml_dir:
            seconds[backend] = run(backend, path, args.pytest_args)
        # `<backend>.slow.xml`: a run of the slow tests (`-m slow`) beside
        # the default one.
        for xml in (path, path.replace(".xml", ".slow.xml")):
            if os.path.exists(xml):
                for key, got in outcomes(xml).items():
                    results.setdefault(backend, {}).setdefault(key, [])
                    results[backend][key] += got
    print(
        "Cells: TensorFlow/JAX/torch; P passed, F failed, X expected "
        "failure, S skipped, - not run.\n"
    )
    print(table(results))
    for line in seconds.values():
        print(f"\n{line}")


if __name__ == "__main__":
    main()
