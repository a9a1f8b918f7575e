"""drqa-plugin: degraded-reference image quality assessment (CKDN) for restoration training."""

from drqa_plugin.models.ckdn import CKDN, CKDNConfig, TrainOutputs
from drqa_plugin.registry import PreprocessConfig, PretrainedConfig, create_model, list_models
from drqa_plugin.weights import WeightsError, load_model, read_metadata, save_model, save_weights
from drqa_plugin.convert import convert_checkpoint, init_from_imagenet_resnet50
from drqa_plugin.preprocess import ImageInputError
from drqa_plugin.scorer import DRIQA

__version__ = "0.1.0"

__all__ = [
    "DRIQA",
    "ImageInputError",
    "CKDN",
    "CKDNConfig",
    "TrainOutputs",
    "PreprocessConfig",
    "PretrainedConfig",
    "WeightsError",
    "create_model",
    "list_models",
    "load_model",
    "read_metadata",
    "save_model",
    "save_weights",
    "convert_checkpoint",
    "init_from_imagenet_resnet50",
    "__version__",
]
