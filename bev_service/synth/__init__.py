"""The synthetic surround-view world: procedural, seeded worlds ray-cast through a rig's own camera
models, with exact per-pixel labels, the true BEV grid and the oracle BEV (see docs/synth/README.md).

    world = SyntheticWorld(seed=3)
    frame_set = render_frame_set(rig, world, world.sample_pose(rng), scale=0.5)
    for frame in iter_drive(rig, world, DrivePlan(frames=50, speed_mps=8.0, fps=10.0)): ...
"""

from bev_service.synth.appearance import Appearance, sample_appearance
from bev_service.synth.dataset import iter_frame_sets, read_frame_set, read_manifest, write_dataset, write_drive
from bev_service.synth.drive import DriveFrame, DrivePlan, iter_drive
from bev_service.synth.render import RenderedFrameSet, Renderer, render_frame_set, renderer_for
from bev_service.synth.world import SyntheticWorld, VehiclePose, WorldConfig

__all__ = [
    "Appearance",
    "DriveFrame",
    "DrivePlan",
    "RenderedFrameSet",
    "Renderer",
    "SyntheticWorld",
    "VehiclePose",
    "WorldConfig",
    "iter_drive",
    "iter_frame_sets",
    "read_frame_set",
    "read_manifest",
    "render_frame_set",
    "renderer_for",
    "sample_appearance",
    "write_dataset",
    "write_drive",
]
