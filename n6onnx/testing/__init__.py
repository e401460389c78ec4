"""Test scaffolding that ships with the package so that tests, benchmarks and the demo share it:
the zoo of exported models (``zoo``: random-weight transformers configs and the packaged
pretrained all-MiniLM-L6-v2; ``zoo_moe``: MoE architectures), and the demo/calibration text corpus
(``corpus``: sentences from Python standard-library docstrings).

Production code (passes, calibrate, validate, bench, report, the API) never imports this package;
an import contract in pyproject.toml enforces it. Only ``n6onnx demo`` does.
"""
