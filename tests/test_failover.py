"""A shard actor killed while `compnn serve --ray ADDRESS` answers concurrent clients (issue 23).

``tools/bench_failover.py`` in its own process (it starts a two-node ``ray.cluster_utils.Cluster``
of 1 CPU per node, which cannot share this process with the session's local cluster), on a
4-shard store of the session's tiny translation model, with fewer clients than the benchmark.
Every request must be answered within the client timeout, each answer either the reference
field (same ids and positions as before the kill) or a 503 naming the shard; nothing else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from compnn_index.jobs import workflows

from conftest import REPO_ROOT, TINY_IMAGES

TIMEOUT = 90.0  # seconds a request may take, restart included, before it counts as hung


@pytest.fixture(scope="module")
def store4(translate_index, tmp_path_factory):
    out = tmp_path_factory.mktemp("failover") / "index4"
    workflows.build(model=translate_index.model, data="synthetic", size=64, limit=TINY_IMAGES,
                    direction=translate_index.direction, layers=["decoder2"], threads=1, progress=False,
                    shards=4, out=out)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("kill", ["ray", "process"])
def test_a_killed_shard_actor_costs_no_request(store4, tmp_path, kill):
    pytest.importorskip("ray")
    pytest.importorskip("httpx")
    out = tmp_path / "failover.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "bench_failover.py"), "--store", str(store4), "--clients", "4",
         "--queries", "5", "--top-k", "6", "--kill", kill, "--kill-at", "0.2", "--timeout", str(TIMEOUT),
         "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.is_file(), run.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["requests"] == 20 and doc["timeouts"] == 0 and doc["other_errors"] == 0, doc
    assert doc["wrong_answers"] == 0 and doc["successes"] + doc["status_503"] == 20, doc
    assert all("shard 1 (images" in m for m in doc["messages_503"]), doc
    assert doc["kill_at_s"] is not None and doc["restart_s"] is not None, doc  # it was killed, it came back
    assert doc["restarted_pid"] != doc["killed_pid"]
    assert doc["latency_max_s"] < TIMEOUT
    assert run.returncode == 0 and doc["passed"], run.stderr[-4000:]
