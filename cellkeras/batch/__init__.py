"""Batch inference and detection over many image files on Apache Beam (`cellkeras batch`).

```
from cellkeras.batch import BatchConfig, read_results, run_batch
```

Needs the `beam` extra (`pip install "cellkeras[beam]"`); names load on first use, so importing
`cellkeras.batch` (and `cellkeras --help`) needs neither Beam nor TensorFlow. See docs/BATCH.md.
"""

from cellkeras._lazy import lazy_exports

_EXPORTS = {
    "BatchConfig": "cellkeras.batch.pipeline",
    "BatchResults": "cellkeras.batch.pipeline",
    "ClassifyModelHandler": "cellkeras.batch.pipeline",
    "DetectModelHandler": "cellkeras.batch.pipeline",
    "Failure": "cellkeras.batch.pipeline",
    "KerasModelHandler": "cellkeras.batch.pipeline",
    "build_pipeline": "cellkeras.batch.pipeline",
    "check_inputs": "cellkeras.batch.pipeline",
    "prepare_output": "cellkeras.batch.pipeline",
    "read_results": "cellkeras.batch.pipeline",
    "run_batch": "cellkeras.batch.pipeline",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
