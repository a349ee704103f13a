"""curate.synth: synthetic-data generation.

``curate.synth.teacher`` defines the :class:`~curate.synth.teacher.TeacherBackend` protocol shared with the
knowledge-distillation trainer (``curate.distill``) and its local transformers implementation
:class:`~curate.synth.teacher.LocalHFTeacher`. Modules here are scanned for operators, so they import torch
and transformers lazily.
"""
