"""kd: knowledge distillation for biomedical named entity recognition."""

__version__ = "0.1.0"
