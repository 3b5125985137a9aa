"""captioning: a CNN-encoder / LSTM-decoder image captioner for MS COCO (train, evaluate, serve)."""

from captioning.config import ModelConfig
from captioning.inference import Caption, Captioner
from captioning.vocab import Vocabulary

__all__ = ["Caption", "Captioner", "ModelConfig", "Vocabulary"]
__version__ = "0.1.0"
