"""The service: a FastAPI app (``create_app``) over the in-process pipeline, REST and a WebSocket stream.

It imports the geometry, calibration and model runtime; nothing there imports it.
"""
