"""drqa-plugin: degraded-reference image quality assessment (CKDN) for restoration training."""

from drqa_plugin.convert import convert_checkpoint, init_from_imagenet_resnet50
from drqa_plugin.errors import (
    ConfigError,
    DataError,
    DRQAError,
    ImageInputError,
    TrainingError,
    WeightsError,
)
from drqa_plugin.hub import download_weights, list_weights, register_weights, resolve_weights
from drqa_plugin.loss import DRIQALoss
from drqa_plugin.models.ckdn import CKDN, CKDNConfig, TrainOutputs
from drqa_plugin.pretrained import PreprocessConfig, PretrainedConfig
from drqa_plugin.registry import create_model, list_models
from drqa_plugin.scorer import DRIQA
from drqa_plugin.weights import load_model, read_metadata, save_model, save_weights

__version__ = "0.2.0"

__all__ = [
    "CKDN",
    "CKDNConfig",
    "ConfigError",
    "DRIQA",
    "DRIQALoss",
    "DRQAError",
    "DataError",
    "ImageInputError",
    "PreprocessConfig",
    "PretrainedConfig",
    "TrainOutputs",
    "TrainingError",
    "WeightsError",
    "__version__",
    "convert_checkpoint",
    "create_model",
    "download_weights",
    "init_from_imagenet_resnet50",
    "list_models",
    "list_weights",
    "load_model",
    "read_metadata",
    "register_weights",
    "resolve_weights",
    "save_model",
    "save_weights",
]
