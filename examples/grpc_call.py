"""Call the example gRPC pool N times over one channel; print who answered.

    python examples/grpc_call.py 127.0.0.1:10001 20
"""

import collections
import sys

import grpc

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:10001"
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 20
with grpc.insecure_channel(target) as channel:
    who = channel.unary_unary("/monoceros.example.Echo/Who")
    answers = collections.Counter(who(b"", timeout=5).decode() for _ in range(calls))
for worker, count in sorted(answers.items()):
    print(f"{worker}: {count}")
