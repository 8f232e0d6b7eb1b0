"""Apache Beam pipelines that turn raw recommender / graph data into sharded TFRecords.

Keras 2 must be selected before TensorFlow is imported anywhere (TF-GNN and TF
Recommenders require it), so the package sets ``TF_USE_LEGACY_KERAS`` on import.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
