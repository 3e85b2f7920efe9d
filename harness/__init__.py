"""edgebench: a pytest-driven device-lab harness for computer-vision models."""

__version__ = "0.1.0"
