"""Inference: load a trained model (a `.keras` file, a run folder or an export) with what it
expects of its inputs, prepare images the way training did, and classify them.

```
model, info = load_model_for_inference("exports/cells")
rows = classify_images(model, info, paths)
```
"""
