"""dsmd: Dynamic Self-adaptive Multiscale Distillation of image-text models into small dual encoders."""

__version__ = "0.1.0"
