"""noisyseg: MONAI components for 3D segmentation from noisy labels."""

__version__ = "0.1.0"
