"""podgrace: graceful termination for web workloads on Kubernetes."""

__version__ = "0.1.0"
