"""The OpenAPI document, with the ``POST /v1/bev`` form fields of the rig being served.

FastAPI caches the generated document; only the form is rewritten on each call, because the default
rig is loaded after the app is built and a PUT may replace it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from bev_service.service.routers.bev import PATH as BEV_PATH
from bev_service.service.schemas import bev_form_schema
from bev_service.service.state import ServiceState


def install_openapi(app: FastAPI, state: ServiceState) -> None:
    def openapi() -> dict[str, Any]:
        document = FastAPI.openapi(app)  # generated once, then cached on the app
        document["paths"][BEV_PATH]["post"]["requestBody"] = bev_form_schema(state.default_camera_names())
        return document

    app.openapi = openapi  # type: ignore[method-assign]
