"""Envoy integration: bootstrap, per-pool resources and the Envoy process."""
