"""Every snippet in README.md runs as written, on a fresh copy of the repository (its tracked files).

``python`` blocks are saved as scripts and run in a subprocess from the copy's root; ``yaml`` blocks are
pipelines, checked with ``curate validate`` and run with ``curate run``; ``bash`` blocks run in bash from
the copy's root. Commands that call ``.venv/bin/...`` get a ``.venv/bin`` in the copy whose ``curate`` and
``python`` run this interpreter on the copy; ``test_install_command_from_a_fresh_clone`` runs the first
command for real (a new venv, ``pip install -e .``). The second command (setup-dev.sh and the whole test
suite) is what ``.ci/run`` runs; here it is checked to be exactly that, not run inside the suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w+)\n(.*?)^```", README, re.S | re.M)]
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/curate run examples/pipeline.yaml"
TESTS = "bash scripts/setup-dev.sh && .venv/bin/python -m pytest -q"


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def _commands(body: str) -> list[str]:
    return [ln.split(" #")[0].strip() for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _fresh_copy(dest: Path) -> Path:
    """The repository as a fresh clone has it: tracked and untracked-but-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _with_venv_shim(repo: Path) -> Path:
    """``.venv/bin/curate`` and ``.venv/bin/python`` in the copy: this interpreter, importing the copy."""
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, args in (("curate", "-m curate.cli"), ("python", "")):
        script = bin_dir / name
        script.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" {args} "$@"\n')
        script.chmod(0o755)
    return repo


def _env(repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo), "PATH": f"{repo / '.venv' / 'bin'}:{os.environ['PATH']}"}


def _run(cmd: list[str], repo: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return _with_venv_shim(_fresh_copy(tmp_path / "repo"))


def test_readme_has_the_snippets_this_file_runs():
    assert _blocks("python") and _blocks("yaml") and _blocks("bash")
    first = _commands(_blocks("bash")[0])
    assert first == [INSTALL, TESTS], "the README must open with the install+run and install+test commands"
    assert README.index("```bash") < README.index("## "), "the two commands come before any section"


def test_second_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/setup-dev.sh" in ci and "-m pytest -q" in ci
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup-dev.sh")], check=True)


@pytest.mark.parametrize("i", range(len(_blocks("python"))))
def test_python_snippet_runs_as_written(repo: Path, i: int):
    script = repo / f"readme_snippet_{i}.py"
    script.write_text(_blocks("python")[i])
    r = _run([sys.executable, script.name], repo)
    assert "object at 0x" not in r.stdout, f"a snippet printed an object's repr, not its content:\n{r.stdout}"
    if "Pipeline(" in _blocks("python")[i]:
        assert "docs in" in r.stdout, f"the run table is not printed:\n{r.stdout}"


def test_python_tour_on_multi_file_input(repo: Path):
    """The tour as written, on a folder of two input files (as a user's data usually is): two workers
    then really spawn processes, which re-import the unguarded script."""
    import gzip

    data = repo / "examples" / "data"
    lines = gzip.open(data / "web_sample.jsonl.gz", "rt", encoding="utf-8").read().splitlines(keepends=True)
    (data / "web_sample.jsonl.gz").unlink()
    for k, part in enumerate((lines[: len(lines) // 2], lines[len(lines) // 2:])):
        with gzip.open(data / f"web_sample_{k}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(part)
    tour = next(b for b in _blocks("python") if "Pipeline(" in b)
    (repo / "tour.py").write_text(tour)
    r = _run([sys.executable, "tour.py"], repo)
    assert "519" in r.stdout and "object at 0x" not in r.stdout, r.stdout


#: yaml snippets that read or write object storage: loaded (every key checked by the config models), not
#: run, since the bucket they name is the reader's (tests/io/test_storage_s3.py runs the same on moto)
_REMOTE = [b for b in _blocks("yaml") if "s3://" in b]
_LOCAL = [b for b in _blocks("yaml") if "s3://" not in b]


@pytest.mark.parametrize("i", range(len(_REMOTE)))
def test_object_storage_yaml_snippet_loads_and_runs(tmp_path: Path, monkeypatch, i: int):
    """The snippet as written, its endpoint pointed at a moto S3 server started here (credentials from the
    environment, as the README says), the bucket holding the example data."""
    pafs = pytest.importorskip("pyarrow.fs")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra)")
    from curate import Pipeline
    from curate.io.storage import is_uri

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        text = _REMOTE[i].replace("127.0.0.1:9000", endpoint).replace(".curate/", f"{tmp_path}/")
        fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
        fs.create_dir("corpus")
        with fs.open_output_stream("corpus/web/sample.jsonl.gz", compression=None) as f:
            f.write((REPO / "examples" / "data" / "web_sample.jsonl.gz").read_bytes())
        (tmp_path / "readme.yaml").write_text(text)
        p = Pipeline.from_yaml(tmp_path / "readme.yaml")
        result = p.run(workers=1, progress=False)
        assert result.docs_out > 0 and result.remote[p.output.path]["uploaded"]
    finally:
        server.stop()
    assert p.input is not None and p.output is not None
    assert all(is_uri(x) for x in ([p.input.path] if isinstance(p.input.path, str) else p.input.path))
    assert is_uri(p.output.path) and not is_uri(p.work_dir)
    assert set(p.input.storage_options) | set(p.output.storage_options) <= {"endpoint_override", "region", "scheme"}


@pytest.mark.parametrize("i", range(len(_LOCAL)))
def test_yaml_snippet_validates_and_runs(repo: Path, i: int):
    (repo / "readme.yaml").write_text(_LOCAL[i])
    assert "OK" in _run([".venv/bin/curate", "validate", "readme.yaml"], repo).stdout
    r = _run([".venv/bin/curate", "run", "readme.yaml", "--no-progress"], repo)
    assert "519 docs in" in r.stdout, r.stdout


@pytest.mark.parametrize("i", range(1, len(_blocks("bash"))))
def test_bash_snippet_runs_as_written(repo: Path, i: int):
    for cmd in _commands(_blocks("bash")[i]):
        r = subprocess.run(["bash", "-c", cmd], cwd=repo, env=_env(repo), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{cmd!r} failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@pytest.mark.slow
def test_install_command_from_a_fresh_clone(tmp_path: Path):
    """README command 1 exactly as written, in a fresh copy: a new venv, ``pip install -e .`` (about 40 s
    with a warm pip cache), then the example pipeline through the installed ``curate`` command."""
    repo = _fresh_copy(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(["bash", "-c", INSTALL], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"rc {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "519 docs in" in r.stdout and any((repo / "out" / "example").glob("part-*.parquet"))
    meta = subprocess.run([str(repo / ".venv/bin/pip"), "show", "curate-llm"], capture_output=True, text=True)
    assert "Name: curate-llm" in meta.stdout
