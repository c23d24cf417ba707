"""Training: configuration, the shared loop, checkpoints, evaluation, pretraining."""
from minillm.train.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from minillm.train.config import TrainConfig
from minillm.train.evaluate import evaluate_language_model
from minillm.train.trainer import LoopSettings, NonFiniteLossError, Trainer

__all__ = ["Checkpoint", "LoopSettings", "NonFiniteLossError", "TrainConfig", "Trainer",
           "evaluate_language_model", "load_checkpoint", "load_model", "save_checkpoint"]
