"""`cellkeras batch` on Beam's Dask runner against a local `dask.distributed` cluster.

Two worker processes on 127.0.0.1, started and stopped by the module's fixture. Every output
must be byte for byte what the DirectRunner writes, including `errors.csv` for a corrupt file
and the outputs of `--resume` after the launcher of a Dask run was killed.
"""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam")
distributed = pytest.importorskip("distributed")

from cellkeras import cli  # noqa: E402
from tests.conftest import write_png  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
# Grad-CAM, no gate and a mid threshold, so random images still give boxes to compare.
DETECT = ["--detect", "--method", "gradcam", "--gate", "0", "--threshold", "0.5"]


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {seconds} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes (one thread each) on loopback, and a client."""
    env = {
        # The workers import this checkout's cellkeras, as the launcher does.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env=env,
        ) as local,
        distributed.Client(local, timeout=60) as client,
    ):
        yield local.scheduler_address, client


def scheduler_tasks(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def idle(client) -> bool:
    """No task left on the scheduler and none running on a worker (a task the scheduler gave
    up on keeps its thread until it ends)."""
    running = client.run(lambda dask_worker: len(dask_worker.state.all_running_tasks))
    return scheduler_tasks(client) == 0 and not any(running.values())


@pytest.fixture(scope="module")
def data(exported, tmp_path_factory):
    """13 PNGs of several sizes, a corrupt one, and the DirectRunner's outputs for them."""
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("dask")
    for k in range(13):
        pixels = rng.integers(0, 255, (20 + 2 * (k % 4), 24 + k % 3, 3), dtype=np.uint8)
        write_png(folder / "in" / f"img{k:02d}.png", pixels)
    (folder / "in" / "broken.png").write_bytes(b"this is not a PNG at all")
    command = [
        "batch",
        "--input",
        str(folder / "in" / "*.png"),
        "--model",
        str(exported),
        "--batch_size",
        "2",
        "--num_shards",
        "3",
    ]
    reference = folder / "direct"
    assert (
        cli.main([*command, *DETECT, "--save_heatmaps", "--out", str(reference), *IN_MEMORY]) == 1
    )
    return folder, command, reference


def files_of(out: Path) -> dict[str, bytes]:
    """Every file under `out` by relative name; batch.json without its `seconds`."""
    found = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "batch.json":
                manifest = json.loads(data)
                del manifest["seconds"]
                data = json.dumps(manifest, sort_keys=True).encode()
            found[str(path.relative_to(out))] = data
    return found


def test_the_dask_runner_writes_what_the_direct_runner_writes(cluster, data, capsys):
    address, client = cluster
    folder, command, reference = data
    out = folder / "on_dask"
    dask = ["--runner=DaskRunner", f"--dask_client_address={address}", "--dask_npartitions=4"]
    argv = [*command, *DETECT, "--save_heatmaps", "--out", str(out), "--", *dask]
    assert cli.main(argv) == 1  # the corrupt file
    printed = capsys.readouterr()
    assert "13 decoded, 13 classified, 13 with detections, 1 error(s)" in printed.out

    want, got = files_of(reference), files_of(out)
    assert sorted(got) == sorted(want)  # nothing missing, nothing left behind (no beam-temp-*)
    assert [name for name in want if got[name] != want[name]] == []
    assert sum(name.startswith("heatmaps/") for name in got) == 13
    with open(out / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    assert [(e["path"], e["stage"]) for e in errors] == [
        (str(folder / "in" / "broken.png"), "decode")
    ]
    assert errors[0]["reason"].startswith("not a recognised image")
    rows = sum(len(s.read_text().splitlines()) - 1 for s in out.glob("predictions-*.csv"))
    assert rows == 13
    # The model ran in the cluster's worker processes (not only in this launcher, which loaded
    # it for the DirectRunner's reference). Not "in both": Dask's scheduler may give every
    # partition to the worker that is free first.
    ran = client.run(lambda: "cellkeras.inference.predict" in sys.modules)
    assert True in ran.values()
    wait_for(lambda: idle(client), 30, "the cluster to be idle")


def _stall_after_two_saves(markers: str) -> None:
    """On a worker: once it has saved two results to the checkpoint, its next save waits until
    `markers/release` exists (at most 2 min), so the run cannot end before the test kills its
    launcher, and the images after those two are not saved."""
    import itertools

    from cellkeras.batch import checkpoint

    original = checkpoint.CheckpointFn._flush
    saves = itertools.count(1)

    def flush(self):
        if self._pending and next(saves) == 3:
            Path(markers, f"stalled-{os.getpid()}").touch()
            deadline = time.monotonic() + 120
            while not Path(markers, "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        original(self)

    checkpoint.CheckpointFn._flush = flush
    checkpoint.CheckpointFn.unpatched = original


def _unstall() -> None:
    from cellkeras.batch import checkpoint

    checkpoint.CheckpointFn._flush = checkpoint.CheckpointFn.unpatched


def test_a_killed_dask_run_resumes_to_the_direct_runners_outputs(cluster, data, tmp_path):
    address, client = cluster
    folder, command, reference = data
    out, markers = tmp_path / "killed", tmp_path / "markers"
    markers.mkdir()
    dask = [
        "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
        f"--dask_client_address={address}",
        "--dask_npartitions=4",
    ]
    argv = [*command, "--out", str(out), "--checkpoint_every", "1", "--", *dask]
    client.run(_stall_after_two_saves, str(markers))
    try:
        with open(tmp_path / "launcher.log", "wb") as log:
            launcher = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from cellkeras import cli; sys.exit(cli.main(sys.argv[1:]))",
                    *argv,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
            try:
                wait_for(
                    lambda: any(markers.glob("stalled-*")) or launcher.poll() is not None,
                    # Under load the launcher and the workers take a minute or more to import
                    # TensorFlow and load the model.
                    300,
                    "a worker to save two results",
                )
                # The other worker, if it gets two images to save.
                with contextlib.suppress(TimeoutError):
                    wait_for(lambda: len(list(markers.glob("stalled-*"))) == 2, 10, "")
            finally:
                launcher.send_signal(signal.SIGKILL)  # as a closed terminal or a dead laptop
                launcher.wait(30)
        assert launcher.returncode == -signal.SIGKILL, (tmp_path / "launcher.log").read_text()
        # Only once the scheduler has dropped the run (its client is gone) may the stalled
        # tasks go on: released earlier, the workers would start the tasks queued behind them.
        wait_for(lambda: scheduler_tasks(client) == 0, 60, "the scheduler to drop the run")
    finally:
        (markers / "release").touch()
        wait_for(lambda: idle(client), 60, "the killed run's last tasks to end")
        client.run(_unstall)
    assert not (out / "batch.json").exists() and not list(out.glob("predictions-*"))
    saved = list((out / "_checkpoint").glob("predictions-*.jsonl"))
    assert 2 <= len(saved) < 13  # one file per image (--checkpoint_every 1)

    assert cli.main([*command, "--out", str(out), "--resume", "--", *dask]) == 1
    counters = json.loads((out / "batch.json").read_text())["counters"]
    assert counters["images_resumed"] >= 2 and counters["images_classified"] >= 1
    assert counters["images_resumed"] + counters["images_classified"] == 13
    assert counters["errors"] == 1
    want, got = files_of(reference), files_of(out)
    # Classification only here: the DirectRunner's predictions and errors, byte for byte.
    names = sorted(n for n in want if n.startswith(("predictions-", "errors")))
    assert sorted(n for n in got if n != "batch.json" and n != "model.keras") == names
    assert [n for n in names if got[n] != want[n]] == []
