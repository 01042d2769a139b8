"""A scikit-learn pipeline converted by skl2onnx (a real exporter, ``ai.onnx.ml`` operators).

Trained offline on ``make_classification`` data (no download), then converted with a fixed
target opset so the file does not change with skl2onnx's default. The graph mixes the default
domain with ``ai.onnx.ml`` (Scaler, TreeEnsembleClassifier, ZipMap) and has a non-tensor
output: ``output_probability`` is a sequence of maps.
"""

from __future__ import annotations

import onnx

TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}


def sklearn_pipeline(*, seed: int = 9) -> onnx.ModelProto:
    """StandardScaler -> PCA(6) -> RandomForestClassifier(12 trees, depth 6) on 10 features."""
    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import make_classification
        from sklearn.decomposition import PCA
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "corpus entry 'sklearn_pipeline' needs the packages skl2onnx and scikit-learn"
        ) from exc

    x, y = make_classification(
        n_samples=300, n_features=10, n_informative=6, n_classes=3, random_state=seed
    )
    x = x.astype("float32")
    pipe = make_pipeline(
        StandardScaler(),
        PCA(n_components=6, random_state=seed),
        RandomForestClassifier(n_estimators=12, max_depth=6, random_state=seed),
    ).fit(x, y)
    model = to_onnx(pipe, x[:1], target_opset=dict(TARGET_OPSET))
    model.doc_string = "sklearn StandardScaler+PCA+RandomForest, converted by skl2onnx"
    return model
