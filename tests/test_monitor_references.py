"""Monitor reference tables read from NumPy files (``.npz`` and ``.npy``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.monitoring import columns_of, read_rows

# --- reference tables from NumPy files ----------------------------------------------------------------


def test_reference_tables_read_npz_and_npy_files(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0.0, 1.0, 1.0, 0.0], dtype=np.float32)
    output = tmp_path / "transform-output"  # what the old starter's build_features wrote
    output.mkdir()
    np.savez(output / "features.npz", x=x, y=y)
    rows = read_rows(output)
    assert rows[1] == {"x_0": 3.0, "x_1": 4.0, "x_2": 5.0, "y": 1.0}
    columns = columns_of(rows)
    assert list(columns) == ["x_0", "x_1", "x_2", "y"] and columns["x_2"].dtype == float
    assert columns["x_2"].tolist() == [2.0, 5.0, 8.0, 11.0]

    snapshot = tmp_path / "0123abcd"  # a content-addressed object has no suffix: the dataset's format says
    with snapshot.open("wb") as handle:
        np.save(handle, x)
    assert read_rows(snapshot, ".npy")[0] == {"column_0": 0.0, "column_1": 1.0, "column_2": 2.0}
    np.save(tmp_path / "scores.npy", y)
    assert [r["value"] for r in read_rows(tmp_path / "scores.npy")] == [0.0, 1.0, 1.0, 0.0]
    table = np.array([(1, 2.5), (2, 3.5)], dtype=[("id", "i8"), ("amount", "f8")])
    np.save(tmp_path / "table.npy", table)
    assert read_rows(tmp_path / "table.npy") == [{"id": 1, "amount": 2.5}, {"id": 2, "amount": 3.5}]

    np.savez(tmp_path / "ragged.npz", a=np.zeros(3), b=np.zeros(4))
    with pytest.raises(ValueError, match="different lengths"):
        read_rows(tmp_path / "ragged.npz")
    np.savez(tmp_path / "cube.npz", c=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="1-d or 2-d"):
        read_rows(tmp_path / "cube.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):  # never unpickled
        read_rows(tmp_path / "objects.npy")
