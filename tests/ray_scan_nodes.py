"""Prints, as JSON, the Ray node ids that a Daft scan of parquet files ran on.

    python tests/ray_scan_nodes.py HEAD_ADDRESS S3_ENDPOINT FILE...

A script, not a test helper: a Ray driver exits with its cluster, so the test process must not be one.
"""

from __future__ import annotations

import json
import sys

import daft
import ray


@daft.func
def node_of(value: str) -> str:
    """The id of the Ray node this row is processed on."""
    return ray.get_runtime_context().get_node_id()


def main() -> None:
    address, endpoint, *files = sys.argv[1:]
    daft.set_runner_ray(address=address)
    io_config = daft.io.IOConfig(s3=daft.io.S3Config(endpoint_url=endpoint, use_ssl=False))
    frame = daft.read_parquet(files, io_config=io_config).into_partitions(4)
    nodes = frame.select(node_of(daft.col("msg")).alias("node")).distinct().to_pydict()["node"]
    print(json.dumps(sorted(nodes)))


if __name__ == "__main__":
    main()
