"""Envoy integration: bootstrap, per-pool resources and the Envoy process.

- ``names``: the node, cluster, route and listener names (the contract);
- ``binary``: finding Envoy and its command line;
- ``bootstrap``: the bootstrap file (node, admin, ADS cluster);
- ``resources``: a pool's Listener, RouteConfiguration, Cluster and CLA;
- ``admin``: an async client of Envoy's admin API.
"""
