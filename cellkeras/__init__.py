"""cellkeras: train, explain and serve CNNs on microscope images of cells."""

__version__ = "0.1.0"
