"""``/docs``: Swagger UI served from the ``swagger_ui_bundle`` package, so it works where no CDN can be
reached (a vehicle network). Open like the viewer: the token, when the service sets one, is entered
in the page's Authorize dialog.

Swagger UI 5 is needed: FastAPI writes OpenAPI 3.1, which Swagger UI 4 refuses to render.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from bev_service.service.errors import ApiError

ASSETS_PATH = "/docs/assets"
SWAGGER_UI_DIR = Path(str(swagger_ui_bundle.swagger_ui_path))
# Only what the page loads: the bundle's index.html and initializer would load the Petstore demo from the internet.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}  # the default validator badge fetches from swagger.io

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    openapi_url = request.app.openapi_url
    if openapi_url is None:
        raise ApiError(404, "not_found", "the service publishes no OpenAPI document")
    root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
    return get_swagger_ui_html(
        openapi_url=root + openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get(ASSETS_PATH + "/{name}")
async def docs_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no docs asset {name!r}; there are {', '.join(sorted(ASSETS))}")
    return FileResponse(SWAGGER_UI_DIR / name, media_type=media_type)
