"""Classical ML inference: model signatures, input checks, micro-batched ONNX Runtime sessions."""
