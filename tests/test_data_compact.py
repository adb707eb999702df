"""CompactManifest: the rows `read_manifest` gives, from a few arrays; the same refusals; datasets built on it."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mbt.data.compact import CompactManifest, read_compact_manifest
from mbt.data.datasets import ClipDataset
from mbt.data.manifest import ManifestError, read_manifest

MANIFEST = """path,labels,start,end
media/a.mp4,dog,,
/abs/b.mp4,dog;cat , 1.5,4

clips/ü é.mp4,cat,0,10
./c.mp4, cat ;dog;,,2.25
"""


def _write(tmp_path, text, name="m.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_equal_read_manifest(tmp_path):
    path = _write(tmp_path, MANIFEST)
    rows = read_compact_manifest(path)
    assert isinstance(rows, CompactManifest) and len(rows) == 4
    expected = read_manifest(path)
    assert list(rows) == expected
    assert rows[-1] == expected[-1] and rows[1:3] == expected[1:3]
    assert rows[1].start == 1.5 and rows[0].start is None and rows[3].end == 2.25
    with pytest.raises(IndexError):
        rows[4]
    again = pickle.loads(pickle.dumps(rows))  # spawned workers receive it pickled
    assert list(again) == expected


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffpath,labels\nx.mp4,dog\n".encode())
    assert [r.labels for r in read_compact_manifest(path)] == [("dog",)]


def test_no_python_object_per_row(tmp_path):
    rows = 20_000
    path = _write(tmp_path, "path,labels\n" + "".join(f"media/clip_{i:06d}.mp4,c{i % 7};c{i % 3}\n"
                                                        for i in range(rows)))
    manifest = read_compact_manifest(path)
    assert len(manifest) == rows and manifest[12345].path == tmp_path / "media/clip_012345.mp4"
    assert manifest[12345].labels == ("c4", "c0")
    assert len(manifest.label_names) == 7  # distinct labels are stored once
    # per row: 22 path bytes + 8 (offset) + 2 x 4 (label ids) + 8 (offset) + 2 x 8 (times) + 4 (line) = 66
    assert manifest.nbytes <= 66 * rows + 16
    for array in (manifest.paths, manifest.path_offsets, manifest.label_ids, manifest.label_offsets, manifest.start,
                  manifest.end, manifest.lines):
        assert isinstance(array, np.ndarray) and array.dtype != object


@pytest.mark.parametrize("text", [
    "file,labels\na.mp4,dog\n",
    "path,labels\n,dog\n",
    "path,labels,start\na.mp4,dog,soon\n",
    "path,labels,start\na.mp4,dog,-1\n",
    "path,labels,start,end\na.mp4,dog,2,2\n",
    "path,labels,start,end\na.mp4,dog,1,2\nb.mp4,dog,5,3\n",
])
def test_refusals_match_read_manifest(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as expected:
        read_manifest(path)
    with pytest.raises(ManifestError) as compact:
        read_compact_manifest(path)
    assert str(compact.value) == str(expected.value)


def test_unreadable_or_not_utf8_manifests_are_one_line(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_compact_manifest(tmp_path / "missing.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes("path,labels\nb\xe9b\xe9.mp4,dog\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"latin1.csv:2: manifest is not UTF-8"):
        read_compact_manifest(path)


def _dataset(rows, classes, **kw):
    stub = SimpleNamespace()  # never called: only the labels are looked at
    return ClipDataset(rows, classes, stub, train=False, modalities=("audio",), **kw)


@pytest.mark.parametrize("multi_label", [False, True])
def test_dataset_targets_equal_for_compact_and_list_rows(tmp_path, multi_label):
    text = "path,labels\n" + ("a.mp4,dog;cat\nb.mp4,cat\n" if multi_label else "a.mp4,dog\nb.mp4,cat\nc.mp4,dog\n")
    path = _write(tmp_path, text)
    classes = ["cat", "bird", "dog"]
    compact = _dataset(read_compact_manifest(path), classes, multi_label=multi_label)
    listed = _dataset(read_manifest(path), classes, multi_label=multi_label)
    assert isinstance(compact.rows, CompactManifest) and len(compact) == len(listed)
    for r in range(len(listed.rows)):
        assert torch.equal(compact.targets[r], listed.targets[r])
    assert compact.rows[1].path == listed.rows[1].path


@pytest.mark.parametrize("text, multi_label", [
    ("path,labels\na.mp4,dog\nb.mp4,fish\n", False),
    ("path,labels\na.mp4,dog\nb.mp4,dog;cat\n", False),
    ("path,labels\na.mp4,dog\nb.mp4,cat;fish;dog\n", True),
])
def test_dataset_label_errors_match_for_compact_rows(tmp_path, text, multi_label):
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as expected:
        _dataset(read_manifest(path), ["cat", "dog"], multi_label=multi_label)
    with pytest.raises(ManifestError) as compact:
        _dataset(read_compact_manifest(path), ["cat", "dog"], multi_label=multi_label)
    assert str(compact.value) == str(expected.value)


# ------------------------------------------------------------------------------------------------ the numpy path

def _same(a: CompactManifest, b: CompactManifest) -> None:
    for name in ("paths", "path_offsets", "label_ids", "label_offsets", "start", "end", "lines"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.label_names == b.label_names and a.base == b.base


@pytest.mark.parametrize("seed", range(6))
def test_the_numpy_split_of_plain_files_equals_the_csv_reader(tmp_path, seed):
    from mbt.data.compact import _csv_rows, _decode, _plain_rows

    rng = np.random.default_rng(seed)
    labels = ["/m/09x0r", "dog", "chien", "nïcode-inside", "a-much-longer-label-name", "x"]
    times = seed % 2 == 1
    lines = ["path,labels,start,end" if times else "path,labels"]
    for i in range(300):
        chosen = ";".join(rng.choice(labels, int(rng.integers(0, 4))))  # 0 labels too: an empty field
        if rng.random() < 0.1:
            chosen += ";"  # an empty part, dropped
        line = f"media/{'é' if i % 7 == 0 else ''}clip_{i}.mp4,{chosen}"
        if times:
            start = float(rng.integers(0, 50))
            line += "," + ("" if i % 5 == 0 else f"{start:g}") + "," + ("" if i % 3 == 0 else f"{start + 2.5:g}")
        lines.append(line)
        if rng.random() < 0.05:
            lines.append("")  # blank lines are skipped, not counted
    ending = "\r\n" if seed >= 4 else "\n"
    text = ending.join(lines) + ("" if seed == 2 else ending)
    path = _write(tmp_path, text)
    plain = _plain_rows(_decode(path), path, True)
    assert plain is not None  # these files take the numpy path...
    _same(plain, _csv_rows(_decode(path), path, True))  # ... and give what the csv reader gives
    assert list(plain) == read_manifest(path)


@pytest.mark.parametrize("text", [
    'path,labels\n"a,b.mp4",dog\n',  # quoted: the csv reader's
    "path,labels\na.mp4,dog\nb.mp4,dog,extra\n",  # ragged
    "path,labels\n a.mp4,dog\n",  # blanks round a path
    "path,labels,path\na.mp4,dog,b.mp4\n",  # a repeated column: the last wins
])
def test_files_that_are_not_plain_take_the_csv_reader(tmp_path, text):
    from mbt.data.compact import _csv_rows, _decode, _plain_rows

    path = _write(tmp_path, text)
    assert _plain_rows(_decode(path), path, True) is None
    assert list(read_compact_manifest(path)) == read_manifest(path)
    _same(read_compact_manifest(path), _csv_rows(_decode(path), path, True))
