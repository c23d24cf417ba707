"""Training: the shared config sections, the loop, checkpoints, evaluation, pretraining."""
from minillm.train.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from minillm.train.config import DataSection, LoopSection, ModelSection, OptimSection, TrainConfig
from minillm.train.evaluate import evaluate_language_model
from minillm.train.trainer import NonFiniteLossError, Trainer, TrainingInterrupted, prepare_run_folder

__all__ = ["Checkpoint", "DataSection", "LoopSection", "ModelSection", "NonFiniteLossError", "OptimSection",
           "TrainConfig", "Trainer", "TrainingInterrupted", "evaluate_language_model", "load_checkpoint", "load_model",
           "prepare_run_folder", "save_checkpoint"]
