"""Install check: on each given Python, a fresh venv with every extra and a short end-to-end run.

    python3 scripts/check_install.py 3.10 3.13                  # what .ci/run runs
    python3 scripts/check_install.py 3.12 --venvs /tmp/venvs    # keep the venvs (py3.12/)
    python3 scripts/check_install.py /usr/bin/python3.12        # an interpreter by path
    .venv/bin/python scripts/check_install.py --here            # only the run, in this venv

For each Python (a version, found as `pythonX.Y` on PATH or under pyenv's versions/, or a path)
it makes a venv in a temporary folder and installs the package as the README's commands do
(`venv --upgrade-deps`, `pip install -e ".[cpu,export,tfds,dev]"`, then tensorflow-serving-api
with --no-deps), then runs this script with `--here` in it: scripts/train.py for 3 steps on 40
digit scenes (with its evaluation and the export of SavedModel + ONNX at the end),
scripts/predict.py with ONNX Runtime on a val image, the mask checked, and ONNX Runtime against
TensorFlow on that image. Exit 1 when any step fails or a Python is not found (the places looked
at are named): a version that was not checked is never reported as passing.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = "cpu,export,tfds,dev"
# Installed with --no-deps as in the README: its metadata asks for the full tensorflow wheel.
SERVING_API = "tensorflow-serving-api==2.21.*"
# A hung download or run fails the check instead of using up CI's time.
INSTALL_TIMEOUT = 30 * 60
RUN_TIMEOUT = 15 * 60
TRAIN_OVERRIDES = [
    "epochs=1",
    "steps_per_epoch=3",
    "warmup_epochs=0",
    "digits_train_scenes=40",
    "labeled=8",
    "batch_size=2",
    "eval_batch_size=50",
    "images_to_log=0",
    "export_name=check",
]
VERSIONS_OF = [
    "tensorflow-cpu",
    "keras",
    "numpy",
    "onnxruntime",
    "tf2onnx",
    "onnx",
    "protobuf",
    "tensorflow-datasets",
    "tensorflow-serving-api",
    "grpcio",
    "scikit-learn",
    "matplotlib",
]


class CheckFailed(Exception):
    pass


def run(command, timeout, **kwargs):
    """Runs `command` with its output going to ours; CheckFailed names it when it fails."""
    print("+ " + " ".join(map(str, command)), flush=True)
    try:
        subprocess.run(list(map(str, command)), check=True, timeout=timeout, **kwargs)
    except subprocess.CalledProcessError as error:
        raise CheckFailed(f"exit code {error.returncode}: {' '.join(map(str, command))}") from None
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"no result after {timeout} s: {' '.join(map(str, command))}") from None


def python_version(executable):
    """The "X.Y" of an interpreter, or None when it does not run (e.g. a pyenv shim of a version
    that is installed but not selected: it is on PATH and exits 127)."""
    try:
        result = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def find_python(spec):
    """(interpreter, places looked at) for "3.10" or a path; interpreter is None if none runs."""
    if os.sep in spec:
        return (spec if python_version(spec) else None), [spec]
    if not re.fullmatch(r"3\.\d+", spec):
        raise SystemExit(f"check_install.py: {spec!r}: give a version like 3.10 or a path")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    installed = glob.glob(str(pyenv / f"{spec}.*" / "bin" / f"python{spec}"))
    installed.sort(key=lambda p: [int(n) for n in re.findall(r"\d+", Path(p).parents[1].name)])
    candidates = [shutil.which(f"python{spec}")] + installed[::-1]
    looked = [f"python{spec} on PATH", str(pyenv / f"{spec}.*" / "bin" / f"python{spec}")]
    for candidate in filter(None, candidates):
        if python_version(candidate) == spec:
            return candidate, looked
    return None, looked


def check_python(spec, venv, env):
    """Fresh venv at `venv` from the Python `spec`, the install, the run; seconds of each."""
    python, looked = find_python(spec)
    if python is None:
        raise CheckFailed(f"Python {spec} not found (looked at: {'; '.join(looked)})")
    if venv.exists():
        shutil.rmtree(venv)
    start = time.perf_counter()
    run([python, "-m", "venv", "--upgrade-deps", venv], 300, env=env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--progress-bar", "off"]
    run([*pip, "-e", f"{ROOT}[{EXTRAS}]"], INSTALL_TIMEOUT, env=env)
    run([*pip, "--no-deps", SERVING_API], INSTALL_TIMEOUT, env=env)
    installed = time.perf_counter()
    run([venv / "bin" / "python", Path(__file__).resolve(), "--here"], RUN_TIMEOUT, env=env)
    return installed - start, time.perf_counter() - installed


def check_here(work):
    """The end-to-end run in this interpreter's environment, in the folder `work`."""
    from importlib.metadata import PackageNotFoundError, version

    print(f"check_install.py: Python {sys.version.split()[0]} ({sys.executable})")
    for name in VERSIONS_OF:
        try:
            print(f"  {name} {version(name)}")
        except PackageNotFoundError:
            raise CheckFailed(f"{name} is not installed") from None
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # The extras' imports that the run below does not reach; tensorflow-serving-api's protos
    # were installed with --no-deps, so only an import shows they suit this protobuf.
    imports = (
        "import tensorflow_datasets, grpc, tensorflow_serving.apis.prediction_service_pb2_grpc, "
        "pytest, ppl_tf.serving.local_server"
    )
    run([sys.executable, "-c", imports], RUN_TIMEOUT, env=env)

    out, exported, cache = work / "run", work / "exported", work / "data"
    paths = [f"out={out}", f"export_dir={exported}", f"cache_dir={cache}"]
    run(
        [sys.executable, ROOT / "scripts" / "train.py", *TRAIN_OVERRIDES, *paths],
        RUN_TIMEOUT,
        env=env,
        cwd=work,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics["steps"] != 3:
        raise CheckFailed(f"train.py ran {metrics['steps']} steps, not 3")
    from ppl_tf.inference import METADATA_FILE, ONNX_FILE, SAVED_MODEL_FILE

    version_dir = exported / "check" / "1"
    for name in (SAVED_MODEL_FILE, ONNX_FILE, METADATA_FILE):
        if not (version_dir / name).is_file():
            raise CheckFailed(f"train.py exported no {version_dir / name}")

    (scenes,) = cache.glob("digit_scenes_*")
    image = scenes / "images" / f"{(scenes / 'splits' / 'val.txt').read_text().split()[0]}.png"
    predictions = work / "predictions"
    run(
        [
            sys.executable,
            ROOT / "scripts" / "predict.py",
            exported / "check",
            image,
            "--out",
            predictions,
            "--backend",
            "onnxruntime",
        ],
        RUN_TIMEOUT,
        env=env,
        cwd=work,
    )

    import numpy as np
    from PIL import Image

    from ppl_tf.inference import ExportedModel, read_rgb

    pixels = read_rgb(image)
    num_classes = len(json.loads((version_dir / METADATA_FILE).read_text())["class_names"])
    mask = np.asarray(Image.open(predictions / f"{image.stem}_mask.png"))
    if mask.shape != pixels.shape[:2] or mask.max() >= num_classes:
        raise CheckFailed(f"predict.py's mask: shape {mask.shape}, largest id {mask.max()}")
    ids, onnx_probabilities = ExportedModel(version_dir, "onnxruntime").predict(pixels[None])
    if not np.array_equal(ids[0], mask):
        raise CheckFailed("predict.py's mask is not what ONNX Runtime predicts in this process")
    tf_ids, tf_probabilities = ExportedModel(version_dir, "tensorflow").predict(pixels[None])
    difference = float(np.abs(onnx_probabilities - tf_probabilities).max())
    agreement = float(np.mean(ids == tf_ids))
    # The exporter's own check of the ONNX model (ppl_tf.export), on a real image here.
    if not difference <= 1e-3 or agreement < 0.99:
        raise CheckFailed(
            f"ONNX Runtime and TensorFlow differ: {difference:.2g} in probability, "
            f"{agreement:.4f} of the class ids agree"
        )
    print(
        f"check_install.py: trained 3 steps, exported, predicted a {mask.shape[1]}x"
        f"{mask.shape[0]} image (ONNX Runtime vs TensorFlow: {difference:.1g}): OK"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pythons", nargs="*", help="versions (3.10) or interpreter paths")
    parser.add_argument("--here", action="store_true", help="only the run, in this environment")
    parser.add_argument("--venvs", type=Path, help="keep the venvs here (default: temporary)")
    args = parser.parse_args(argv)
    if args.here == bool(args.pythons):
        parser.error("give Pythons to check, or --here")
    if args.here:
        with tempfile.TemporaryDirectory(prefix="ppl-check-") as work:
            try:
                check_here(Path(work))
            except CheckFailed as error:
                print(f"check_install.py: FAILED: {error}", file=sys.stderr)
                return 1
        return 0

    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)  # the venv's own interpreter is named wherever one is needed
    results = []
    with tempfile.TemporaryDirectory(prefix="ppl-venvs-") as scratch:
        for spec in args.pythons:
            venv = (args.venvs or Path(scratch)) / f"py{Path(spec).name.removeprefix('python')}"
            try:
                seconds = check_python(spec, venv, env)
                results.append(f"{spec}: OK (install {seconds[0]:.0f} s, run {seconds[1]:.0f} s)")
            except CheckFailed as error:
                results.append(f"{spec}: FAILED: {error}")
                print(f"check_install.py: {spec}: FAILED: {error}", file=sys.stderr, flush=True)
    print("check_install.py: summary")
    for line in results:
        print(f"  {line}")
    return 0 if all(": OK (" in line for line in results) else 1


if __name__ == "__main__":
    sys.exit(main())
