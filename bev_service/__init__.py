"""bev-service: surround-view camera frames to a bird's-eye-view label grid."""

__version__ = "0.1.0"
