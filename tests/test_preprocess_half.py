"""float16 probability maps cast and scanned by torch give numpy's answers bit for bit."""

import numpy as np
import torch

from medseg.preprocess.half import as_float32, not_background, to_float16


def _softmax_like(rng, shape=(4, 20, 18, 16)) -> np.ndarray:
    p = 10.0 ** rng.uniform(-12, 0, shape)  # values far below float16's normal range, as softmax gives
    return (p / p.sum(0, keepdims=True)).astype(np.float32)


def test_casts_equal_numpys_including_subnormals_and_strided_views():
    p = _softmax_like(np.random.default_rng(0))
    view = p[:, ::-1, 2:, ::2]  # negative and skipping strides
    for values in (p, view):
        half = to_float16(values)
        assert half.dtype == np.float16
        assert np.array_equal(half.view(np.uint16), values.astype(np.float16).view(np.uint16))
        assert np.array_equal(as_float32(half).numpy(), half.astype(np.float32))
    assert np.array_equal(to_float16(torch.from_numpy(p)), p.astype(np.float16))


def test_not_background_is_argmax_not_zero_with_ties_to_background():
    rng = np.random.default_rng(1)
    scores = to_float16(_softmax_like(rng))
    scores[1, :3] = scores[0, :3]  # ties: argmax takes class 0
    assert np.array_equal(not_background(scores), scores.argmax(axis=0) != 0)
    assert not not_background(scores[:1]).any()
