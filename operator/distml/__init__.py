"""distml: a Kubernetes operator for distributed PyTorch training and serving on GPU clusters."""

__version__ = "0.1.0"
