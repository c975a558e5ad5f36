"""``monoceros xds status`` and ``dump`` run as real processes against a
live server, the way an operator would run them."""

import asyncio
import json
import sys

from xds_client import ads_client, cla, cluster

from monoceros.xds import types

ENTRY = (
    "import argparse, sys\n"
    "from monoceros.xds import cli\n"
    "parser = argparse.ArgumentParser(prog='monoceros')\n"
    "cli.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


async def run_cli(*argv):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def connected_envoy(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    client = ads_client(target)
    c = await client.__aenter__()
    c.send(types.CLUSTER, node_id="n1")
    c.ack(await c.recv_type(types.CLUSTER))
    c.send(types.ENDPOINT, ["a"])
    c.ack(await c.recv_type(types.ENDPOINT), ["a"], error="endpoint a: too odd")
    return client


async def test_status_shows_versions_and_last_nack(cache, target):
    client = await connected_envoy(cache, target)
    try:
        code, out, err = await run_cli("xds", "status", "--server", target)
    finally:
        await client.__aexit__(None, None, None)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NODE", "TYPE"]
    cds = next(line for line in lines if " CDS " in line)
    assert cds.count(cache.version("n1", types.CLUSTER)) == 2  # sent and ACKed
    eds = next(line for line in lines if " EDS " in line)
    assert "endpoint a: too odd" in eds


async def test_dump_json_has_the_resources(cache, target):
    client = await connected_envoy(cache, target)
    try:
        code, out, err = await run_cli(
            "xds", "dump", "--server", target, "--format", "json", "--node", "n1"
        )
    finally:
        await client.__aexit__(None, None, None)
    assert code == 0, err
    (node,) = json.loads(out)
    assert node["node"] == "n1"
    (resource,) = node["resources"]["cds"]
    assert resource["name"] == "a"
    assert resource["status"] == "ACKED"
    assert resource["resource"]["name"] == "a"
    assert node["resources"]["eds"][0]["status"] == "NACKED"


async def test_dump_yaml(cache, target):
    client = await connected_envoy(cache, target)
    try:
        code, out, err = await run_cli("xds", "dump", "--server", target)
    finally:
        await client.__aexit__(None, None, None)
    assert code == 0, err
    assert "- node: n1" in out


async def test_unreachable_server_is_one_clear_line(short_dir):
    code, out, err = await run_cli(
        "xds", "status", "--server", f"unix:{short_dir}/nothing.sock"
    )
    assert code != 0
    assert err.count("\n") == 1, err
    assert "cannot query the xDS server" in err
    assert "Traceback" not in err


async def test_bad_server_argument(short_dir):
    code, out, err = await run_cli("xds", "dump", "--server", "no-port")
    assert code == 2
    assert "HOST:PORT" in err and "Traceback" not in err
