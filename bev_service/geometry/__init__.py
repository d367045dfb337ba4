"""Pure, vectorised geometry: camera models, transforms, the BEV grid, rigs and lookup tables.

Nothing here does I/O; file formats live in ``bev_service.calib``.
"""
