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

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "checkpoint": ["prepare_output"],
        "config": ["BatchConfig"],
        "handlers": ["ClassifyModelHandler", "DetectModelHandler", "Failure", "KerasModelHandler"],
        "outputs": ["BatchResults", "read_results"],
        "pipeline": ["build_pipeline", "check_inputs", "run_batch", "runner_options"],
    },
)
