"""Monoceros: a process supervisor and Envoy xDS control plane."""

__version__ = "0.1.0"
