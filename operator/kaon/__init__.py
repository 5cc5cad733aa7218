"""kaon: a Kubernetes operator for AI training and serving across clusters and node pools."""

__version__ = "0.1.0"
