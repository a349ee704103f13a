"""scripts/build-kenlm-tools.sh as setup-dev.sh calls it: a relative PYTHON and DEST must still be found after
the script moves into its temporary build folder (CI built no tools: `.venv/bin/python: No such file`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_relative_python_and_dest_are_resolved_before_the_build(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    marker = tmp_path / "called"
    fake = tmp_path / "venv" / "bin" / "python"
    # stands in for pip: records that it was reached, then fails (nothing is downloaded or compiled)
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": "venv/bin/python"}
    env.pop("KENLM_SDIST", None)
    r = subprocess.run(["bash", str(REPO / "scripts" / "build-kenlm-tools.sh"), "venv/bin"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert marker.exists(), r.stderr  # the relative interpreter was found from inside the build folder
    assert "pip download" in marker.read_text().replace("-m pip download", "pip download")
