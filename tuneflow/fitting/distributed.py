"""The training stage across processes and machines, launched by ``torchrun`` (the launcher Lightning
supports for multi-node DDP): one process per rank, every rank trains, rank 0 alone owns the MLflow run.

The flow's train task runs :func:`launch` for ``train.strategy: ddp``: ``torchrun`` on this machine as node
0, which hosts the rendezvous at ``train.rdzv_endpoint``; with ``train.num_nodes > 1`` every other machine
runs the command :func:`join_command` gives (the same config, its own ``--node-rank``). Each rank runs
``python -m tuneflow.fitting.distributed``: it encodes the same data, fits under Lightning's DDP (the
``TorchElasticEnvironment`` reads torchrun's variables) and, on global rank 0 only, logs the curves,
exports the best checkpoint and writes ``trained.json`` for the flow to read back. Other ranks only train.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneflow.config import PipelineConfig

TRAINED_FILE = "trained.json"
CONFIG_FILE = "distributed_config.pkl"


def under_launcher() -> bool:
    """True inside a process started by torchrun (or another TorchElastic launcher)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def torchrun_args(cfg: PipelineConfig, node_rank: int) -> list[str]:
    """``torchrun`` options for this config: nodes, processes per node, this node's rank, the rendezvous."""
    devices = cfg.train.devices if isinstance(cfg.train.devices, int) else 1
    return [
        "--nnodes",
        str(cfg.train.num_nodes),
        "--nproc-per-node",
        str(devices),
        "--node-rank",
        str(node_rank),
        "--rdzv-backend",
        "static",  # node 0 hosts the store at the endpoint: no extra rendezvous service to run
        "--rdzv-endpoint",
        cfg.train.rdzv_endpoint,
    ]


def join_command(config_path: str, overrides: list[str], node_rank: int, cfg: PipelineConfig) -> list[str]:
    """What machine ``node_rank`` (1 .. num_nodes-1) runs to take part in a multi-node fit: the same config
    and overrides, no run id (its ranks do not log)."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [
        "torchrun",
        *torchrun_args(cfg, node_rank),
        "-m",
        "tuneflow.fitting.distributed",
        "--config",
        config_path,
        *sets,
    ]


def launch(cfg: PipelineConfig, run_id: str, out_dir: Path, resume_from: str | None = None) -> dict[str, Any]:
    """Run the training stage under torchrun as node 0 and return what rank 0 wrote (``trained.json``).

    Raises:
        RuntimeError: a rank failed (torchrun's exit status and the end of its output).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config_file = out_dir / CONFIG_FILE
    # The flow's config object itself, with its resolved task type: node 0's ranks do not parse it again.
    config_file.write_bytes(pickle.dumps(cfg))
    (out_dir / TRAINED_FILE).unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *torchrun_args(cfg, 0),
        "-m",
        "tuneflow.fitting.distributed",
        "--resolved",
        str(config_file),
        "--run-id",
        run_id,
        "--out",
        str(out_dir),
    ]
    if resume_from:
        cmd += ["--resume", resume_from]
    # The ranks' console output (epoch lines) goes straight to ours. A killed flow takes torchrun (and so
    # its ranks) with it, so a rerun never finds an orphan training in its place.
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent())
    try:
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    trained = out_dir / TRAINED_FILE
    if proc.returncode != 0 or not trained.is_file():
        raise RuntimeError(
            f"distributed training failed: torchrun exited with {proc.returncode} ({' '.join(cmd[1:9])}); "
            "see the ranks' output above"
        )
    return json.loads(trained.read_text())


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies (``kill -9`` included).

    libc is loaded here, in the parent: between fork and exec the child only calls into it (no import,
    no lock taken), which keeps the hook safe in the flow's multi-threaded process.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    term = int(signal.SIGTERM)
    return lambda: prctl(1, term)  # 1 = PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> None:
    """One rank of a torchrun-launched training stage (see the module docstring)."""
    from tuneflow.fitting.training import global_rank, train_and_export
    from tuneflow.store import tracking
    from tuneflow.tasktypes.resolve import load_config

    parser = argparse.ArgumentParser(prog="python -m tuneflow.fitting.distributed", description=main.__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="the experiment YAML (nodes other than 0)")
    what.add_argument("--resolved", help="the resolved config the flow pickled (node 0)")
    parser.add_argument(
        "--set", "-s", dest="overrides", action="append", default=[], help="KEY=VALUE, as for run"
    )
    parser.add_argument("--run-id", help="the MLflow run rank 0 logs to (node 0 only)")
    parser.add_argument("--out", type=Path, help="checkpoint folder (node 0 only)")
    parser.add_argument("--resume", help="a last.ckpt of this run to continue from")
    args = parser.parse_args(argv)
    if args.resolved:
        cfg = pickle.loads(Path(args.resolved).read_bytes())  # written by launch() for its own children
    else:
        cfg = load_config(args.config, args.overrides)
    if global_rank() == 0 and not (args.run_id and args.out):
        parser.error("global rank 0 runs on node 0, started by the flow: it needs --run-id and --out")
    out_dir = args.out or Path(cfg.output_dir) / "distributed-worker"
    tracking.configure(cfg.tracking.tracking_uri)  # a rank is a process of its own: point it at the store
    trained = train_and_export(cfg, args.run_id or "", out_dir, args.resume)
    if trained is not None:
        payload = {"fit": trained.fit.to_dict(), "export_dir": trained.export_dir}
        (out_dir / TRAINED_FILE).write_text(json.dumps(payload))


if __name__ == "__main__":
    main()
