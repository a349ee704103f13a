"""curate.models: the one place that loads models (causal LMs, sentence encoders, fastText, KenLM, teachers).

Areas (``curate.filters``, ``curate.selectors``, ``curate.synth``, ``curate.distill``, ``curate.metrics``)
load models only through this package, and this package imports only ``curate.core`` and ``curate.io``.
It is not scanned by the operator registry: it holds loaders, never operators. Heavy libraries (torch,
transformers, sentence-transformers, fasttext, kenlm) are imported inside functions.
"""
