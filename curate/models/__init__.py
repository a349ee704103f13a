"""curate.models: the one place that loads models (teachers, students, encoders); not scanned for operators."""
