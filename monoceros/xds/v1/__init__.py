"""Messages of Monoceros's own xDS introspection service (generated)."""
