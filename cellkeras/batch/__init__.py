"""Batch inference and detection over many image files on Apache Beam (`cellkeras batch`).

```
from cellkeras.batch import BatchConfig, read_results, run_batch
```

Needs the `beam` extra (`pip install "cellkeras[beam]"`); names load on first use, so importing
`cellkeras.batch` (and `cellkeras --help`) needs neither Beam nor TensorFlow. See docs/BATCH.md.

Modules: `config` (BatchConfig, output names), `handlers` (the RunInference model handlers),
`steps` (the per-file DoFns), `outputs` (writing and reading the outputs), `checkpoint`
(crashes, `--resume`, checking OUT), `pipeline` (the graph and `run_batch`).
"""

from cellkeras._lazy import lazy_exports

_EXPORTS = {
    "BatchConfig": "cellkeras.batch.config",
    "BatchResults": "cellkeras.batch.outputs",
    "ClassifyModelHandler": "cellkeras.batch.handlers",
    "DetectModelHandler": "cellkeras.batch.handlers",
    "Failure": "cellkeras.batch.handlers",
    "KerasModelHandler": "cellkeras.batch.handlers",
    "build_pipeline": "cellkeras.batch.pipeline",
    "check_inputs": "cellkeras.batch.pipeline",
    "prepare_output": "cellkeras.batch.checkpoint",
    "read_results": "cellkeras.batch.outputs",
    "run_batch": "cellkeras.batch.pipeline",
    "runner_options": "cellkeras.batch.pipeline",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
