"""Model stage: a decoder-only transformer. It knows token ids, never text."""

from codelm.model.config import PRESETS, ModelConfig
from codelm.model.transformer import Transformer

__all__ = ["PRESETS", "ModelConfig", "Transformer"]
