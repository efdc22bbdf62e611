"""The IBSI compliance generator's entry points: ``medkern ibsi-compliance`` and
``python -m medkern._radiomics.compliance``. The generator itself is checked row by row in
test_radiomics.py; here only what a user meets before any feature is computed."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from medkern._radiomics import RadiomicsResult, compliance
from medkern.cli import main


def test_help_lists_the_generator_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ibsi-compliance", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: medkern ibsi-compliance" in out and "IBSI 1 compliance" in out
    assert "--data" in out and "--out" in out and "MEDKERN_SHARED_DATA" in out


def test_missing_data_folder_fails_with_one_clear_line(tmp_path, capsys):
    missing, out = tmp_path / "no-such-data", tmp_path / "table.md"
    assert main(["ibsi-compliance", "--data", str(missing), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medkern ibsi-compliance: error: IBSI data not found")
    assert str(missing) in err and "--data" in err and "MEDKERN_SHARED_DATA" in err
    assert "\n" not in err and not out.exists()


def test_default_data_folder_comes_from_the_environment(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "elsewhere"
    monkeypatch.setenv("MEDKERN_SHARED_DATA", str(missing))
    assert main(["ibsi-compliance", "--out", str(tmp_path / "table.md")]) == 1
    assert str(missing) in capsys.readouterr().err


def test_module_entry_point_takes_the_same_arguments(tmp_path):
    missing = tmp_path / "no-such-data"
    done = subprocess.run([sys.executable, "-m", "medkern._radiomics.compliance", "--data", str(missing),
                           "--out", str(tmp_path / "table.md")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("python -m medkern._radiomics.compliance: error: IBSI data not found")
    assert str(missing) in done.stderr and "Traceback" not in done.stderr


def test_annotations_resolve():
    assert typing.get_type_hints(compliance.compute)["return"] is RadiomicsResult
    assert typing.get_type_hints(compliance.compare)["result"] is RadiomicsResult
