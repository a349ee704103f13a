"""curate.metrics: evaluation metrics of generated text and of models (``text``, ``cost``,
``representation``); scanned by the registry for metric operators.

The LM-output math the distillation trainer needs (token NLL/KL/JS and calibration, performance retention,
parameter counts, peak memory, tokens/s) lives in :mod:`curate.models` (``lm_metrics``, ``calibration``,
``retention``, ``perf``): areas import only ``curate.core``, ``curate.io`` and ``curate.models``, never each
other.
"""
