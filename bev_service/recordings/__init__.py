"""Recorded drives: camera images in (MCAP, rosbag2), frame sets by capture time, BEV grids out (MCAP with
``foxglove.Grid`` and ``nav_msgs/msg/OccupancyGrid``, Parquet, PNG).

    recording = open_recording("drive.mcap", rig.camera_names)          # topics found by camera name
    for t0_ns, t1_ns in time_windows(recording, 60.0):                  # shards of about a minute
        shard = replay_shard(recording, t0_ns, t1_ns, pipeline)         # the frame sets of [t0, t1)
    bounds = window_ns(recording, (12.5, 40.0))                         # 12.5 s to 40 s into it, in log time
    part = time_windows(recording, 60.0, bounds)                        # shards of that part only

Depends on the runtime, the geometry and the class table; nothing below the command line depends on it.
"""

from bev_service.recordings.replay import (
    ReplayedFrameSet,
    ReplayOptions,
    ShardResult,
    iter_shard,
    replay_recordings,
    replay_shard,
    time_windows,
    window_ns,
)
from bev_service.recordings.sources import CameraMessage, Recording, iter_camera_messages, open_recording
from bev_service.recordings.sync import FrameSet, FrameSetGrouper, SkippedFrameSet, group_frame_sets
from bev_service.recordings.topics import match_topics, parse_topic_map

__all__ = [
    "CameraMessage",
    "FrameSet",
    "FrameSetGrouper",
    "Recording",
    "ReplayOptions",
    "ReplayedFrameSet",
    "ShardResult",
    "SkippedFrameSet",
    "group_frame_sets",
    "iter_camera_messages",
    "iter_shard",
    "match_topics",
    "open_recording",
    "parse_topic_map",
    "replay_recordings",
    "replay_shard",
    "time_windows",
    "window_ns",
]
