"""The street layout of the synthetic world: roads (straight and curved), junctions, crosswalks and a
parking lot with bays, as vector geometry in the world frame (x, y in metres, z up).

The layout is a city block: a closed ring road (a rounded rectangle: straight sections joined by
quarter arcs) crossed by a street that runs through the whole world, sometimes a second street
that meets it, and a parking lot inside the ring with a driveway to the nearest road. Traffic keeps
to the right; every road has one lane per direction, sometimes a parking lane on each side, a curb,
sometimes a grass verge, and a sidewalk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

ARC_STEP_M = 0.25
STRAIGHT_STEP_M = 1.0
CROSSWALK_DEPTH_M = 3.0


@dataclass(frozen=True)
class Polyline:
    """A polyline in the world plane; a closed one does not repeat its first point."""

    points: FloatArray  # (n, 2)
    closed: bool = False

    @cached_property
    def vertices(self) -> FloatArray:
        """The points, with the first repeated at the end when closed."""
        return np.vstack([self.points, self.points[:1]]) if self.closed else self.points

    @cached_property
    def s(self) -> FloatArray:
        """Arc length at each vertex of ``vertices``."""
        steps = np.linalg.norm(np.diff(self.vertices, axis=0), axis=1)
        return np.concatenate([[0.0], np.cumsum(steps)])

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def at(self, s: FloatArray | float) -> tuple[FloatArray, FloatArray]:
        """Position (..., 2) and heading (rad, ...) at arc length ``s`` (wrapped when closed, clamped when open)."""
        s_arr = np.asarray(s, dtype=np.float64)
        s_arr = np.mod(s_arr, self.length) if self.closed else np.clip(s_arr, 0.0, self.length)
        i = np.clip(np.searchsorted(self.s, s_arr, side="right") - 1, 0, len(self.s) - 2)
        seg = self.vertices[i + 1] - self.vertices[i]
        seg_len = np.maximum(self.s[i + 1] - self.s[i], 1e-12)
        frac = ((s_arr - self.s[i]) / seg_len)[..., None]
        return self.vertices[i] + frac * seg, np.arctan2(seg[..., 1], seg[..., 0])

    def offset(self, distance_m: float) -> Polyline:
        """The parallel polyline ``distance_m`` to the left (negative: to the right)."""
        v = self.vertices
        tangents = np.diff(v, axis=0)
        tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
        if self.closed:
            before = np.roll(tangents, 1, axis=0)
            after = tangents
        else:
            before = np.vstack([tangents[:1], tangents])
            after = np.vstack([tangents, tangents[-1:]])
        mean = before + after
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        normal = np.stack([-mean[:, 1], mean[:, 0]], axis=1)
        # a mitre: stretch the offset where the polyline turns so parallel segments stay parallel
        stretch = 1.0 / np.maximum((mean * after).sum(axis=1), 0.5)
        return Polyline(self.points + distance_m * normal * stretch[:, None], self.closed)

    def reversed(self) -> Polyline:
        return Polyline(self.points[::-1].copy(), self.closed)

    def between(self, s0: float, s1: float, step_m: float = ARC_STEP_M) -> FloatArray:
        """Points from arc length ``s0`` to ``s1`` (s1 > s0), every ``step_m`` and at both ends."""
        n = max(2, int(np.ceil((s1 - s0) / step_m)) + 1)
        return self.at(np.linspace(s0, s1, n))[0]

    def distance(self, points: FloatArray) -> FloatArray:
        """Shortest distance (...) from points (..., 2) to the polyline."""
        p = np.asarray(points, dtype=np.float64)
        flat = p.reshape(-1, 2)
        a, b = self.vertices[:-1], self.vertices[1:]
        ab = b - a
        best = np.full(len(flat), np.inf)
        for start in range(0, len(flat), 2048):  # bounded memory: (chunk, segments) at a time
            q = flat[start : start + 2048, None, :]
            t = np.clip(((q - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
            d = np.linalg.norm(q - (a + t[..., None] * ab), axis=-1)
            best[start : start + 2048] = d.min(axis=1)
        return best.reshape(p.shape[:-1])


@dataclass(frozen=True)
class Section:
    """A stretch of a road's centre line: ``kind`` is "straight" or "arc", from ``s0_m`` to ``s1_m``."""

    kind: str
    s0_m: float
    s1_m: float


@dataclass(frozen=True)
class Road:
    """A two-way road: one lane per direction, optional parking lanes, curb, verge and sidewalk."""

    name: str
    centre: Polyline
    lane_width_m: float
    parking_width_m: float
    curb_width_m: float
    verge_width_m: float
    sidewalk_width_m: float
    sidewalk_paving: bool
    centre_line: str  # "dashed", "solid" or "double"
    centre_line_yellow: bool
    sections: tuple[Section, ...]

    @property
    def carriageway_half_m(self) -> float:
        return self.lane_width_m + self.parking_width_m

    @property
    def corridor_half_m(self) -> float:
        """Half the width from sidewalk edge to sidewalk edge."""
        return self.carriageway_half_m + self.curb_width_m + self.verge_width_m + self.sidewalk_width_m

    @property
    def sidewalk_offset_m(self) -> float:
        """Distance from the centre line to the middle of the sidewalk."""
        return self.corridor_half_m - self.sidewalk_width_m / 2

    def lane(self, direction: int) -> Polyline:
        """Centre line of the driving lane for travel along (+1) or against (-1) the road's direction."""
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction}")
        if direction == 1:
            return self.centre.offset(-self.lane_width_m / 2)
        return self.centre.offset(self.lane_width_m / 2).reversed()


@dataclass(frozen=True)
class Crosswalk:
    """A zebra crossing: centre, heading of the road it crosses (pointing away from its junction),
    width across the road."""

    centre: FloatArray
    road_heading_rad: float
    width_m: float
    depth_m: float = CROSSWALK_DEPTH_M


@dataclass(frozen=True)
class Bay:
    """One parking bay: centre, heading of a car parked in it (nose in), width and depth."""

    centre: FloatArray
    heading_rad: float
    width_m: float
    depth_m: float


@dataclass(frozen=True)
class ParkingLot:
    """An axis-aligned lot ``(x0, y0, x1, y1)`` with bays, aisle centre lines and a driveway rectangle."""

    rect: tuple[float, float, float, float]
    bays: tuple[Bay, ...]
    aisles: tuple[tuple[FloatArray, FloatArray], ...]
    bay_lines: tuple[tuple[FloatArray, FloatArray], ...]
    driveway: FloatArray  # (4, 2) corners
    lines_yellow: bool


@dataclass(frozen=True)
class Layout:
    size_m: float
    roads: tuple[Road, ...]
    junctions: tuple[FloatArray, ...]
    crosswalks: tuple[Crosswalk, ...]
    lot: ParkingLot | None
    loop_name: str = "ring"
    extras: dict[str, float] = field(default_factory=dict)

    def road(self, name: str) -> Road:
        for road in self.roads:
            if road.name == name:
                return road
        raise KeyError(f"no road {name!r}")

    def distance_to_roads(self, points: FloatArray, *, exclude: str | None = None) -> FloatArray:
        """Distance from points (..., 2) to the nearest road's carriageway edge (negative inside one)."""
        best = np.full(np.asarray(points).shape[:-1], np.inf)
        for road in self.roads:
            if road.name != exclude:
                best = np.minimum(best, road.centre.distance(points) - road.carriageway_half_m)
        return best


def rounded_rectangle(centre: FloatArray, half_x: float, half_y: float, radius: float) -> tuple[Polyline, tuple[Section, ...]]:
    """Counter-clockwise rounded rectangle, starting at the middle of its bottom side."""
    cx, cy = centre
    corners = [(half_x - radius, -half_y + radius), (half_x - radius, half_y - radius), (-half_x + radius, half_y - radius)]
    corners.append((-half_x + radius, -half_y + radius))
    pieces: list[FloatArray] = [np.array([[0.0, -half_y]])]
    kinds: list[tuple[str, int]] = []
    start_angles = (-np.pi / 2, 0.0, np.pi / 2, np.pi)
    for (ax, ay), a0 in zip(corners, start_angles, strict=True):
        arc_start = np.array([ax + radius * np.cos(a0), ay + radius * np.sin(a0)])
        straight = _line(pieces[-1][-1], arc_start, STRAIGHT_STEP_M)[1:]
        pieces.append(straight)
        kinds.append(("straight", len(straight)))
        n_arc = max(4, int(np.ceil(radius * np.pi / 2 / ARC_STEP_M)))
        angles = a0 + np.linspace(0.0, np.pi / 2, n_arc + 1)[1:]
        pieces.append(np.stack([ax + radius * np.cos(angles), ay + radius * np.sin(angles)], axis=1))
        kinds.append(("arc", n_arc))
    closing = _line(pieces[-1][-1], np.array([0.0, -half_y]), STRAIGHT_STEP_M)[1:-1]
    pieces.append(closing)
    kinds.append(("straight", len(closing) + 1))
    points = np.vstack(pieces) + np.array([cx, cy])
    line = Polyline(points, closed=True)
    sections, index = [], 0
    for kind, count in kinds:
        end = min(index + count, len(line.s) - 1)
        sections.append(Section(kind, float(line.s[index]), float(line.s[end])))
        index = end
    return line, tuple(sections)


def _line(a: FloatArray, b: FloatArray, step_m: float) -> FloatArray:
    n = max(1, int(np.ceil(np.linalg.norm(b - a) / step_m)))
    return a + np.linspace(0.0, 1.0, n + 1)[:, None] * (b - a)


def _random_road(rng: np.random.Generator, name: str, centre: Polyline, sections: tuple[Section, ...]) -> Road:
    return Road(
        name=name,
        centre=centre,
        lane_width_m=float(rng.uniform(3.0, 3.6)),
        parking_width_m=float(rng.choice([0.0, rng.uniform(2.1, 2.5)], p=[0.4, 0.6])),
        curb_width_m=float(rng.uniform(0.15, 0.3)),
        verge_width_m=float(rng.choice([0.0, rng.uniform(0.8, 2.0)], p=[0.6, 0.4])),
        sidewalk_width_m=float(rng.uniform(1.6, 3.2)),
        sidewalk_paving=bool(rng.random() < 0.5),
        centre_line=str(rng.choice(["dashed", "solid", "double"], p=[0.55, 0.25, 0.2])),
        centre_line_yellow=bool(rng.random() < 0.3),
        sections=sections,
    )


def _straight_road(rng: np.random.Generator, name: str, a: FloatArray, b: FloatArray) -> Road:
    line = Polyline(_line(a, b, STRAIGHT_STEP_M))
    return _random_road(rng, name, line, (Section("straight", 0.0, line.length),))


def generate_layout(rng: np.random.Generator, size_m: float) -> Layout:
    """A random city block in the square [-size_m / 2, size_m / 2]^2."""
    half = size_m / 2
    centre = rng.uniform(-3.0, 3.0, size=2)
    ring_half = np.array([rng.uniform(0.26, 0.33), rng.uniform(0.19, 0.26)]) * size_m
    radius = float(rng.uniform(10.0, 18.0))
    ring_line, ring_sections = rounded_rectangle(centre, float(ring_half[0]), float(ring_half[1]), radius)
    ring = _random_road(rng, "ring", ring_line, ring_sections)
    x_street = centre[0] + rng.uniform(-1, 1) * (ring_half[0] - radius - 14.0)
    avenue = _straight_road(rng, "avenue", np.array([x_street, -half]), np.array([x_street, half]))
    roads = [ring, avenue]
    junctions = [np.array([x_street, centre[1] - ring_half[1]]), np.array([x_street, centre[1] + ring_half[1]])]
    if rng.random() < 0.7:
        y_street = centre[1] + rng.uniform(-1, 1) * (ring_half[1] - radius - 14.0)
        through = bool(rng.random() < 0.5)
        end_x = half if through else x_street
        roads.append(_straight_road(rng, "street", np.array([-half, y_street]), np.array([end_x, y_street])))
        junctions += [np.array([centre[0] - ring_half[0], y_street]), np.array([x_street, y_street])]
        if through:
            junctions.append(np.array([centre[0] + ring_half[0], y_street]))
    layout = Layout(size_m=size_m, roads=tuple(roads), junctions=tuple(junctions), crosswalks=(), lot=None)
    crosswalks = tuple(_crosswalks(layout))
    lot = _parking_lot(rng, layout, centre, ring_half)
    return Layout(size_m=size_m, roads=tuple(roads), junctions=tuple(junctions), crosswalks=crosswalks, lot=lot)


def _crosswalks(layout: Layout) -> list[Crosswalk]:
    """One zebra crossing on every arm of every junction, just beyond the crossing road's sidewalks."""
    out: list[Crosswalk] = []
    for point in layout.junctions:
        near = [r for r in layout.roads if r.centre.distance(point[None])[0] < 0.5]
        for road in near:
            others = [r for r in near if r is not road]
            if not others:
                continue
            gap = max(o.corridor_half_m for o in others) + 0.5 + CROSSWALK_DEPTH_M / 2
            s_here = _arc_length_of(road.centre, point)
            for sign in (1.0, -1.0):
                s = s_here + sign * gap
                if not road.centre.closed and not 0.0 <= s <= road.centre.length:
                    continue
                xy, heading = road.centre.at(s)
                if road.centre.distance(xy[None])[0] > 0.01 or np.linalg.norm(xy - point) < gap - 0.5:
                    continue  # the arm does not exist (a T junction's missing arm)
                away = float(heading) if sign > 0 else float(heading) + np.pi
                out.append(Crosswalk(centre=xy, road_heading_rad=away, width_m=2 * road.carriageway_half_m))
    return out


def _arc_length_of(line: Polyline, point: FloatArray) -> float:
    """Arc length of the vertex of ``line`` nearest to ``point``."""
    return float(line.s[int(np.argmin(np.linalg.norm(line.vertices - point, axis=1)))])


def _parking_lot(rng: np.random.Generator, layout: Layout, centre: FloatArray, ring_half: FloatArray) -> ParkingLot | None:
    """A lot in the largest free part of the ring's interior, or None when nothing fits."""
    candidates = _free_rectangles(layout, centre, ring_half)
    if not candidates:
        return None
    x0, y0, x1, y1 = max(candidates, key=lambda r: (r[2] - r[0]) * (r[3] - r[1]))
    width, depth = min(x1 - x0, 46.0), min(y1 - y0, 36.0)
    if width < 20.0 or depth < 17.5:
        return None
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    rect = (mx - width / 2, my - depth / 2, mx + width / 2, my + depth / 2)
    bays, aisles, lines = _bays(rng, rect)
    return ParkingLot(
        rect=rect,
        bays=tuple(bays),
        aisles=tuple(aisles),
        bay_lines=tuple(lines),
        driveway=_driveway(layout, rect),
        lines_yellow=bool(rng.random() < 0.3),
    )


def _free_rectangles(layout: Layout, centre: FloatArray, ring_half: FloatArray) -> list[tuple[float, float, float, float]]:
    """Parts of the ring's interior that no road corridor touches (shrunk until their corners are clear)."""
    margin = max(r.corridor_half_m for r in layout.roads) + 1.0
    x0, x1 = centre[0] - ring_half[0] + margin, centre[0] + ring_half[0] - margin
    y0, y1 = centre[1] - ring_half[1] + margin, centre[1] + ring_half[1] - margin
    xs = layout.road("avenue").centre.points[0, 0]
    rects = [(x0, y0, xs - margin, y1), (xs + margin, y0, x1, y1)]
    if any(r.name == "street" for r in layout.roads):
        street = layout.road("street")
        ys = street.centre.points[0, 1]
        street_x1 = street.centre.points[-1, 0]
        split = []
        for rx0, ry0, rx1, ry1 in rects:
            if rx0 < street_x1:
                split += [(rx0, ry0, rx1, ys - margin), (rx0, ys + margin, rx1, ry1)]
            else:
                split.append((rx0, ry0, rx1, ry1))
        rects = split
    out = []
    for rect in rects:
        shrunk = _clear_corners(layout, rect, margin)
        if shrunk is not None:
            out.append(shrunk)
    return out


def _clear_corners(
    layout: Layout, rect: tuple[float, float, float, float], margin: float
) -> tuple[float, float, float, float] | None:
    x0, y0, x1, y1 = rect
    for _ in range(40):
        if x1 - x0 < 10 or y1 - y0 < 10:
            return None
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        clear = min(float(r.centre.distance(corners).min() - r.corridor_half_m) for r in layout.roads)
        if clear >= 1.0:
            return x0, y0, x1, y1
        x0, y0, x1, y1 = x0 + 1, y0 + 1, x1 - 1, y1 - 1
    return None


def _bays(
    rng: np.random.Generator, rect: tuple[float, float, float, float]
) -> tuple[list[Bay], list[tuple[FloatArray, FloatArray]], list[tuple[FloatArray, FloatArray]]]:
    """Rows of perpendicular bays along x: modules of (bays 5 m, aisle 6.5 m, bays 5 m) stacked in y."""
    x0, y0, x1, y1 = rect
    bay_w, bay_d, aisle = float(rng.uniform(2.4, 2.8)), 5.0, 6.5
    module = 2 * bay_d + aisle
    n_modules = max(1, int((y1 - y0 - 1.0) // module))
    n_bays = int((x1 - x0 - 7.0) // bay_w)
    bx0 = (x0 + x1) / 2 - n_bays * bay_w / 2
    ym0 = (y0 + y1) / 2 - n_modules * module / 2
    bays, aisles, lines = [], [], []
    for m in range(n_modules):
        base = ym0 + m * module
        row_bottoms = ((base, np.pi / 2 * -1), (base + bay_d + aisle, np.pi / 2))
        for row_y0, nose in row_bottoms:
            for k in range(n_bays + 1):
                x = bx0 + k * bay_w
                lines.append((np.array([x, row_y0]), np.array([x, row_y0 + bay_d])))
            back_y = row_y0 if nose < 0 else row_y0 + bay_d
            lines.append((np.array([bx0, back_y]), np.array([bx0 + n_bays * bay_w, back_y])))
            for k in range(n_bays):
                centre = np.array([bx0 + (k + 0.5) * bay_w, row_y0 + bay_d / 2])
                bays.append(Bay(centre=centre, heading_rad=float(nose), width_m=bay_w, depth_m=bay_d))
        aisle_y = base + bay_d + aisle / 2
        aisles.append((np.array([x0 + 2.5, aisle_y]), np.array([x1 - 2.5, aisle_y])))
    return bays, aisles, lines


def _driveway(layout: Layout, rect: tuple[float, float, float, float]) -> FloatArray:
    """A 6 m wide strip from the middle of the lot side nearest a road to that road's carriageway."""
    x0, y0, x1, y1 = rect
    sides = [
        (np.array([(x0 + x1) / 2, y0]), np.array([0.0, -1.0])),
        (np.array([(x0 + x1) / 2, y1]), np.array([0.0, 1.0])),
        (np.array([x0, (y0 + y1) / 2]), np.array([-1.0, 0.0])),
        (np.array([x1, (y0 + y1) / 2]), np.array([1.0, 0.0])),
    ]
    steps = np.arange(0.0, 40.0, 0.25)
    best: tuple[float, FloatArray, FloatArray] | None = None
    for start, outward in sides:
        inside = layout.distance_to_roads(start + steps[:, None] * outward) <= 0.0
        if inside.any():
            reach = float(steps[int(np.argmax(inside))]) + 0.3
            if best is None or reach < best[0]:
                best = (reach, start, outward)
    if best is None:
        reach, start, outward = 0.0, sides[0][0], sides[0][1]
    else:
        reach, start, outward = best
    across = np.array([-outward[1], outward[0]]) * 3.0
    end = start + outward * reach
    return np.array([start - across, start + across, end + across, end - across])
