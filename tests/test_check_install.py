"""scripts/check_install.py's own logic: finding interpreters and failing on a missing one. The
install check itself (venvs, installs, a training run per Python) is what .ci/run runs."""

import os
import sys
from pathlib import Path

from helpers import load_repo_script


def load():
    return load_repo_script("scripts/check_install.py")


def test_finds_this_python_by_version_and_by_path(monkeypatch):
    check = load()
    # A venv's bin/ has pythonX.Y, but is not on PATH when the venv is used without activating it.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    version = "%d.%d" % sys.version_info[:2]
    python, _ = check.find_python(version)
    assert python is not None and check.python_version(python) == version
    assert check.find_python(sys.executable)[0] == sys.executable


def test_a_missing_python_fails_the_check_and_says_where_it_looked(tmp_path, capsys, monkeypatch):
    check = load()
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    assert check.find_python("3.99") == (
        None,
        ["python3.99 on PATH", str(tmp_path / "versions" / "3.99.*" / "bin" / "python3.99")],
    )
    assert check.main(["3.99", str(tmp_path / "python3.98"), "--venvs", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "  3.99: FAILED: Python 3.99 not found (looked at: python3.99 on PATH;" in out
    assert f"  {tmp_path / 'python3.98'}: FAILED: Python {tmp_path / 'python3.98'} not" in out
    assert ": OK" not in out
    assert not list(tmp_path.glob("py*")), "no venv is made for a Python that is not there"
