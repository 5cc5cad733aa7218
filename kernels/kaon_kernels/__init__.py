"""kaon_kernels: the PyTorch runtime that kaon injects into workload pods."""

__version__ = "0.1.0"
