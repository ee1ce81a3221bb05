"""Class-agnostic detectors (Mask R-CNN, Faster R-CNN, OLN, two-tower) on torchvision."""

from oln.detector.model import ARCHS, DetectorOptions, build_detector
from oln.detector.predict import PredictOptions, load_detector, predict
from oln.detector.train import DetectorTrainOptions, train_detector

__all__ = [
    "ARCHS",
    "DetectorOptions",
    "DetectorTrainOptions",
    "PredictOptions",
    "build_detector",
    "load_detector",
    "predict",
    "train_detector",
]
