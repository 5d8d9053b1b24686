"""Loading exports and checking them offline the way TF Serving would use them.

```
export = load_export("exports/cells")          # the highest version, or pass "exports/cells/3"
export.signatures["serving_default"](image_bytes=tf.constant([png_bytes]))
report = serve_check("exports/cells")           # dict; report["ok"] is the verdict
print(format_report(report))                    # also what `cellkeras serve-check` prints
```

`serve_check` reads the signatures twice: with `saved_model_cli show --all` (a subprocess, when
the command sits beside the running Python or on PATH; it is what TF Serving's users run) and
with `tf.saved_model.load`, whose specs are the ones compared. It then replays every warmup
record, and runs a test image through `serving_default` (and `serving_images`) and through the
exported `model.keras` on the same image decoded by `cellkeras.io.images.decode_image` and
resized as in training: the probabilities must agree within `tolerance`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cellkeras.io.formats import MODEL_FILE
from cellkeras.serving.export import CARD_FILE, TMP_PREFIX, list_versions
from cellkeras.serving.signatures import (
    BYTES_INPUT,
    IMAGES_INPUT,
    SERVING_DEFAULT,
    SERVING_IMAGES,
    resize_images,
)
from cellkeras.serving.warmup import WARMUP_DIR, WARMUP_FILE, read_warmup_requests

DEFAULT_MODEL_NAME = "cellkeras"
DEFAULT_TOLERANCE = 1e-5


@dataclass
class LoadedExport:
    """One loaded version of an export.

    Attributes:
        version_dir: the version folder.
        version: its integer version, or None when the folder name is not an integer.
        saved_model: what `tf.saved_model.load` returned.
        card: the parsed `model_card.json` ({} when the file is missing).
    """

    version_dir: Path
    version: int | None
    saved_model: Any
    card: dict[str, Any]

    @property
    def signatures(self) -> Any:
        """The SavedModel's signatures (`serving_default`, `serving_images`)."""
        return self.saved_model.signatures

    def keras_model(self) -> Any:
        """The exported `model.keras`, loaded in safe mode."""
        import keras

        return keras.saving.load_model(self.version_dir / MODEL_FILE)


def resolve_version_dir(path: str | Path) -> Path:
    """A version folder from an export folder (its highest version) or a version folder.

    Raises:
        FileNotFoundError: when `path` is neither.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"{path} is neither a SavedModel version folder (no saved_model.pb) nor an export "
            "folder with integer version folders"
        )
    return path / str(versions[-1])


def load_export(path: str | Path) -> LoadedExport:
    """Loads an export folder (highest version) or one version folder with its model card."""
    version_dir = resolve_version_dir(path)
    card_path = version_dir / CARD_FILE
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    version = int(version_dir.name) if version_dir.name.isdigit() else None
    return LoadedExport(version_dir, version, tf.saved_model.load(str(version_dir)), card)


def rest_request_example(
    model_name: str = DEFAULT_MODEL_NAME, image: str = "cell.png", host: str = "localhost:8501"
) -> str:
    """The curl line that sends one image file to TF Serving's REST predict API."""
    body = f'{{"instances": [{{"{BYTES_INPUT}": {{"b64": "\'$(base64 -w0 {image})\'"}}}}]}}'
    return f"curl -d '{body}' http://{host}/v1/models/{model_name}:predict"


def docker_command(export_dir: str | Path, model_name: str = DEFAULT_MODEL_NAME) -> str:
    """The docker command that serves an export folder (all its versions) with TF Serving."""
    source = Path(export_dir).resolve()
    return (
        f"docker run --rm -p 8500:8500 -p 8501:8501 "
        f"--mount type=bind,source={source},target=/models/{model_name} "
        f"-e MODEL_NAME={model_name} -t tensorflow/serving"
    )


def _spec(spec: Any) -> dict[str, Any]:
    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    return {"dtype": spec.dtype.name, "shape": shape}


def _signature_specs(saved_model: Any) -> dict[str, Any]:
    specs = {}
    for name, fn in saved_model.signatures.items():
        inputs = fn.structured_input_signature[1]
        specs[name] = {
            "inputs": {key: _spec(value) for key, value in sorted(inputs.items())},
            "outputs": {key: _spec(value) for key, value in sorted(fn.structured_outputs.items())},
        }
    return specs


def _expected_specs(num_classes: int | None, channels: int | None) -> dict[str, Any]:
    outputs = {
        "class_index": {"dtype": "int64", "shape": [None]},
        "class_name": {"dtype": "string", "shape": [None]},
        "probabilities": {"dtype": "float32", "shape": [None, num_classes]},
    }
    return {
        SERVING_DEFAULT: {
            "inputs": {BYTES_INPUT: {"dtype": "string", "shape": [None]}},
            "outputs": outputs,
        },
        SERVING_IMAGES: {
            "inputs": {IMAGES_INPUT: {"dtype": "float32", "shape": [None, None, None, channels]}},
            "outputs": outputs,
        },
    }


def _saved_model_cli() -> str | None:
    beside = Path(sys.executable).parent / "saved_model_cli"
    return str(beside) if beside.is_file() else shutil.which("saved_model_cli")


def _run_saved_model_cli(version_dir: Path) -> tuple[bool, str]:
    cli = _saved_model_cli()
    if cli is None:
        return True, "saved_model_cli not found; signatures read with tf.saved_model.load only"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [cli, "show", "--dir", str(version_dir), "--all"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    shown = f"signature_def['{SERVING_DEFAULT}']" in done.stdout
    if done.returncode != 0 or not shown:
        return False, f"saved_model_cli exited {done.returncode}: {done.stderr.strip()[-2000:]}"
    return True, done.stdout


def _test_image(image_size: list[int], channels: int) -> np.ndarray:
    """A deterministic 8-bit textured image 1.5x the model size, so resizing is exercised."""
    height, width = (int(v * 1.5) + 1 for v in image_size)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = 127 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)
    noise = rng.normal(0, 20, (height, width, channels))
    return np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)


class _Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.items.append({"name": name, "ok": bool(ok), "detail": detail})
        return ok


def _check_layout(checks: _Checks, version_dir: Path) -> None:
    needed = [
        "saved_model.pb",
        "variables/variables.index",
        CARD_FILE,
        MODEL_FILE,
        f"{WARMUP_DIR}/{WARMUP_FILE}",
    ]
    missing = [name for name in needed if not (version_dir / name).exists()]
    detail = f"{version_dir} holds {', '.join(needed)}"
    ok = version_dir.name.isdigit() and not missing
    if not version_dir.name.isdigit():
        detail = f"{version_dir.name!r} is not an integer version TF Serving would load"
    elif missing:
        detail = f"missing in {version_dir}: {', '.join(missing)}"
    stale = sorted(p.name for p in version_dir.parent.glob(f"{TMP_PREFIX}*"))
    if stale:
        detail += f" (unfinished exports to delete: {', '.join(stale)})"
    checks.add("layout", ok, detail)


def _check_signatures(checks: _Checks, specs: dict, card: dict) -> None:
    expected = _expected_specs(card.get("num_classes"), card.get("channels"))
    problems = []
    for name, want in expected.items():
        have = specs.get(name)
        if have is None:
            problems.append(f"no {name} signature (has {sorted(specs)})")
        elif have != want:
            problems.append(f"{name} is {have}, expected {want}")
    checks.add(
        "signatures",
        not problems,
        "; ".join(problems) or f"{SERVING_DEFAULT} and {SERVING_IMAGES} as documented",
    )


def _check_outputs(outputs: dict[str, tf.Tensor], batch: int, classes: list[str]) -> str | None:
    probabilities = outputs["probabilities"].numpy()
    names = [v.decode() for v in outputs["class_name"].numpy()]
    if probabilities.shape[0] != batch:
        return f"{probabilities.shape[0]} rows for a batch of {batch}"
    if not np.all(np.isfinite(probabilities)) or np.abs(probabilities.sum(-1) - 1).max() > 1e-4:
        return "probabilities are not finite or do not sum to 1"
    if classes and names != [classes[i] for i in probabilities.argmax(-1)]:
        return f"class_name {names} does not match the argmax of the probabilities"
    return None


def _check_warmup(checks: _Checks, export: Any, classes: list[str]) -> None:
    path = export.version_dir / WARMUP_DIR / WARMUP_FILE
    try:
        requests = read_warmup_requests(path)
    except Exception as err:  # a missing or corrupt file; the layout check names the first
        checks.add("warmup", False, f"cannot read {path}: {err}")
        return
    problems = []
    for i, request in enumerate(requests):
        fn = export.signatures.get(request.signature_name)
        if fn is None:
            problems.append(f"record {i}: no signature {request.signature_name!r}")
            continue
        try:
            outputs = fn(**{k: tf.constant(v) for k, v in request.inputs.items()})
        except Exception as err:
            problems.append(f"record {i} ({request.signature_name}): {err}")
            continue
        batch = len(next(iter(request.inputs.values())))
        problem = _check_outputs(outputs, batch, classes)
        if problem:
            problems.append(f"record {i} ({request.signature_name}): {problem}")
    ok = bool(requests) and not problems
    names = ", ".join(sorted({r.signature_name for r in requests}))
    if not requests:
        detail = "the warmup file holds no records"
    else:
        detail = "; ".join(problems) or f"{len(requests)} record(s) replayed through {names}"
    checks.add("warmup", ok, detail)


def _check_against_keras(
    checks: _Checks, export: Any, image: str | Path | None, tolerance: float
) -> float | None:
    """Compares serving signatures with model.keras on the same decoded image; max abs diff."""
    from cellkeras.io.images import decode_image, sniff_format

    card = export.card
    size, channels = card["image_size"], card["channels"]
    normalization, classes = card.get("normalization", "range"), card.get("classes", [])
    if image is None:
        data = tf.io.encode_png(_test_image(size, channels if channels in (1, 3) else 1)).numpy()
        source = f"a synthetic {channels}-channel 8-bit PNG"
    else:
        data, source = Path(image).read_bytes(), str(image)
    try:
        model = export.keras_model()
        pixels = decode_image(data, channels, normalization, source=source)
        reference = model(resize_images(pixels[None], size), training=False)
        reference = np.asarray(reference, np.float32)
    except Exception as err:
        checks.add("keras_match", False, f"cannot run {MODEL_FILE} on {source}: {err}")
        return None
    worst = 0.0
    runs = [(SERVING_IMAGES, {IMAGES_INPUT: tf.constant(pixels[None])})]
    if sniff_format(data) == "tiff":
        source += " (TIFF: not decodable in the graph, checked through serving_images only)"
    elif channels in (1, 3):
        runs.insert(0, (SERVING_DEFAULT, {BYTES_INPUT: tf.constant([data])}))
    problems = []
    for name, inputs in runs:
        try:
            outputs = export.signatures[name](**inputs)
        except Exception as err:
            problems.append(f"{name} failed: {err}")
            continue
        diff = float(np.abs(outputs["probabilities"].numpy() - reference).max())
        worst = max(worst, diff)
        if diff >= tolerance:
            problems.append(f"{name} differs from {MODEL_FILE} by {diff:.3g} >= {tolerance:g}")
        problem = _check_outputs(outputs, 1, classes)
        if problem:
            problems.append(f"{name}: {problem}")
    names = " and ".join(name for name, _ in runs)
    detail = f"{names} vs {MODEL_FILE} on {source}: max |diff| {worst:.3g} (< {tolerance:g})"
    checks.add("keras_match", not problems, "; ".join(problems) or detail)
    return worst


def serve_check(
    export_dir: str | Path,
    *,
    image: str | Path | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    use_saved_model_cli: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Checks an export offline as TF Serving would use it; see the module docstring.

    Args:
        export_dir: an export folder (its highest version is checked) or a version folder.
        image: an image file for the Keras comparison; None uses a synthetic PNG.
        model_name: the name the printed docker and curl commands serve the model under.
        use_saved_model_cli: also run `saved_model_cli show --all` when it is installed.
        tolerance: the largest allowed |probability difference| between serving and Keras.

    Returns:
        A JSON-serializable report: `ok`, `checks` (each `name`, `ok`, `detail`),
        `version_dir`, `version`, `versions`, `signatures` (input/output dtypes and shapes),
        `signature_source`, `saved_model_cli` (its output), `max_abs_diff`, `curl`, `docker`.
    """
    checks = _Checks()
    report: dict[str, Any] = {"export_dir": str(Path(export_dir).resolve())}
    try:
        version_dir = resolve_version_dir(export_dir)
    except FileNotFoundError as err:
        checks.add("layout", False, str(err))
        return {**report, "ok": False, "checks": checks.items}
    serving_root = version_dir.parent
    report.update(
        version_dir=str(version_dir.resolve()),
        version=int(version_dir.name) if version_dir.name.isdigit() else None,
        versions=list_versions(serving_root),
        curl=rest_request_example(model_name),
        docker=docker_command(serving_root, model_name),
    )
    _check_layout(checks, version_dir)
    try:
        export = load_export(version_dir)
    except Exception as err:
        checks.add("load", False, f"tf.saved_model.load failed: {err}")
        return {**report, "ok": False, "checks": checks.items}
    specs = _signature_specs(export.saved_model)
    report["signatures"] = specs
    report["signature_source"] = "tf.saved_model.load"
    if use_saved_model_cli and _saved_model_cli() is not None:
        ok, text = _run_saved_model_cli(version_dir)
        checks.add("saved_model_cli", ok, "show --all lists the signatures" if ok else text)
        report["saved_model_cli"] = text
        report["signature_source"] = "saved_model_cli show --all + tf.saved_model.load"
    _check_signatures(checks, specs, export.card)
    classes = export.card.get("classes", [])
    _check_warmup(checks, export, classes)
    if {"image_size", "channels"} <= set(export.card):
        report["max_abs_diff"] = _check_against_keras(checks, export, image, tolerance)
    else:
        checks.add("keras_match", False, f"{CARD_FILE} lacks image_size/channels")
    return {**report, "ok": all(c["ok"] for c in checks.items), "checks": checks.items}


def format_report(report: dict[str, Any]) -> str:
    """The human-readable serve-check report, ending with the docker and curl commands."""
    lines = [f"serve-check {report.get('version_dir', report['export_dir'])}"]
    if report.get("versions"):
        lines[0] += f" (version {report.get('version')} of {report['versions']})"
    for check in report["checks"]:
        lines.append(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    if report.get("signatures"):
        lines.append(f"signatures (read with {report['signature_source']}):")
        for name, spec in report["signatures"].items():

            def show(part: dict) -> str:
                return ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in part.items())

            lines.append(f"  {name}: {show(spec['inputs'])} -> {show(spec['outputs'])}")
    if report.get("docker"):
        lines += ["serve it:", f"  {report['docker']}", "send an image:", f"  {report['curl']}"]
    lines.append("OK" if report["ok"] else "FAILED")
    return "\n".join(lines)
