"""Distribution strategies for `scripts/train.py`: one device, several GPUs, several machines.

`make_strategy(name)`:
- "one": the default strategy on one device (the first GPU if any, else the CPU);
- "mirrored": `MirroredStrategy` over the visible GPUs (or over logical CPU devices made with
  `cpu_replicas`, for trying the multi-replica path on a CPU);
- "multi_worker": `MultiWorkerMirroredStrategy` configured from the `TF_CONFIG` environment
  variable (one process per machine, the same command everywhere);
- "auto": "mirrored" when more than one GPU is visible, else "one".

Only the chief worker writes logs, checkpoints and exports: `is_chief()` tells which process
that is, `task_index()` which worker it is. `TF_CONFIG` is read here and nowhere else.
"""

import json
import os

import tensorflow as tf

from ppl_tf.choices import STRATEGIES


class StrategyError(RuntimeError):
    """A strategy that cannot run on this machine; the message says why."""


def configure_cpu_replicas(count):
    """Splits the CPU into `count` logical devices (before TensorFlow initializes devices)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise StrategyError(
            f"cpu_replicas={count}: TensorFlow's devices are already initialized ({error})"
        ) from None


def cpu_mirrored_strategy(devices):
    """MirroredStrategy over logical CPU devices, reducing through one device.

    The default for CPUs is collective all-reduce. Synchronized BatchNorm issues one collective
    per layer, also in the backward pass, where parallel branches (ASPP, the decoder's
    low-level path) have no order between them; replicas can then launch the collectives in
    different orders and the step fails with "Shape mismatch in the collective instance"
    (seen with TF 2.21 on two logical CPUs). ReductionToOneDevice has no such ordering
    requirement. On GPUs MirroredStrategy uses NCCL through the same reduce path.
    """
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def _read_tf_config():
    """The parsed TF_CONFIG, or None when it is not set (ValueError when it is not JSON)."""
    raw = os.environ.get("TF_CONFIG")
    return json.loads(raw) if raw else None


def _tf_config():
    """TF_CONFIG checked as a cluster description (StrategyError naming what is wrong)."""
    if not os.environ.get("TF_CONFIG"):
        raise StrategyError(
            "strategy multi_worker needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        config = _read_tf_config()
        workers = config["cluster"]["worker"]
        task = config["task"]
        if not workers or task["type"] not in ("worker", "chief"):
            raise ValueError("no workers or an unknown task type")
    except (ValueError, KeyError, TypeError) as error:
        raise StrategyError(f"TF_CONFIG is not a valid cluster description: {error}") from None
    return config


def is_chief():
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    try:
        config = _read_tf_config()
        if config is None:
            return True
        task = config.get("task", {})
        if task.get("type") == "chief":
            return True
        has_chief = bool(config.get("cluster", {}).get("chief"))
        return not has_chief and task.get("type") == "worker" and task.get("index", 0) == 0
    except (ValueError, AttributeError):
        return True


def task_index():
    """This worker's index in TF_CONFIG's cluster (0 without TF_CONFIG): non-chief workers
    write into `.worker_<index>` of the run folder."""
    config = _read_tf_config()
    return int(config["task"].get("index", 0)) if config else 0


def make_strategy(name="auto", cpu_replicas=None):
    """The `tf.distribute.Strategy` called `name` (see the module docstring)."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    if cpu_replicas:
        configure_cpu_replicas(cpu_replicas)
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < 2:
            raise StrategyError(
                "strategy mirrored needs GPUs and none is visible; use strategy=one, or "
                "--cpu-replicas 2 to try the multi-replica path on logical CPU devices"
            )
        return cpu_mirrored_strategy([d.name for d in cpus])
    _tf_config()
    communication = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
