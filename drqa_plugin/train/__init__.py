"""CKDN distillation training (Accelerate / DeepSpeed): ``python -m drqa_plugin.train --config ...``.

Importing this package is cheap; the trainer itself lives in :mod:`drqa_plugin.train.trainer`.
"""

from drqa_plugin.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
