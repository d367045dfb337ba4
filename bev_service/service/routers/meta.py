"""``/v1/model`` and ``/v1/classes``: what is served and what its grid values mean."""

from __future__ import annotations

from fastapi import APIRouter

from bev_service.classes import class_table
from bev_service.service.deps import Ready, Token
from bev_service.service.schemas import ERRORS, ClassInfo, ModelInfo

router = APIRouter(prefix="/v1", tags=["meta"], dependencies=[Token], responses={401: ERRORS[401]})


@router.get("/classes", summary="The class table: ids, names, colours; grid-only EGO and UNKNOWN")
async def classes() -> list[ClassInfo]:
    return [ClassInfo(**row) for row in class_table()]


@router.get("/model", summary="The model being served")
async def model(state: Ready) -> ModelInfo:
    assert state.store is not None
    entry = state.store.get(None)
    sizes = {name: [w, h] for name, (h, w) in zip(entry.rig.camera_names, entry.input_sizes_hw, strict=True)}
    return ModelInfo(**state.model_info, default_rig_input_size_wh=sizes)
