"""Lose worker nodes under a Ray run, on one machine (``ray.cluster_utils.Cluster``).

Run as a script, in a fresh process (it owns a Ray cluster, apart from the tests' shared one)::

    python tests/helpers/node_loss.py CONFIG STORAGE GATE_FOLDER EVENT [EVENT ...]

STORAGE may be an ``s3://`` URI: the ``AWS_*`` variables of this process then go to the driver
only, and to the run through ``--worker-env``; the cluster starts without them, and the report
names every file of the cluster's logs (and the driver's output) holding the secret key.
Starts a head node with no CPUs (the driver, Ray Train's controller and raytrainer's status
actor live there) and one 1-CPU worker node, then runs ``raytrainer run CONFIG --address
<head>`` as a subprocess with a gate at each EVENT's iteration (see :mod:`helpers.gated`). An
EVENT ``N`` removes the node holding rank 0 when rank 0 stops at iteration N's checkpoint; an
EVENT ``drain:N`` drains that node through the GCS (a preemption notice, deadline in 5 s) at
iteration N's step, and rank 0 waits there until Ray Train passes the notice on. Either way a
fresh node is added, from this process's main thread. Prints one JSON line: the gates'
iterations in the order they stopped, where raytrainer's status actor was at each stop, the
run's log lines about preemption, where the secret key was found, its exit code and its
stderr's tail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers.gated import DRAIN_ENV, GATE_ENV, make_gate, wait_for_gate  # noqa: E402


def main() -> None:
    config, storage, gate_root, *events = sys.argv[1:]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    os.environ["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] = "0.1"  # inherited by every node
    # The cluster starts without the storage's credentials: only the driver has them, and
    # passes them with --worker-env, the route the README documents.
    credentials = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    if credentials:  # a value to look for in Ray's logs (the loopback server takes any key)
        credentials["AWS_SECRET_ACCESS_KEY"] = f"raytrainer-secret-{os.getpid()}-{time.time_ns()}"
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            # Notice a removed node in about a second, not Ray's default half a minute.
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2},
        },
    )
    node = cluster.add_node(num_cpus=1)
    cluster.connect()  # to look up where the run's actors live
    iterations = [event.removeprefix("drain:") for event in events]
    gates = [make_gate(Path(gate_root) / f"gate{i}", int(i)) for i in iterations]
    drained = [event.startswith("drain:") for event in events]
    removals = [gate for gate, drain in zip(gates, drained, strict=True) if not drain]
    (drains,) = [gate for gate, drain in zip(gates, drained, strict=True) if drain] or [""]
    command = [sys.executable, "-m", "raytrainer", "run", config, "--address", cluster.address]
    command += ["--storage-path", storage, "--checkpoint-period", "5", "--no-progress"]
    command += ["--max-failures", str(len(gates) + 1)]
    if removals:
        command += ["--worker-env", f"{GATE_ENV}={','.join(removals)}"]
    if drains:
        command += ["--worker-env", f"{DRAIN_ENV}={drains}"]
    for key, value in credentials.items():
        command += ["--worker-env", f"{key}={value}"]
    log = Path(gate_root) / "driver.log"  # a file: a full pipe would stall the driver
    driver = subprocess.Popen(
        command,
        stderr=log.open("w"),
        stdout=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, **credentials},
    )
    stopped, helpers_on, secret_in = [], set(), []
    try:
        for event, i in zip(events, iterations, strict=True):  # the gates stop in order
            iteration, _pid = wait_for_gate(Path(gate_root) / f"gate{i}")
            stopped.append(iteration)
            helpers_on |= _status_actor_nodes(cluster.head_node.node_id)
            if event.startswith("drain:"):
                _drain(cluster.address, node.node_id, deadline_s=5)  # it stays, draining
            else:
                cluster.remove_node(node)  # rank 0 goes with its node
            node = cluster.add_node(num_cpus=1)
        driver.wait(timeout=600)
        logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
        secret = credentials.get("AWS_SECRET_ACCESS_KEY", "").encode()
        secret_in = [
            p.name for p in logs.rglob("*") if secret and p.is_file() and secret in p.read_bytes()
        ]
    finally:
        driver.kill()
        ray.shutdown()  # this process's connection, before its node goes
        cluster.shutdown()
    err = log.read_text()
    notices = [line for line in err.splitlines() if "is being preempted" in line]
    secret_in += ["driver's output"] if secret and secret in err.encode() else []
    report = {"stopped": stopped, "helpers_on": sorted(helpers_on), "secret_in": secret_in}
    report["notices"], err = notices, err[-3000:]
    print(json.dumps({**report, "returncode": driver.returncode, "stderr": err}))


def _drain(address: str, node_id: str, deadline_s: float) -> None:
    """Drain a node as a cloud's preemption notice does: through the GCS, with a deadline."""
    import ray
    from ray.core.generated import autoscaler_pb2

    reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    deadline_ms = int((time.time() + deadline_s) * 1000)
    client = ray._raylet.GcsClient(address=address)
    accepted, why = client.drain_node(node_id, reason, "test preemption", deadline_ms)
    assert accepted, why


def _status_actor_nodes(head: str) -> set[str]:
    """Where raytrainer's live status actors are: "head" or "worker node"."""
    from ray._private import state

    return {
        "head" if actor["Address"]["NodeID"] == head else "worker node"
        for actor in state.actors().values()
        if actor["ActorClassName"].endswith("RunStatusActor") and actor["State"] == "ALIVE"
    }


if __name__ == "__main__":
    main()
