import shutil
import tempfile

import pytest
from prometheus_client import CollectorRegistry

from monoceros.xds.cache import SnapshotCache
from monoceros.xds.server import XdsServer


@pytest.fixture
def short_dir():
    # Unix socket paths hold 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="mxds-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cache():
    return SnapshotCache()


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
async def server(cache, short_dir, registry):
    xds = XdsServer(cache, unix_socket=f"{short_dir}/xds.sock", registry=registry)
    await xds.start()
    yield xds
    await xds.stop(0)


@pytest.fixture
def target(server):
    return f"unix:{server.unix_socket}"
