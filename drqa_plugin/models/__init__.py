from drqa_plugin.models.ckdn import CKDN, CKDNConfig, TrainOutputs

__all__ = ["CKDN", "CKDNConfig", "TrainOutputs"]
