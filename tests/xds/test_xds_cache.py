"""The snapshot cache on its own: versions, validation, waiting for ACKs."""

import pytest
from xds_client import cla, cluster, listener

from monoceros.xds import types
from monoceros.xds.cache import SnapshotCache


def test_version_changes_only_with_content(cache):
    cache.set_resources("n", clusters=[cluster("a")])
    first = cache.version("n", types.CLUSTER)

    cache.set_resources("n", clusters=[cluster("a")])
    assert cache.version("n", types.CLUSTER) == first  # R23: nothing changed

    cache.set_resources("n", clusters=[cluster("a", connect_timeout=2)])
    assert cache.version("n", types.CLUSTER) != first


def test_other_types_keep_their_version(cache):
    cache.set_resources("n", clusters=[cluster("a")], listeners=[listener("l")])
    lds = cache.version("n", types.LISTENER)

    cache.set_resources("n", clusters=[cluster("b")])  # None: LDS left alone

    assert cache.version("n", types.LISTENER) == lds
    assert set(cache.snapshot("n").of(types.LISTENER).resources) == {"l"}


def test_versions_never_repeat_across_restarts():
    # R36: a second process (a second cache) issues different versions for
    # the same content, and does not take the first one's versions as its own.
    one, two = SnapshotCache(), SnapshotCache()
    for c in (one, two):
        c.set_resources("n", clusters=[cluster("a")])

    assert one.version("n", types.CLUSTER) != two.version("n", types.CLUSTER)
    assert two.seq_of(one.version("n", types.CLUSTER)) is None


def test_set_endpoints_replaces_one_cla(cache):
    cache.set_resources("n", endpoints=[cla("a", 1), cla("b", 2)])

    version = cache.set_endpoints("n", cla("a", 1, 3))

    assert version == cache.version("n", types.ENDPOINT)
    resources = cache.snapshot("n").of(types.ENDPOINT).resources
    assert set(resources) == {"a", "b"}
    assert cache.set_endpoints("n", cla("a", 1, 3)) == version  # unchanged


def test_newer_versions_sort_after_older(cache):
    v1 = cache.set_endpoints("n", cla("a", 1))
    v2 = cache.set_endpoints("n", cla("a", 2))
    assert cache.seq_of(v2) > cache.seq_of(v1)


def test_duplicate_names_are_refused(cache):
    # R21: a response may not name a resource twice, so neither may a type.
    with pytest.raises(ValueError, match="'a'"):
        cache.set_resources("n", clusters=[cluster("a"), cluster("a")])
    assert cache.snapshot("n") is None


def test_wrong_message_type_is_refused(cache):
    with pytest.raises(TypeError, match="Listener"):
        cache.set_resources("n", clusters=[listener("l")])
    with pytest.raises(TypeError):
        cache.set_endpoints("n", cluster("a"))


def test_unnamed_resource_is_refused(cache):
    with pytest.raises(ValueError, match="without a name"):
        cache.set_resources("n", clusters=[cluster("")])


async def test_wait_acked_without_streams_is_true_at_once(cache):
    version = cache.set_endpoints("n", cla("a", 1))
    assert await cache.wait_acked("n", types.ENDPOINT, version, timeout=0.01)


async def test_wait_acked_refuses_a_foreign_version(cache):
    with pytest.raises(ValueError, match="not issued"):
        await cache.wait_acked("n", types.ENDPOINT, "elsewhere-1", timeout=0.01)


def test_remove_node(cache):
    cache.set_resources("n", clusters=[cluster("a")])
    cache.remove_node("n")
    assert cache.snapshot("n") is None
    assert "n" not in cache.nodes()
