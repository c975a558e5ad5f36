"""The xDS control plane: snapshot cache, ADS streams (SotW and delta), CSDS.

The supervisor side needs three names: ``SnapshotCache`` (publish resources,
await ACKs), ``XdsServer`` (serve them) and ``default_socket_path``.
"""

from monoceros.xds.cache import SnapshotCache
from monoceros.xds.server import XdsServer
from monoceros.xds.transport import TlsFiles, default_socket_path

__all__ = ["SnapshotCache", "TlsFiles", "XdsServer", "default_socket_path"]
