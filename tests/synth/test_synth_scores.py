import numpy as np
import pytest

from headcode.compiler.tokens import Tokens
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns, pack
from headcode.synth import scores


def test_row_iou_hand_computed():
    p = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    q = np.array([[1.0, 0, 0], [1.0, 0.0, 0], [0.0, 0.5, 0.5]])
    # row 2: min = .5, max = 1.5 ; row 3: min = 0+.3+.5 = .8, max = .2+.5+.5 = 1.2
    np.testing.assert_allclose(scores.row_iou(p, q), [1.0, 0.5 / 1.5, 0.8 / 1.2])
    assert scores.iou(p, q) == pytest.approx((1 + 1 / 3 + 0.8 / 1.2) / 3)


def test_jsd_hand_computed():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    q = np.array([[0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(scores.row_jsd(p, q), [1.0, 0.0], atol=1e-12)
    # one row: p=(1,0), q=(.5,.5): m=(.75,.25); KL(p||m)=log2(4/3); KL(q||m)=.5log2(2/3)+.5log2(2)
    want = 0.5 * np.log2(4 / 3) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(2))
    assert scores.jsd(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])) == pytest.approx(want)


def test_output_error_hand_computed():
    true = np.array([[1.0, 0.0], [0.0, 1.0]])
    prog = np.array([[1.0, 0.0], [1.0, 0.0]])
    v = np.array([[1.0, 0.0], [0.0, 2.0]])
    # true @ v = [[1,0],[0,2]] -> 5 ; (prog-true) @ v = [[0,0],[1,-2]] -> 5
    assert scores.output_error(prog, true, v) == pytest.approx(1.0)
    assert scores.output_error(true, true, v) == 0.0


def test_score_head_means_over_rows_then_texts_and_splits():
    toks = (Tokens.synthetic(["a", "b"]), Tokens.synthetic(["a", "b", "c"]), Tokens.synthetic(["x", "y"]))
    prev = [np.array([[1.0, 0], [1.0, 0]]), np.array([[1.0, 0, 0], [1, 0, 0], [0, 1, 0]]),
            np.array([[1.0, 0], [0.5, 0.5]])]
    h = HeadRef(0, 0)
    hp = HeadPatterns("m", "sentence", (h,), toks, ("fit", "fit", "test"),
                      tuple(pack(a[None].astype(np.float32)) for a in prev), (0,))
    diag = {0: np.eye(2), 1: np.eye(3), 2: np.eye(2)}
    s = scores.score_head(hp, h, diag.__getitem__)
    # text 0 rows: 1, 0 -> .5 ; text 1 rows: 1, 0, 0 -> 1/3 ; fit = mean(.5, 1/3)
    assert s.iou["fit"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert s.iou["test"] == pytest.approx((1 + 0.5 / 1.5) / 2)
    assert "select" not in s.iou and s.output_error == {}  # no values captured
