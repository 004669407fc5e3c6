"""Classifiers of the default model's domain (emoji glyphs), used to score generated pictures: CNN-SVM, MobileNetV2,
and the teacher VAE's encoder features with a linear SVM."""

from .cnn_svm import CNNSVM, squared_hinge_loss
from .mobilenet_v2 import InvertedResidual, MobileNetV2
from .vae_features import FeatureSVM, VAEFeatures
from .zoo import CLASSIFIERS, build_classifier, load_classifier, save_classifier

__all__ = ["CLASSIFIERS", "CNNSVM", "FeatureSVM", "InvertedResidual", "MobileNetV2", "VAEFeatures",
           "build_classifier", "load_classifier", "save_classifier", "squared_hinge_loss"]
