"""Rig importers: calibrations in other projects' formats to this project's rig file.

- ``surround-view-yaml``: OpenCV FileStorage YAML per camera (fisheye K, D, undistortion scale/shift,
  ``project_matrix`` to a 1 cm canvas) -> ground-homography cameras (``import_surround_view``).
- ``kdt-json``: K / D / T_camera_from_ground JSON with named ground axes and a units factor -> posed
  fisheye cameras (``import_kdt_json``).
- ``ocam-json``: Scaramuzza OCam intrinsics and extrinsics from a virtual top-down camera -> posed OCam
  cameras (``import_ocam_json``).
- ``woodscape-json``: WoodScape's per-camera JSON (quaternion x y z w, radial polynomial rho(theta)) ->
  posed OCam-form cameras, exactly (``import_woodscape_json``).
- ``camera-info``: ROS ``sensor_msgs/CameraInfo`` YAML per camera (equidistant, plumb_bob,
  rational_polynomial) and a poses file -> posed fisheye or pinhole cameras (``import_camera_info``).

Each returns an ``ImportedRig`` (the rig, validated by the rig file's own round trip, and a description
of where it came from and what was assumed); ``write_imported`` saves it and loads it back.
"""

from __future__ import annotations

from bev_service.calib.import_camera_info import import_camera_info
from bev_service.calib.import_common import ImportedRig, write_imported
from bev_service.calib.import_kdt_json import import_kdt_json
from bev_service.calib.import_ocam_json import import_ocam_json
from bev_service.calib.import_surround_view import SurroundCanvas, import_surround_view_yaml
from bev_service.calib.import_woodscape_json import import_woodscape_json

FORMATS = ("surround-view-yaml", "kdt-json", "ocam-json", "woodscape-json", "camera-info")

__all__ = [
    "FORMATS",
    "ImportedRig",
    "SurroundCanvas",
    "import_camera_info",
    "import_kdt_json",
    "import_ocam_json",
    "import_surround_view_yaml",
    "import_woodscape_json",
    "write_imported",
]
