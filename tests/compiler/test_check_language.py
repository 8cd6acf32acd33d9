"""The checker's dtype and determinism rules (the review after issue 17): object dtypes in every
place numpy takes a dtype, computed dtypes, randomness and uninitialised memory are refused,
every reason at once; the number and text types programs use stay allowed."""

from __future__ import annotations

import pytest

from headcode.compiler.check import check_source


def _prog(body: str, head: str = "import numpy as np\n") -> str:
    return f"{head}def attend(t):\n{body}    return first(t)\n"


def test_every_dtype_and_randomness_reason_at_once():
    src = _prog("    a = np.dtype('O')\n    b = np.zeros(2).astype('object')\n    c = np.array([1], 'O')\n"
                "    d = np.ones(1).view('O')\n    k = 'O'\n    e = np.ones(2, dtype=k)\n"
                "    r = np.random.default_rng(0)\n    m = np.empty(3)\n")
    reasons = check_source(src)
    lines = [r.split(":")[0] for r in reasons]
    assert lines == ["line 3", "line 4", "line 5", "line 6", "line 8", "line 9", "line 9", "line 10"], reasons
    assert sum("object dtype" in r for r in reasons) == 4
    assert "not computed: `k`" in reasons[4]
    assert all("random numbers" in r for r in reasons[5:7]) and "uninitialised memory" in reasons[7]


@pytest.mark.parametrize("body", [
    "    a = np.zeros(len(t), dtype=bool) + np.ones(3, np.float32) + np.array([1, 2], 'int64')\n",
    "    a = np.arange(4).astype(float).sum(0) + np.sum(np.ones(2), 0) + np.add.reduce(np.ones(2), 0)\n",
    "    a = np.array(list(t.pieces), dtype=str)\n    b = np.zeros(2, dtype=None).view()\n",
    "    s = functools.reduce(lambda x, y: x + y, [1, 2], 0)\n",
    "    a = np.full(3, 1.0, '<f4') + np.zeros(3, 'u1')\n",
])
def test_number_and_text_dtypes_stay_allowed(body):
    assert check_source(_prog(body, "import numpy as np\nimport functools\n")) == []


def test_a_name_rebound_from_a_module_import_is_not_trusted_as_that_module():
    """``import numpy as n2`` then ``n2 = <an array>``: ``n2.astype`` is an array's method."""
    src = _prog("    n2 = np.zeros(2)\n    a = n2.astype('O')\n", "import numpy as np\nimport numpy as n2\n")
    assert any("object dtype" in r for r in check_source(src))
    src = _prog("    functools = np.zeros(2)\n    a = functools.astype('O')\n",
                "import numpy as np\nimport functools\n")
    assert any("object dtype" in r for r in check_source(src))
