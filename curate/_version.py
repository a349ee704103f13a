"""curate's version: the one place it is set (pyproject reads it; the run manifest records it).

A leaf module, so code below the ``curate`` facade (executors, the CLI) can read the version without
importing ``curate/__init__.py``, which imports the pipeline (an import cycle otherwise).
"""

__version__ = "0.1.0"
