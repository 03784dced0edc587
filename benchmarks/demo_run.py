"""How long README command 1's training job takes on this machine, and its peak memory.

    python benchmarks/demo_run.py                       # the demo as it is (about 14 min here)
    python benchmarks/demo_run.py --out /tmp/quick epochs=1 steps_per_epoch=2   # seconds

(`--out` elsewhere for a quick try: the default folder holds the recorded measurement.)

Runs `scripts/train.py` with `configs/demo.yaml` and the given overrides in a child process
(run folder and export in a temporary folder, the digit scenes in `--cache-dir`, generated on
first use), shows its progress bar, and measures the wall time end to end (training,
evaluation, PNGs, export) and the child's peak resident memory. The run's own `metrics.json`
gives the training time (fit's wall time), the part of it inside train steps (the rest went to
validation, logs, images and backups between them) and the val mIoU. Writes
results/demo_run.{json,md}; the demo's budget is 15 minutes for one run on this machine (the
issue that set it), and the table says whether the run kept to it.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BUDGET_MINUTES = 15.0


def git_commit():
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", help="where the digit scenes are (default: the config's)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for demo_run.{json,md}")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    owned = [o for o in args.overrides if o.split("=")[0] in ("out", "export_dir", "cache_dir")]
    if owned:
        parser.error(f"{owned[0]}: the run and export go to a temporary folder; use --cache-dir")
    with tempfile.TemporaryDirectory() as work:
        overrides = [f"out={work}/run", f"export_dir={work}/exported", *args.overrides]
        if args.cache_dir:
            overrides.append(f"cache_dir={args.cache_dir}")
        command = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides]
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT)
        # wait4 gives this child's own resource usage (ru_maxrss: its peak, in kB on Linux),
        # not the largest of every child this process has waited for
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        if code != 0:
            raise SystemExit(f"demo_run.py: scripts/train.py exited with {code}; nothing written")
        metrics_file = Path(work) / "run" / "metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as error:
            message = f"demo_run.py: {metrics_file}: unreadable ({error}); nothing written"
            raise SystemExit(message) from None
        missing = [k for k in ("train_seconds", "teacher_miou", "student_miou") if k not in metrics]
        if missing:
            raise SystemExit(f"demo_run.py: {metrics_file}: no {missing[0]}; nothing written")
    peak_gb = usage.ru_maxrss / 1024**2
    row = {
        "overrides": args.overrides,
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "wall_minutes": round(wall / 60, 2),
        "train_minutes": round(metrics["train_seconds"] / 60, 2),
        # runs made before metrics.json had step_seconds: unknown
        "outside_steps_pct": (
            round(100 * (1 - metrics["step_seconds"] / metrics["train_seconds"]), 1)
            if metrics.get("step_seconds") and metrics["train_seconds"] > 0
            else None
        ),
        "peak_memory_gb": round(peak_gb, 2),
        "teacher_miou": metrics["teacher_miou"],
        "student_miou": metrics["student_miou"],
        "within_budget": wall / 60 <= BUDGET_MINUTES,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_run.json").write_text(json.dumps(row, indent=1) + "\n")
    shown = " ".join(args.overrides) or "none (configs/demo.yaml as it is)"
    outside = "-" if row["outside_steps_pct"] is None else f"{row['outside_steps_pct']:.1f}%"
    lines = [
        f"`python benchmarks/demo_run.py` at {row['commit']}, {row['date']}, {row['cpus']} CPUs; "
        f"overrides: {shown}",
        "",
        "| wall time, end to end | training | of it outside train steps | peak memory "
        f"| teacher mIoU | student mIoU | within {BUDGET_MINUTES:.0f} min |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {row['wall_minutes']:.1f} min | {row['train_minutes']:.1f} min | {outside} "
        f"| {row['peak_memory_gb']:.2f} GB | {100 * row['teacher_miou']:.2f} "
        f"| {100 * row['student_miou']:.2f} | {'yes' if row['within_budget'] else 'no'} |",
    ]
    (out / "demo_run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return row


if __name__ == "__main__":
    main()
