"""TorchServe handlers for image-interpreter: one module per model, shared code in `common`."""
