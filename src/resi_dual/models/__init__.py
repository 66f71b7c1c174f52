"""Model loading and exact residual tracing."""
