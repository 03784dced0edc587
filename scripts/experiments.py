"""The paper's ablations on the digit scenes: Table 3, the Appendix-A noise study, Fig. 4, and the
held-out check, all at the demo's budget (configs/demo.yaml as it is).

    python scripts/experiments.py                      # the whole set (see README for its time)
    python scripts/experiments.py --quick              # seconds: tiny budget, one seed, smoke test
    python scripts/experiments.py --only table3        # one part
    python scripts/experiments.py --only heldout       # the held-out check
    python scripts/experiments.py --only table3 --methods sup_only baseline ppl   # those first

Every run is a training run (`ppl_tf.run.train`, what `scripts/train.py` runs) on the demo config
with a few overrides. `--jobs 2` (default) runs two train.py processes at a time with one
TensorFlow thread each (on 2 cores two small runs at once give about 1.65x the throughput of one
run with two threads); `--jobs 1` runs them one after another in this process. A run whose
`metrics.json` exists is skipped, so an interrupted set restarts where it stopped; if its
`config.yaml` differs from what the demo config gives it now (the file was edited since), it is
still kept, and named "[stale]" with the keys that differ: delete its folder to rerun it.
Results go to `--out` (default results/experiments/): one folder per run, `summary.json`,
`summary.md` (the tables that go into the README), `fig4.png`, `teacher_curves.png` (val teacher
mIoU per epoch of the first seed's supervised-only, baseline and PPL runs on both layouts) and
`experiments.log` (what this script said, with times).

Runs (1/16 labels unless "full"):
- Table 3: supervised only; mean-teacher baseline (n = 0); + pull only (n = 2, no Eq. 1);
  + push only (n = 2, no attention); PPL (n = 2); fully supervised baseline and PPL (all labels,
  unlabeled = the same images). Mean +/- std over the seeds; Gap = Fully - Semi.
- Noise study (Appendix A): pseudo-labels = ground truth with 0/10/20/40% of pixels replaced by
  the teacher's 2nd or 3rd class, baseline vs PPL, first seed.
- Fig. 4: pseudo-label mIoU and recall per epoch for the baseline, one stage and two stages.
- Held-out check (`heldout`): supervised only, baseline and PPL on the "crowded" digit layout
  (128x128 scenes, more and smaller digits, trained on 64-px crops), first seed: the demo's
  settings were never tuned on it.
- Third layout (`layout3`): supervised only, baseline and PPL on the "overlap" digit layout
  (96x96 scenes, 2-3 large digits that may cover each other, striped backgrounds), every
  seed: where fixes are chosen beside the standard scenes, so that the crowded layout stays
  held out.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABLE3 = {
    "sup_only": ["use_unlabeled=false", "num_stages=0"],
    "baseline": ["num_stages=0"],
    "pull_only": ["num_stages=2", "use_push=false"],
    "push_only": ["num_stages=2", "use_attention=false"],
    "ppl": ["num_stages=2"],
    "full_baseline": ["labeled=all", "num_stages=0"],
    "full_ppl": ["labeled=all", "num_stages=2"],
}
NOISE = (0.0, 0.1, 0.2, 0.4)
HELDOUT = ("sup_only", "baseline", "ppl")
PARTS = ("table3", "noise", "fig4", "heldout", "layout3")
BUDGET = {}  # configs/demo.yaml as it is
QUICK = {
    "epochs": 2,
    "steps_per_epoch": 2,
    "warmup_epochs": 1,
    "batch_size": 2,
    "digits_train_scenes": 48,
}


LOG = []  # [Path]: where say() appends (out/experiments.log), set by main()


def say(message):
    """Prints and appends to out/experiments.log: the run times stay with the results."""
    print(message, flush=True)
    if LOG:
        with open(LOG[0], "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def plan(seeds, parts, budget=BUDGET, methods=tuple(TABLE3)):
    """[(run name, overrides)] in execution order; overrides start with the run's budget.
    `methods` narrows Table 3 and the held-out check to those rows."""
    budget = [f"{k}={v}" for k, v in budget.items()]
    runs = []
    if "table3" in parts:
        for seed in seeds:
            for name, overrides in TABLE3.items():
                if name not in methods:
                    continue
                runs.append((f"table3/{name}_s{seed}", [*budget, *overrides, f"seed={seed}"]))
    if "noise" in parts:
        for ratio in NOISE:
            for name, stages in (("baseline", 0), ("ppl", 2)):
                runs.append(
                    (
                        f"noise/{name}_{int(ratio * 100):02d}",
                        [
                            *budget,
                            f"num_stages={stages}",
                            f"noise_ratio={ratio}",
                            f"seed={seeds[0]}",
                        ],
                    )
                )
    if "fig4" in parts:
        runs.append((f"fig4/one_stage_s{seeds[0]}", [*budget, "num_stages=1", f"seed={seeds[0]}"]))
    if "heldout" in parts:
        for name in (m for m in HELDOUT if m in methods):
            runs.append(
                (
                    f"heldout/{name}_s{seeds[0]}",
                    [*budget, *TABLE3[name], "digits_layout=crowded", f"seed={seeds[0]}"],
                )
            )
    if "layout3" in parts:
        for seed in seeds:
            for name in (m for m in HELDOUT if m in methods):
                overrides = [*budget, *TABLE3[name], "digits_layout=overlap", f"seed={seed}"]
                runs.append((f"layout3/{name}_s{seed}", overrides))
    return runs


def changed_keys(folder, argv):
    """{key: (the finished run's value, the value a run would get now)} for every key the
    run's config.yaml has whose value differs from `configs/demo.yaml` + `argv` today (keys
    added to the config after the run was made are not in its file, and are not compared)."""
    import yaml

    from ppl_tf.config import DEMO_CONFIG, ConfigError, load_config

    path = folder / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())  # PyYAML's message spans lines
        raise SystemExit(
            f"experiments: {path}: not valid YAML ({reason}); delete {folder} to rerun it"
        ) from None
    if not isinstance(saved, dict):
        raise SystemExit(f"experiments: {path}: not a mapping of keys; delete {folder} to rerun it")
    try:
        now = load_config(DEMO_CONFIG, argv).to_dict()
    except ConfigError as error:
        raise SystemExit(f"experiments: run {folder.name}: {error}") from None
    return {
        key: (saved[key], value)
        for key, value in now.items()
        if key in saved and key not in ("out", "cache_dir") and saved[key] != value
    }


def pending(runs, out, cache_dir):
    """The runs without metrics.json. A finished run whose config differs from what it would
    be run with now (configs/demo.yaml was edited) is kept, not rerun, and named."""
    todo = []
    for name, overrides in runs:
        folder = out / name
        if not (folder / "metrics.json").is_file():
            todo.append((name, overrides))
            continue
        changed = {}
        if (folder / "config.yaml").is_file():
            changed = changed_keys(folder, train_argv(name, overrides, out, cache_dir))
        if changed:
            shown = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            say(
                f"[stale] {name}: finished with another config ({shown}); kept and summarized "
                f"as it is: delete {folder} to rerun it"
            )
        else:
            say(f"[skip] {name}: finished before")
    return todo


def train_argv(name, overrides, out, cache_dir):
    extra = [f"out={out / name}", "export=false", "images_to_log=0", f"cache_dir={cache_dir}"]
    return [*overrides, *extra]


def run_all(runs, out, cache_dir, jobs=1):
    """Runs what has not finished; with jobs > 1, that many train.py processes at a time, each
    with cores / jobs TensorFlow threads (small models use two cores poorly)."""
    todo = pending(runs, out, cache_dir)
    if jobs > 1:
        run_parallel(todo, out, cache_dir, jobs)
        return len(todo)
    from ppl_tf.config import DEMO_CONFIG, ConfigError, load_config
    from ppl_tf.data import DataError
    from ppl_tf.distribute import StrategyError
    from ppl_tf.run import RunError, TrainingDiverged, train

    for name, overrides in todo:
        say(f"[run] {name}: {' '.join(overrides)}")
        start = time.perf_counter()
        try:
            train(load_config(DEMO_CONFIG, train_argv(name, overrides, out, cache_dir)))
        except (ConfigError, DataError, StrategyError, RunError, TrainingDiverged) as error:
            raise SystemExit(f"experiments: run {name} failed: {error}") from None
        say(f"[done] {name} in {time.perf_counter() - start:.0f} s")
    return len(todo)


def run_parallel(todo, out, cache_dir, jobs):
    threads = str(max(1, (os.cpu_count() or jobs) // jobs))
    env = {
        **os.environ,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    # Processes that start together may each write the digit scenes; materialize() renames a
    # finished folder into place, so they cannot see each other's half-written files.

    def one(item):
        name, overrides = item
        log = out / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        say(f"[run] {name}: {' '.join(overrides)} (log {log.relative_to(out)})")
        start = time.perf_counter()
        argv = [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            *train_argv(name, overrides, out, cache_dir),
        ]
        with open(log, "w") as handle:
            code = subprocess.run(argv, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
        if code != 0:
            return f"run {name} failed with exit code {code}; see {log}"
        say(f"[done] {name} in {time.perf_counter() - start:.0f} s")
        return None

    with ThreadPoolExecutor(jobs) as pool:
        failures = [f for f in pool.map(one, todo) if f]
    if failures:
        raise SystemExit("experiments: " + "; ".join(failures))


def read_metrics(folder):
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_log(folder):
    path = folder / "log.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def mean_std(values):
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std, len(values)


def fmt(triple, seeds=None):
    """The mean ± std in %, with the run count when some seeds have not finished."""
    mean, std, count = triple
    if mean is None:
        return "-"
    partial = f" (n={count})" if seeds is not None and count < len(seeds) else ""
    return f"{100 * mean:.2f} ± {100 * std:.2f}{partial}"


def summarize(out, seeds):
    """Tables from the run folders -> summary.json, summary.md and fig4.png."""
    summary = {
        "seeds": list(seeds),
        "table3": {},
        "noise": {},
        "fig4": {},
        "heldout": {},
        "layout3": {},
    }
    for name in TABLE3:
        runs = [m for s in seeds if (m := read_metrics(out / "table3" / f"{name}_s{s}"))]
        teacher = [m["teacher_miou"] for m in runs]
        student = [m["student_miou"] for m in runs]
        summary["table3"][name] = {
            "teacher_miou": teacher,
            "mean_std": mean_std(teacher),
            "student_miou": student,
            "student_mean_std": mean_std(student),
        }
    for ratio in NOISE:
        for name in ("baseline", "ppl"):
            m = read_metrics(out / "noise" / f"{name}_{int(ratio * 100):02d}")
            summary["noise"][f"{name}_{int(ratio * 100):02d}"] = m and m["teacher_miou"]
    first = seeds[0]
    for name in HELDOUT:
        m = read_metrics(out / "heldout" / f"{name}_s{first}")
        summary["heldout"][name] = m and {k: m[k] for k in ("teacher_miou", "student_miou")}
        runs = [m for s in seeds if (m := read_metrics(out / "layout3" / f"{name}_s{s}"))]
        summary["layout3"][name] = {
            "teacher_miou": [m["teacher_miou"] for m in runs],
            "student_miou": [m["student_miou"] for m in runs],
        }
    for label, folder in (
        ("baseline", out / "table3" / f"baseline_s{first}"),
        ("one stage", out / "fig4" / f"one_stage_s{first}"),
        ("two stages", out / "table3" / f"ppl_s{first}"),
    ):
        rows = read_log(folder)
        summary["fig4"][label] = {
            "pseudo_miou": [float(r["pseudo_miou"]) for r in rows if "pseudo_miou" in r],
            "pseudo_recall": [float(r["pseudo_recall"]) for r in rows if "pseudo_recall" in r],
        }
    lines = [
        f"mIoU (%) on the digit-scene val set, mean ± std over seeds {list(seeds)}; the "
        "teacher is the EMA network, the student is shown beside it.",
        "",
        "| method | Semi (1/16) teacher | Fully teacher | Gap | Semi student | Fully student |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    t3 = summary["table3"]
    for name, full in (
        ("sup_only", None),
        ("baseline", "full_baseline"),
        ("pull_only", None),
        ("push_only", None),
        ("ppl", "full_ppl"),
    ):
        semi = t3[name]["mean_std"]
        fully = t3[full]["mean_std"] if full else (None, None, 0)
        gap = "-"
        if full and semi[0] is not None and fully[0] is not None:
            gap = f"{100 * (fully[0] - semi[0]):.2f}"
        semi_s = t3[name]["student_mean_std"]
        fully_s = t3[full]["student_mean_std"] if full else (None, None, 0)
        lines.append(
            f"| {name} | {fmt(semi, seeds)} | {fmt(fully, seeds)} | {gap} | "
            f"{fmt(semi_s, seeds)} | {fmt(fully_s, seeds)} |"
        )
    lines += [
        "",
        f"Noise study (Appendix A), teacher mIoU (%), seed {first}; drop = mIoU at the row's "
        'noise minus mIoU at 0% (the paper\'s "mIoU Gap"):',
        "",
        "| noise | baseline | drop | PPL | drop |",
        "| --- | --- | --- | --- | --- |",
    ]
    clean = {n: summary["noise"][f"{n}_{int(NOISE[0] * 100):02d}"] for n in ("baseline", "ppl")}
    for ratio in NOISE:
        key = int(ratio * 100)
        cells = []
        for name in ("baseline", "ppl"):
            value = summary["noise"][f"{name}_{key:02d}"]
            cells.append("-" if value is None else f"{100 * value:.2f}")
            drop = None if value is None or clean[name] is None else value - clean[name]
            cells.append("-" if drop is None else f"{100 * drop:+.2f}")
        lines.append(f"| {key}% | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Held-out check: the crowded layout (128x128 scenes, 4-8 digits of 14-22 px, "
        f"64-px crops), seed {first}, mIoU (%):",
        "",
        "| method | teacher | student |",
        "| --- | --- | --- |",
    ]
    for name, m in summary["heldout"].items():
        cells = (
            ("-", "-")
            if not m
            else (f"{100 * m['teacher_miou']:.2f}", f"{100 * m['student_miou']:.2f}")
        )
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    if any(m["teacher_miou"] for m in summary["layout3"].values()):
        lines += [
            "",
            "Third layout (overlap: 96x96 scenes, 2-3 digits of 30-44 px that may cover each "
            f"other, striped backgrounds, 64-px crops), mean ± std over seeds {list(seeds)}, "
            "mIoU (%):",
            "",
            "| method | teacher | student |",
            "| --- | --- | --- |",
        ]
        for name, m in summary["layout3"].items():
            teacher, student = mean_std(m["teacher_miou"]), mean_std(m["student_miou"])
            lines.append(f"| {name} | {fmt(teacher, seeds)} | {fmt(student, seeds)} |")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if any(curve["pseudo_miou"] for curve in summary["fig4"].values()):
        plot_fig4(summary["fig4"], out / "fig4.png")  # nothing to draw before any run has a curve
    curves = teacher_curves(out, first)
    if any(curves[layout] for layout in curves):
        plot_teacher_curves(curves, out / "teacher_curves.png")
    print("\n".join(lines))
    return summary


def teacher_curves(out, seed):
    """{layout: {method: ([(epoch from 1, val teacher mIoU)], warm-up epochs)}} of the seed's
    supervised-only, baseline and PPL runs on the standard scenes (Table 3) and the held-out
    layout: how fast each starts, and where the unlabeled loss begins."""
    curves = {}
    for layout, part in (("standard scenes (Table 3)", "table3"), ("held-out layout", "heldout")):
        curves[layout] = {}
        for name in HELDOUT:
            folder = out / part / f"{name}_s{seed}"
            points = [
                (int(r["epoch"]) + 1, float(r["val_teacher_miou"]))
                for r in read_log(folder)
                if r.get("val_teacher_miou")
            ]
            if points:
                curves[layout][name] = (points, read_warmup_epochs(folder))
    return curves


def read_warmup_epochs(folder):
    import yaml

    path = folder / "config.yaml"
    config = yaml.safe_load(path.read_text()) if path.is_file() else None
    return (config or {}).get("warmup_epochs")


def plot_teacher_curves(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(10, 3.5), sharey=True)
    drawn = {layout: {} for layout in curves}  # what each panel shows, for the tests
    for axis, (layout, runs) in zip(axes, curves.items(), strict=True):
        warmups = {warmup for _, warmup in runs.values() if warmup}
        for warmup in warmups:
            axis.axvline(warmup, color="gray", linestyle=":", label=f"end of warm-up ({warmup})")
        for name, (points, _) in runs.items():
            epochs, values = zip(*points, strict=True)
            (line,) = axis.plot(epochs, [100 * v for v in values], label=name)
            drawn[layout][name] = line.get_ydata().tolist()
        axis.set_title(layout)
        axis.set_xlabel("epoch")
        if runs:  # a layout without finished runs stays an empty panel
            axis.legend()
    axes[0].set_ylabel("val teacher mIoU (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return drawn


def plot_fig4(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for label, values in curves.items():
        for axis, key in zip(axes, ("pseudo_miou", "pseudo_recall"), strict=True):
            if values[key]:
                axis.plot(
                    range(1, len(values[key]) + 1), [100 * v for v in values[key]], label=label
                )
    for axis, title in zip(axes, ("pseudo-label mIoU (%)", "pseudo-label recall (%)"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "experiments"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=tuple(TABLE3),
        default=tuple(TABLE3),
        help="Table 3 / held-out rows to run (default: all); the summary "
        "still reads every finished run",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget and one seed")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at a time, each in its own process with cores/jobs threads; "
        "1 = one after another in this process",
    )
    parser.add_argument("--cache-dir", default=str(ROOT / "data_cache"))
    args = parser.parse_args(argv)
    budget, seeds = BUDGET, args.seeds
    if args.quick:
        budget, seeds = QUICK, args.seeds[:1]
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(
        json.dumps({"budget": budget or "configs/demo.yaml as it is", "seeds": seeds}) + "\n"
    )
    LOG[:] = [out / "experiments.log"]
    start = time.perf_counter()
    say(f"experiments: {' '.join(args.only)}, seeds {seeds}, --jobs {args.jobs}")
    ran = run_all(plan(seeds, args.only, budget, args.methods), out, args.cache_dir, args.jobs)
    summary = summarize(out, seeds)
    say(f"experiments: {time.perf_counter() - start:.0f} s, {ran} runs (others finished before)")
    return summary


if __name__ == "__main__":
    main()
