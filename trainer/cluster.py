"""Multi-worker training: the cluster from `TF_CONFIG`, each worker's role and the strategy.

The custom loop that trains under it is `trainer.custom_loop`; input sharding and the
workers' agreement on classes and steps, `trainer.sharding`.

`trainer.task` reads `TF_CONFIG` from the environment and passes its text here; nothing in this
module reads flags or the environment.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import tensorflow as tf

TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster.

    Attributes:
        task_type: "chief" or "worker" (a one-process run is the chief).
        task_index: index within its task type.
        num_workers: processes that train (chief included).
        has_chief: whether the cluster names a "chief" task.
    """

    task_type: str = "chief"
    task_index: int = 0
    num_workers: int = 1
    has_chief: bool = True

    @property
    def is_chief(self) -> bool:
        """The chief writes the run folder: task type "chief", or worker 0 when the cluster
        has no chief (TensorFlow's convention)."""
        if self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and not self.has_chief

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"

    @property
    def worker_index(self) -> int:
        """This process's place among all `num_workers` (0 to num_workers - 1): the chief
        first, then the workers in task order."""
        if self.task_type == "chief":
            return 0
        return self.task_index + (1 if self.has_chief else 0)


def parse_tf_config(text: str | None) -> dict[str, Any]:
    """Checks the `TF_CONFIG` JSON that configures a multi-worker run and returns it parsed.

    Expected: `{"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]},
    "task": {"type": "worker", "index": 0}}` (the "chief" list is optional).

    Raises:
        ValueError: the variable is missing or empty, is not JSON, or does not describe a
            cluster this task belongs to; the message names TF_CONFIG and what is wrong.
    """
    hint = "see docs/DISTRIBUTED.md for examples"
    if not text or not text.strip():
        raise ValueError(
            "--distribution=multi_worker needs the TF_CONFIG environment variable: JSON with "
            f'"cluster" (task type -> ["host:port", ...]) and "task" ({{"type", "index"}}); {hint}'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {text[:200]!r}; {hint}") from err
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {text[:200]!r}; {hint}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f'TF_CONFIG has no "cluster" object: {text[:200]!r}; {hint}')
    unsupported = sorted(set(cluster) - set(TASK_TYPES))
    if unsupported:
        raise ValueError(
            f"TF_CONFIG cluster has task types {unsupported}; multi_worker training supports "
            f"only {list(TASK_TYPES)} (every task trains; no parameter servers or evaluator)"
        )
    for task_type, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"TF_CONFIG cluster[{task_type!r}] must be a non-empty list")
        bad = [a for a in addresses if not isinstance(a, str) or ":" not in a]
        if bad:
            raise ValueError(f"TF_CONFIG cluster[{task_type!r}] has addresses {bad} not host:port")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError("TF_CONFIG cluster may hold at most one chief")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            f'TF_CONFIG has no "task" with "type" and "index" (this process\'s place in the '
            f"cluster): {text[:200]!r}; {hint}"
        )
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {task_type!r} is not in the cluster (it has {sorted(cluster)})"
        )
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG task index {index!r} is out of range: the cluster has "
            f"{len(cluster[task_type])} {task_type!r} task(s)"
        )
    return config


def role_from_tf_config(config: dict[str, Any]) -> WorkerRole:
    """The `WorkerRole` of a `parse_tf_config` result."""
    return _role(config["cluster"], config["task"]["type"], config["task"]["index"])


def _role(cluster: dict[str, list[str]], task_type: str, task_index: int) -> WorkerRole:
    return WorkerRole(
        task_type=task_type,
        task_index=int(task_index),
        num_workers=sum(len(cluster.get(t, [])) for t in TASK_TYPES),
        has_chief=bool(cluster.get("chief")),
    )


def make_multi_worker_strategy(config: dict[str, Any]) -> tf.distribute.Strategy:
    """`MultiWorkerMirroredStrategy` for a `parse_tf_config` result.

    Create it before TensorFlow runs anything else in the process: it sets up the collective
    ops, which TensorFlow allows only at program start.
    """
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config["cluster"]),
        task_type=config["task"]["type"],
        task_id=int(config["task"]["index"]),
        rpc_layer="grpc",
    )
    # AUTO: NCCL between GPUs, ring all-reduce over gRPC on CPUs.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options
    )


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def role_of(strategy: tf.distribute.Strategy) -> WorkerRole:
    """This process's role under `strategy` (every non-multi-worker strategy is the chief)."""
    if not is_multi_worker(strategy):
        return WorkerRole()
    resolver = strategy.cluster_resolver
    return _role(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id)


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas on this worker (every worker has the same number)."""
    return strategy.num_replicas_in_sync // role_of(strategy).num_workers
