"""File formats and calibration tools: the rig YAML, importers, intrinsics, homographies and poses, coverage."""
