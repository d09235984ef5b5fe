from __future__ import annotations

from pathlib import Path

from chipfit.measure.measurement import Measurement
from chipfit.search.space import Candidate
from chipfit.store import Store


def test_put_get_replace_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    c = Candidate("onnxruntime", options={"intra_op_num_threads": 1})
    s = Store(url)
    assert s.get("m", c, "ctx", "env") is None
    s.put("m", c, "ctx", {"cpu": "x"}, "env", Measurement("timeout", error="slow"))
    s.put("m", c, "ctx", {"cpu": "x"}, "env", Measurement("ok", {"p50_ms": 1.5}))
    s.close()
    s2 = Store(url)
    got = s2.get("m", c, "ctx", "env")
    assert got is not None and got.status == "ok" and got.metrics["p50_ms"] == 1.5
    assert s2.count("m") == 1  # replaced, not duplicated
    assert s2.get("m", c, "other-data", "env") is None  # keyed by context too
    assert s2.get("m", Candidate("onnxruntime", batch=8), "ctx", "env") is None


def test_unopenable_store_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from chipfit.errors import StoreError

    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"Cannot open the results store .*Pass --store"):
        Store(f"sqlite:///{tmp_path / 'file' / 'sub' / 'r.db'}")
