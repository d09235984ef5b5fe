"""Latency prediction: per-node roofline estimates from the ONNX graph, a learned correction calibrated on
the store's measurements, and its held-out evaluation (``chipfit predict-eval``); and the kernel-level
predictor of this machine's CPU (``chipfit predict calibrate``: ONNX Runtime's kernels, micro-benchmarked here)."""

from chipfit.predict.calibrate import calibrate, heldout_models, load_calibration, train
from chipfit.predict.evaluate import model_folds, predict_eval, training_rows
from chipfit.predict.kernel_predictor import KernelPredictor
from chipfit.predict.model import Prediction, Predictor
from chipfit.predict.roofline import model_info, roofline_ms

__all__ = [
    "KernelPredictor",
    "Prediction",
    "Predictor",
    "calibrate",
    "heldout_models",
    "load_calibration",
    "model_folds",
    "model_info",
    "predict_eval",
    "roofline_ms",
    "train",
    "training_rows",
]
