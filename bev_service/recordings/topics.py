"""Which topic of a recording holds which camera of the rig: given (``front=/cam/front/compressed,...``) or found
by name (the one image topic whose name contains the camera's name; of a raw topic and its ``image_transport``
companion, ``X`` and ``X/compressed``, the raw one)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from bev_service.errors import RecordingError


def parse_topic_map(spec: str | None) -> dict[str, str]:
    """``front=/cam/front/compressed,rear=/cam/rear/compressed`` to {camera: topic}; {} for None or ''."""
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        camera, sep, topic = part.strip().partition("=")
        if not sep or not camera or not topic:
            raise RecordingError(f"expected CAMERA=TOPIC in the topic map, got {part.strip()!r}")
        if camera in mapping:
            raise RecordingError(f"camera {camera!r} given twice in the topic map")
        mapping[camera] = topic
    return mapping


def _words(topic: str) -> list[str]:
    return [w for w in re.split(r"[^A-Za-z0-9]+", topic.lower()) if w]


def _companions_as_one(candidates: list[str]) -> list[str]:
    """``[X, X/compressed]`` (in either order) to ``[X]``; any other list unchanged."""
    if len(candidates) == 2:
        short, long = sorted(candidates, key=len)
        if long == f"{short}/compressed":
            return [short]
    return candidates


def match_topics(
    camera_names: Sequence[str], image_topics: Collection[str], given: Mapping[str, str] | None = None, *, source: str
) -> dict[str, str]:
    """{camera: topic} for every camera of the rig, in rig order. A camera the map ``given`` does not name takes the
    image topic that has its name as a word (``/cam/front/compressed``), else the one that contains it; none, or more
    than one, is an error naming ``source``, the camera and the candidates. A raw topic and its compressed
    ``image_transport`` companion (``/cam/front/image_raw`` and ``/cam/front/image_raw/compressed``) are one camera
    published twice: the raw topic is taken, the camera's own pixels without the codec's loss."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(camera_names))
    if unknown:
        raise RecordingError(
            f"{source}: the topic map names {', '.join(map(repr, unknown))}, not a camera of the rig ({', '.join(camera_names)})"
        )
    mapping: dict[str, str] = {}
    for camera in camera_names:
        if camera in given:
            if given[camera] not in image_topics:
                raise RecordingError(
                    f"{source}: camera {camera!r}: topic {given[camera]!r} is not an image topic of the "
                    f"recording (image topics: {', '.join(sorted(image_topics)) or 'none'})"
                )
            mapping[camera] = given[camera]
            continue
        key = camera.lower()
        as_word = [t for t in image_topics if key in _words(t)]
        candidates = _companions_as_one(as_word or [t for t in image_topics if key in t.lower()])
        if len(candidates) != 1:
            found = f"{len(candidates)} match: {', '.join(sorted(candidates))}" if candidates else "none matches"
            raise RecordingError(
                f"{source}: no single image topic for camera {camera!r} ({found}; image topics: "
                f"{', '.join(sorted(image_topics)) or 'none'}); name it with --topics {camera}=TOPIC"
            )
        mapping[camera] = candidates[0]
    twice = sorted({t for t in mapping.values() if list(mapping.values()).count(t) > 1})
    if twice:
        raise RecordingError(f"{source}: topic {twice[0]!r} would feed more than one camera; name them with --topics")
    return mapping
