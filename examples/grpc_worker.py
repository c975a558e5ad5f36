"""A small gRPC worker for examples/grpc.yaml.

It serves one method, `/monoceros.example.Echo/Who`, that answers with the
worker's MULTIPROCESS_WORKER_ID (raw bytes, so no generated code is needed),
and the standard gRPC health service, which both Monoceros's readiness probe
and Envoy's health check use. On SIGTERM it stops accepting new calls and
gives the ones in flight a grace period, as a good gRPC server does.

    python examples/grpc_worker.py --port 8200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

WORKER_ID = os.environ.get("MULTIPROCESS_WORKER_ID", str(os.getpid()))


async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return WORKER_ID.encode()


async def serve(port: int, grace: float) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "monoceros.example.Echo",
        {"Who": grpc.unary_unary_rpc_method_handler(who)},
    )
    server.add_generic_rpc_handlers((handler,))
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await status.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"serving gRPC on 127.0.0.1:{port} as {WORKER_ID}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await status.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.grace))


if __name__ == "__main__":
    main()
