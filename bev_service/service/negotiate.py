"""``Accept`` header matching (RFC 9110 section 12.5.1): quality values, ``q=0`` as "not this", wildcards."""

from __future__ import annotations

from collections.abc import Sequence


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) of each media range; a malformed q counts as 1, an unreadable range is skipped."""
    out = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        kind, _, sub = fields[0].lower().partition("/")
        if not kind or not sub:
            continue
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 1.0
        out.append((kind, sub, q))
    return out


def quality(ranges: list[tuple[str, str, float]], media_type: str) -> float:
    """The q the most specific matching range gives ``media_type`` (0 when none matches)."""
    kind, _, sub = media_type.partition("/")
    best, score = -1, 0.0
    for r_kind, r_sub, q in ranges:
        if (r_kind, r_sub) == (kind, sub):
            specificity = 2
        elif r_kind == kind and r_sub == "*":
            specificity = 1
        elif (r_kind, r_sub) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best:
            best, score = specificity, q
    return score


def best_match(accept: str, offered: Sequence[str]) -> str | None:
    """The offered media type the client prefers (ties go to the earlier in ``offered``); the first when
    there is no Accept header; None when the client accepts none of them (406)."""
    ranges = _ranges(accept)
    if not accept.strip() or not ranges:
        return offered[0]
    scored = [(quality(ranges, t), -i, t) for i, t in enumerate(offered)]
    q, _, media_type = max(scored)
    return media_type if q > 0 else None
