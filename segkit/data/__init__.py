"""Format-level building blocks shared by the datamodules."""
