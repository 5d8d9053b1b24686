"""Serving: the versioned SavedModel export, its signatures, warmup records and offline checks.

```
version_dir = export_model(model, "exports/cells", classes=[...], image_size=64, channels=3)
report = serve_check("exports/cells")      # what `cellkeras serve-check` prints
```

`signatures` holds the in-graph preprocessing that must match training (`cellkeras.data`),
`warmup` the `PredictionLog` records TF Serving replays on load, `export` the versioned,
atomic folder and its model card, `check` the offline checks against the Keras model.
"""
