"""Transports: the private Unix socket and its lock, TCP with TLS, and the
stock gRPC health and reflection services."""

import os
import shutil
import socket
import stat
import subprocess

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from monoceros.config import XdsTlsConfig
from monoceros.errors import StartupError
from monoceros.xds import transport
from monoceros.xds.server import XdsServer


async def health_of(channel, service=""):
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                timeout=5)
    return response.status


async def test_socket_is_private(server):
    assert stat.S_IMODE(os.stat(server.unix_socket).st_mode) == 0o600


async def test_second_server_on_the_same_socket_fails_loudly(cache, server):
    second = XdsServer(cache, unix_socket=server.unix_socket)
    with pytest.raises(StartupError, match=server.unix_socket) as err:
        await second.start()
    assert "another live process" in str(err.value)
    assert f"pid {os.getpid()}" in str(err.value)

    # The first one still serves its socket.
    async with grpc.aio.insecure_channel(f"unix:{server.unix_socket}") as channel:
        assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_stale_socket_is_replaced(cache, short_dir):
    path = f"{short_dir}/xds.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)  # as a process that died would leave it
    leftover.close()

    xds = XdsServer(cache, unix_socket=path)
    await xds.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await xds.stop(0)
    assert not os.path.exists(path)


async def test_regular_file_is_not_taken_for_a_socket(cache, short_dir):
    path = f"{short_dir}/xds.sock"
    open(path, "w").close()
    with pytest.raises(StartupError, match="not a socket"):
        await XdsServer(cache, unix_socket=path).start()
    assert os.path.isfile(path)


async def test_socket_path_too_long(cache, short_dir):
    path = short_dir + "/" + "x" * 120
    with pytest.raises(StartupError, match="at most 107"):
        await XdsServer(cache, unix_socket=path).start()


def test_default_socket_path_is_in_a_private_dir(short_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    path = transport.default_socket_path()
    assert path == f"{short_dir}/monoceros/xds.sock"
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


async def test_tcp_binds_loopback_by_default(cache):
    xds = XdsServer(cache, unix_socket=None, tcp_address=":0")
    await xds.start()
    try:
        assert xds.tcp_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.tcp_port}") as channel:
            assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await xds.stop(0)


async def test_tcp_port_in_use(cache):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        xds = XdsServer(cache, unix_socket=None, tcp_address=f"127.0.0.1:{port}")
        with pytest.raises(StartupError, match=str(port)):
            await xds.start()


@pytest.fixture
def certs(short_dir):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=short_dir, check=True,
                       capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        with open(f"{short_dir}/{name}.ext", "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey",
            "ca.key", "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
            "-out", f"{name}.pem")

    def read(name):
        with open(f"{short_dir}/{name}", "rb") as f:
            return f.read()

    return short_dir, read


async def test_tls_with_client_certificates(cache, certs):
    directory, read = certs
    tls = XdsTlsConfig(cert=f"{directory}/server.pem", key=f"{directory}/server.key",
                       client_ca=f"{directory}/ca.pem")
    xds = XdsServer(cache, unix_socket=None, tcp_address="127.0.0.1:0", tls=tls)
    await xds.start()
    target = f"localhost:{xds.tcp_port}"
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=read("ca.pem"),
            private_key=read("client.key"),
            certificate_chain=read("client.pem"),
        )
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING

        without = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"))
        async with grpc.aio.secure_channel(target, without) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_of(channel)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await xds.stop(0)


async def test_missing_tls_file_is_named(cache, short_dir):
    tls = XdsTlsConfig(cert=f"{short_dir}/nope.pem", key=f"{short_dir}/nope.key")
    xds = XdsServer(cache, unix_socket=None, tcp_address=":0", tls=tls)
    with pytest.raises(StartupError, match="nope.pem"):
        await xds.start()


async def test_health_and_reflection(server, target):
    ads = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"]
    async with grpc.aio.insecure_channel(target) as channel:
        assert await health_of(channel, ads.full_name) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = stub.ServerReflectionInfo(iter([request]))
        response = await call.read()
        names = {s.name for s in response.list_services_response.service}
    assert ads.full_name in names
    assert "envoy.service.status.v3.ClientStatusDiscoveryService" in names
    assert "monoceros.xds.v1.XdsIntrospection" in names
