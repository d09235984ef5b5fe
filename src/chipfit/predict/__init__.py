"""Latency prediction: per-node roofline estimates from the ONNX graph, a learned correction calibrated on
the store's measurements, and its held-out evaluation (``chipfit predict-eval``)."""

from chipfit.predict.evaluate import model_folds, predict_eval, training_rows
from chipfit.predict.model import Prediction, Predictor
from chipfit.predict.roofline import model_info, roofline_ms

__all__ = ["Prediction", "Predictor", "model_folds", "model_info", "predict_eval", "roofline_ms", "training_rows"]
