"""The tiny ONNX graph the pipeline bench test runs on (tests/networks.py)."""

from tests.networks import tiny_onnx

__all__ = ["tiny_onnx"]
