import numpy as np
import pytest


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory):
    from n6onnx.testing import corpus

    s = corpus.sentences()
    d = tmp_path_factory.mktemp("calib")
    (d / "calib.txt").write_text("\n".join(s[:64]))
    (d / "heldout.txt").write_text("\n".join(s[1000:1032]))
    return d / "calib.txt", s[1000:1032]


@pytest.fixture(scope="session")
def token_npz(tmp_path_factory):
    """Random token feeds for the tiny zoo text models (batch 2 x 16), 24 batches."""

    def make(model: str, batches: int = 24):
        from n6onnx.testing import zoo

        base = zoo.example_inputs(model)
        rng = np.random.default_rng(1)
        arrays = {}
        for k in range(batches):
            for name, a in base.items():
                arrays[f"{name}/{k}"] = rng.integers(1, 1000, a.shape).astype(a.dtype) if name == "input_ids" else a
        p = tmp_path_factory.mktemp("npz") / f"{model}.npz"
        np.savez(p, **arrays)
        return p

    return make
