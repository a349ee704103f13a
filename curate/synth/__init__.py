"""curate.synth: synthetic-data generation.

Teachers (the :class:`~curate.models.teacher.TeacherBackend` protocol shared with the knowledge-distillation
trainer, and :class:`~curate.models.teacher.LocalHFTeacher`) live in :mod:`curate.models.teacher`. Modules
here are scanned for operators, so they import torch and transformers lazily.
"""
