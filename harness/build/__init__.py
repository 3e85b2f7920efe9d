"""Host-side build: torch -> ONNX export, one compile step per backend, a content-addressed artifact cache."""
