"""One LightningDataModule per dataset; each knows only its own on-disk format."""

from datamodules.airbus import AirbusDataModule
from datamodules.buildings import BuildingsDataModule
from datamodules.carvana import CarvanaDataModule
from datamodules.dota import DotaDataModule
from datamodules.folder import FolderDataModule
from datamodules.oilseep import OilSeepDataModule
from datamodules.synthetic import SyntheticDataModule

__all__ = [
    "AirbusDataModule",
    "BuildingsDataModule",
    "CarvanaDataModule",
    "DotaDataModule",
    "FolderDataModule",
    "OilSeepDataModule",
    "SyntheticDataModule",
]
