"""One LightningDataModule per dataset; each knows only its own on-disk format."""

from datamodules.airbus import AirbusDataModule
from datamodules.synthetic import SyntheticDataModule

__all__ = ["AirbusDataModule", "SyntheticDataModule"]
