"""The tiny-network fixtures shared with the other network tests (tests/networks.py)."""

from tests.networks import one_torch_thread, tiny_onnx

__all__ = ["one_torch_thread", "tiny_onnx"]
