"""The committed experiment results: summary.md is what experiments.py computes from the run
folders, and the README carries its tables row for row."""

import shutil
from pathlib import Path

from helpers import load_repo_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "experiments"


def load():
    return load_repo_script("scripts/experiments.py")


def test_summary_is_recomputed_from_the_run_folders(tmp_path):
    for name in ("metrics.json", "log.csv"):
        for path in RESULTS.rglob(name):
            target = tmp_path / path.relative_to(RESULTS)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    load().summarize(tmp_path, [0, 1, 2])
    assert (tmp_path / "summary.md").read_text() == (RESULTS / "summary.md").read_text()


def test_readme_has_every_row_of_the_summary():
    readme = (ROOT / "README.md").read_text()
    rows = [
        line for line in (RESULTS / "summary.md").read_text().splitlines() if line.startswith("| ")
    ]
    assert len(rows) > 15
    missing = [row for row in rows if row not in readme]
    assert not missing, missing
