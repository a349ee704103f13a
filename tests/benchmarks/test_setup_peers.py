"""benchmarks/setup_peers.sh: valid bash, every default peer has a build step with == pins."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "setup_peers.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_parses_and_covers_its_peers() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    default = re.search(r'PEERS=\$\{\*:-([a-z ]+)\}', text).group(1).split()
    assert {"datatrove", "datasketch", "pydvl", "trak", "trl", "ccnet"} <= set(default)
    for peer in default:
        assert re.search(rf"^\s+{peer}\)", text, re.M), f"no build step for {peer}"
    # every version variable is an exact pin, and torch is the local 2.13.0 wheel
    for name, ver in re.findall(r"^([A-Z_]+)=([^\s#]+)", text, re.M):
        if name not in ("DEST", "PEERS", "PY", "CCNET_COMMIT"):
            assert re.fullmatch(r"\d+(\.\d+)*", ver), f"{name}={ver} is not an exact version"
    assert re.search(r"^TORCH=2\.13\.0$", text, re.M)
