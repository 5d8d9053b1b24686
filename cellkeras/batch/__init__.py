"""Batch inference and detection over many image files on Apache Beam (`cellkeras batch`).

```
from cellkeras.batch import BatchConfig, read_results, run_batch
```

Needs the `beam` extra (`pip install "cellkeras[beam]"`); names load on first use, so importing
`cellkeras.batch` (and `cellkeras --help`) needs neither Beam nor TensorFlow. See docs/BATCH.md.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "pipeline": [
            "BatchConfig",
            "BatchResults",
            "ClassifyModelHandler",
            "DetectModelHandler",
            "Failure",
            "KerasModelHandler",
            "build_pipeline",
            "check_inputs",
            "prepare_output",
            "read_results",
            "run_batch",
        ],
    },
)
