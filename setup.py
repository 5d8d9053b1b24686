"""cellkeras: train, explain and serve CNNs on microscope images of cells."""

from pathlib import Path

from setuptools import find_packages, setup

# The stack is pinned: these versions were checked to work together (TF 2.21 + Keras 3.15 +
# keras-cv 0.9.0 + tf-keras-vis 0.8.7 on Python 3.11).
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "keras-cv==0.9.0",
    "tf-keras-vis==0.8.7",
    "tensorboard==2.21.0",
    # The PredictionLog protos of the serving warmup file; versioned with TensorFlow, and its
    # protobuf range (>=6.31.1,<8) holds beside TensorFlow alone and beside the "beam" extra.
    "tensorflow-serving-api==2.21.0",
    "opencv-python-headless==5.0.0.93",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",
    "scikit-image==0.26.0",
    "absl-py==2.5.1",
    "matplotlib==3.11.2",
    "tifffile==2026.3.3",
    # tifffile's codecs for compressed TIFFs (LZW, Deflate, ZSTD, JPEG, ...); 2026.3.6 is the last
    # release for Python 3.11.
    "imagecodecs==2026.3.6",
    # COCO AP@[.5:.95] in cellkeras.evaluate.detection (COCOeval); needs only numpy.
    "pycocotools==2.0.11",
    # Package __init__s that load their modules on first use (cellkeras --help skips TensorFlow).
    "lazy-loader==0.6",
    # A range, not a pin: apache-beam 2.77 (the "beam" extra) requires pillow<13, and cellkeras
    # only reads image headers with it, which 12.x and 13.x do alike (the full suite passes on both).
    "pillow>=12.1.1,<14",
]

EXTRAS_REQUIRE = {
    # pytest-xdist: `make test` runs the suite on every core, a test file per worker.
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "ruff==0.17.6",
        "portpicker==1.6.0",
        "import-linter==2.16",
    ],
    # Peers that scripts/bench_augment.py measures against; never imported by cellkeras itself.
    # Install with --no-deps (albumentations would pull the non-headless OpenCV):
    #   pip install --no-deps albumentations==2.0.8 albucore==0.0.24 Augmentor==0.2.12 ...
    "bench": [
        "albumentations==2.0.8",
        "albucore==0.0.24",
        "Augmentor==0.2.12",
        # The versions bioimageio.spec (the "bioimageio" extra) brings, so the two extras agree.
        "pydantic==2.14.4",
        "pydantic-core==2.50.5",
        "annotated-types==0.8.0",
        "typing-inspection==0.4.5",
        "stringzilla==5.3.2",
        "simsimd==6.5.16",
    ],
    # `cellkeras batch` (Apache Beam RunInference). It moves protobuf from 7.x to 6.x and pillow
    # to 12.x beside TensorFlow 2.21; the full test suite passes with both. dask and distributed
    # are apache-beam[dask]'s (>=2024.4.2): Beam's Dask runner, which tests/test_batch_dask.py
    # runs on a local cluster.
    "beam": ["apache-beam==2.77.0", "dask==2026.8.0", "distributed==2026.8.0"],
    # `cellkeras export-bioimageio` builds and validates the bioimage.io description with it.
    # An extra, not a requirement: it brings pydantic, httpx, rich and a dozen more packages
    # that nothing else in cellkeras needs (the command says which extra to install when it is
    # missing); `make test` installs it, since tests/test_bioimageio.py runs the validation.
    "bioimageio": ["bioimageio.spec==0.5.14.3"],
}

setup(
    name="cellkeras",
    version="0.1.0",
    description="Train, explain and serve CNNs on microscope images of cells (TensorFlow/Keras).",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["cellkeras", "cellkeras.*", "trainer", "trainer.*"]),
    # The augmentation study's runs (scripts/experiment_augment.py --publish): every trainer
    # report draws the study's figure from them.
    package_data={"cellkeras.augment": ["study_results.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["cellkeras=cellkeras.cli:main"]},
)
