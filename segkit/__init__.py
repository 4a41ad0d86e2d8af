"""segkit: semantic segmentation with PyTorch Lightning and Hydra."""

import os

# albumentations checks PyPI for a newer version at import: never phone home.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
