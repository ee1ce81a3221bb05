"""Pairwise affinity (GGN stage 1): targets, network, training, inference, evaluation."""

from oln.affinity.model import PAModelOptions, build_pa_model, load_pa_model, save_pa_model
from oln.affinity.predict import predict_affinity
from oln.affinity.targets import affinity_targets, instance_label_map, num_affinity_channels
from oln.affinity.train import PADataOptions, PATargetOptions, PATrainOptions, affinity_loss, train_pa

__all__ = [
    "PADataOptions",
    "PAModelOptions",
    "PATargetOptions",
    "PATrainOptions",
    "affinity_loss",
    "affinity_targets",
    "build_pa_model",
    "instance_label_map",
    "load_pa_model",
    "num_affinity_channels",
    "predict_affinity",
    "save_pa_model",
    "train_pa",
]
