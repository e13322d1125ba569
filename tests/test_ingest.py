"""Ingest stage: every source, bad-input handling, determinism, sharding and crash safety."""
from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn import datasets as sklearn_datasets

from tasks.config import Config, ConfigError, from_dict
from tasks.data import content_hash, float_to_images, images_to_float, load_split
from tasks.ingest import ingest
from tasks.io import MARKER, read_json
from tasks.sources import SOURCES


def make_cfg(workdir: Path, seed: int = 0, **data) -> Config:
    raw = {"seed": seed, "data": data}
    if SOURCES[data.get("source", "digits")].kind == "array":  # the config insists on a vector model for arrays
        raw |= {"autoencoder": {"kind": "none"}, "network": {"kind": "mlp"}}
    return replace(from_dict(raw), workdir=str(workdir))  # as the flow does: the experiment folder, absolute


def load_all(workdir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Train then val, as stored."""
    train, val = (load_split(workdir / "data", split) for split in ("train", "val"))
    labels = None if train.labels is None else np.concatenate([train.labels, val.labels])
    return np.concatenate([train.values, val.values]), labels


def data_files(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "data").iterdir() if p.name != MARKER)


def write_pets(root: Path) -> list[np.ndarray]:
    """cat/ holds 3 PNGs, dog/ 2 JPEGs and a corrupt .jpg, plus non-image clutter; returns the PNG pixels."""
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    cats = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(3)]
    for i, pixels in enumerate(cats):
        Image.fromarray(pixels).save(root / "cat" / f"{i}.png")
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / "dog" / f"{i}.jpg")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.txt").write_text("not an image either")
    return cats


def zip_with_top_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, f"pets/{file.relative_to(folder).as_posix()}")
        archive.writestr("__MACOSX/pets/cat/._0.png", b"macOS resource fork, not a png")
    return zip_path


@pytest.fixture(params=["folder", "zip"])
def pets(request, tmp_path: Path) -> tuple[Path, str, list[np.ndarray]]:
    """(data.path, the name the corrupt file is reported by, the cat PNG pixels)."""
    cats = write_pets(tmp_path / "pets")
    if request.param == "folder":
        return tmp_path / "pets", "dog/broken.jpg", cats
    return zip_with_top_folder(tmp_path / "pets", tmp_path / "pets.zip"), "pets/dog/broken.jpg", cats


def test_digits_default(tmp_path: Path) -> None:
    manifest = ingest(make_cfg(tmp_path / "w"))
    n_val = round(1797 * 0.1)
    assert manifest["counts"] == {"train": 1797 - n_val, "val": n_val}
    assert (manifest["kind"], manifest["shape"], manifest["dtype"]) == ("image", [1, 8, 8], "uint8")
    assert manifest["class_names"] == [str(d) for d in range(10)]
    train = load_split(tmp_path / "w" / "data", "train")
    assert train.values.dtype == np.uint8 and train.values.shape == (1797 - n_val, 1, 8, 8)
    values, labels = load_all(tmp_path / "w")
    digits = sklearn_datasets.load_digits()
    expected = np.round(digits.images * 255 / 16).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(1797)
    stored = np.concatenate([order[n_val:], order[:n_val]])  # train is the shuffled order after the val rows
    np.testing.assert_array_equal(values, expected[stored])
    np.testing.assert_array_equal(labels, digits.target[stored])


def test_digits_resized_and_recoloured(tmp_path: Path) -> None:
    manifest = ingest(make_cfg(tmp_path / "w", image_size=16, channels=3, limit=20))
    assert manifest["shape"] == [3, 16, 16]
    assert load_split(tmp_path / "w" / "data", "train").values.shape[1:] == (3, 16, 16)


def test_image_folder_skips_bad_files(tmp_path: Path, pets, capsys) -> None:
    path, broken_name, cats = pets
    manifest = ingest(make_cfg(tmp_path / "w", source="folder", path=str(path), val_fraction=0.2))
    assert manifest["counts"] == {"train": 4, "val": 1}
    assert manifest["skipped"] == {"count": 1, "names": [broken_name]}
    assert manifest["class_names"] == ["cat", "dog"] and manifest["shape"] == [3, 6, 6]
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert "skipped 1 bad input" in warning and broken_name in warning
    values, labels = load_all(tmp_path / "w")
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1]
    stored_cats = sorted(v.tobytes() for v in values[labels == 0])
    assert stored_cats == sorted(np.ascontiguousarray(c.transpose(2, 0, 1)).tobytes() for c in cats)  # PNG: exact


def test_image_folder_bad_file_error(tmp_path: Path, pets) -> None:
    path, broken_name, _ = pets
    with pytest.raises(ValueError) as err:
        ingest(make_cfg(tmp_path / "w", source="folder", path=str(path), on_bad_input="error"))
    message = str(err.value)
    assert "\n" not in message and broken_name in message
    assert "set data.on_bad_input=skip to skip bad files" in message
    assert not (tmp_path / "w" / "data").exists()


def test_differing_sizes_need_image_size(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (6, 6), (10, 20, 30)).save(tmp_path / "imgs" / "a" / "small.png")
    Image.new("RGB", (9, 7), (40, 50, 60)).save(tmp_path / "imgs" / "a" / "large.png")
    with pytest.raises(ValueError, match="set data.image_size") as err:
        ingest(make_cfg(tmp_path / "w", source="folder", path=str(tmp_path / "imgs")))
    assert "\n" not in str(err.value)
    manifest = ingest(make_cfg(tmp_path / "w", source="folder", path=str(tmp_path / "imgs"), image_size=4))
    assert manifest["shape"] == [3, 4, 4]
    values, _ = load_all(tmp_path / "w")
    assert sorted(v[:, 0, 0].tolist() for v in values) == [[10, 20, 30], [40, 50, 60]]  # flat colours survive


def test_channels_follow_the_images(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    for i in range(2):
        Image.new("L", (5, 5), 100 + i).save(folder / "a" / f"grey{i}.png")
    assert ingest(make_cfg(tmp_path / "w", source="folder", path=str(folder)))["shape"] == [1, 5, 5]
    Image.new("RGB", (5, 5), (1, 2, 3)).save(folder / "a" / "colour.png")
    assert ingest(make_cfg(tmp_path / "w", source="folder", path=str(folder)))["shape"] == [3, 5, 5]
    values, _ = load_all(tmp_path / "w")
    assert sorted(v[:, 0, 0].tolist() for v in values) == [[1, 2, 3], [100, 100, 100], [101, 101, 101]]
    assert ingest(make_cfg(tmp_path / "w", source="folder", path=str(folder), channels=1))["shape"] == [1, 5, 5]


def write_array_file(path: Path, x: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".npz":
        np.savez(path, a=np.zeros(3), x=x)  # the key named x wins over the first array
    else:
        columns = {name: x[:, i] for i, name in enumerate("abc")}
        pq.write_table(pa.table({**columns, "name": [f"r{i}" for i in range(len(x))]}), path)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_arrays_round_trip_and_skip_nan_rows(tmp_path: Path, suffix: str) -> None:
    x = np.random.default_rng(1).random((30, 3), dtype=np.float32) + 0.5
    x[4, 1], x[9, 2] = np.nan, np.inf
    write_array_file(tmp_path / f"x{suffix}", x)
    manifest = ingest(make_cfg(tmp_path / "w", source="arrays", path=str(tmp_path / f"x{suffix}"), val_fraction=0.25))
    assert manifest["skipped"] == {"count": 2, "names": ["row 4", "row 9"]}
    assert (manifest["kind"], manifest["shape"], manifest["dtype"]) == ("array", [3], "float32")
    good = np.delete(x, [4, 9], axis=0)
    assert manifest["feature_min"] == good.min(axis=0).tolist() and manifest["strictly_positive"] is True
    if suffix == ".parquet":
        assert manifest["feature_names"] == ["a", "b", "c"]
    values, labels = load_all(tmp_path / "w")
    order = np.random.default_rng(0).permutation(len(good))
    n_val = manifest["counts"]["val"]
    np.testing.assert_array_equal(values, good[np.concatenate([order[n_val:], order[:n_val]])])  # bit-exact
    assert values.dtype == np.float32 and labels is None


def test_arrays_1d_and_bad_row_error(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.arange(1, 11, dtype=np.float32))
    manifest = ingest(make_cfg(tmp_path / "w", source="arrays", path=str(tmp_path / "v.npy")))
    assert manifest["shape"] == [1] and manifest["feature_min"] == [1.0]
    np.save(tmp_path / "v.npy", np.array([1.0, np.nan, 3.0], np.float32))
    with pytest.raises(ValueError, match="row 1 .*set data.on_bad_input=skip") as err:
        ingest(make_cfg(tmp_path / "w", source="arrays", path=str(tmp_path / "v.npy"), on_bad_input="error"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("source", ["folder", "arrays"])
def test_path_required_and_must_exist(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError, match=f"^data.path: data.source={source} reads .*; set data.path to it$"):
        make_cfg(tmp_path / "w", source=source)
    missing = tmp_path / "nowhere.npy"
    with pytest.raises(FileNotFoundError) as err:
        ingest(make_cfg(tmp_path / "w", source=source, path=str(missing)))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_cifar10_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        ingest(make_cfg(tmp_path / "w", source="cifar10", path=str(tmp_path / "cifar"), download=False))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "cifar") in message and "data.download=true" in message


@pytest.mark.parametrize("source, features, positive", [("breast_cancer", 30, False), ("wine", 13, True)])
def test_sklearn_tables(tmp_path: Path, source: str, features: int, positive: bool) -> None:
    manifest = ingest(make_cfg(tmp_path / "w", source=source))
    table = getattr(sklearn_datasets, f"load_{source}")()
    assert manifest["shape"] == [features] and len(manifest["feature_names"]) == features
    assert manifest["strictly_positive"] is positive
    np.testing.assert_array_equal(manifest["feature_min"], table.data.astype(np.float32).min(axis=0))
    values, labels = load_all(tmp_path / "w")
    assert values.dtype == np.float32 and sorted(labels.tolist()) == sorted(table.target.tolist())


def test_same_config_same_bytes_and_seed_changes_split(tmp_path: Path) -> None:
    first, second, reseeded = (ingest(make_cfg(tmp_path / name, seed=seed, limit=300))
                               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert first == second
    for name in data_files(tmp_path / "a"):
        assert (tmp_path / "a" / "data" / name).read_bytes() == (tmp_path / "b" / "data" / name).read_bytes()
    assert reseeded["content_hash"] != first["content_hash"]
    assert sum(first["counts"].values()) == 300
    train_a, train_c = (load_split(tmp_path / name / "data", "train") for name in ("a", "c"))
    assert not np.array_equal(train_a.values, train_c.values)
    stored = {split: load_split(tmp_path / "a" / "data", split) for split in ("train", "val")}
    splits = {split: (d.values, d.labels) for split, d in stored.items()}
    assert content_hash("image", splits) == first["content_hash"]  # the hash covers what is stored, in order


def test_one_pixel_changes_the_hash(tmp_path: Path) -> None:
    write_pets(tmp_path / "pets")
    before = ingest(make_cfg(tmp_path / "w", source="folder", path=str(tmp_path / "pets")))["content_hash"]
    pixels = np.array(Image.open(tmp_path / "pets" / "cat" / "0.png"))
    pixels[2, 3, 1] ^= 1
    Image.fromarray(pixels).save(tmp_path / "pets" / "cat" / "0.png")
    after = ingest(make_cfg(tmp_path / "w", source="folder", path=str(tmp_path / "pets")))["content_hash"]
    assert after != before


def test_shards_load_back_in_order_and_stale_shards_go(tmp_path: Path) -> None:
    manifest = ingest(make_cfg(tmp_path / "sharded", limit=250, shard_rows=100, val_fraction=0.2))
    assert manifest["shards"] == {"train": ["train-00000.parquet", "train-00001.parquet"],
                                  "val": ["val-00000.parquet"]}
    assert data_files(tmp_path / "sharded") == ["manifest.json", "train-00000.parquet", "train-00001.parquet",
                                                "val-00000.parquet"]
    assert pq.read_metadata(tmp_path / "sharded" / "data" / "train-00001.parquet").num_rows == 100
    ingest(make_cfg(tmp_path / "whole", limit=250, val_fraction=0.2))
    for got, want in zip(load_all(tmp_path / "sharded"), load_all(tmp_path / "whole")):
        np.testing.assert_array_equal(got, want)
    ingest(make_cfg(tmp_path / "sharded", limit=100, shard_rows=100, val_fraction=0.2))
    assert data_files(tmp_path / "sharded") == ["manifest.json", "train-00000.parquet", "val-00000.parquet"]


@pytest.mark.parametrize("previous", [False, True])
def test_failed_ingest_leaves_previous_data_and_no_temp_files(tmp_path: Path, monkeypatch, previous: bool) -> None:
    workdir = tmp_path / "w"
    old = ingest(make_cfg(workdir, limit=200, shard_rows=50)) if previous else None
    real_write, written = pq.write_table, []

    def write_then_fail(table, where, **kwargs):
        written.append(where)
        if len(written) == 2:
            raise OSError("disk full")
        real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ingest(make_cfg(workdir, seed=1, limit=200, shard_rows=50))
    assert len(written) == 2  # it failed midway, after one complete shard
    leftovers = [p.name for p in workdir.rglob("*") if p.name != MARKER and (p.name.startswith(".") or
                                                                              p.suffix == ".tmp")]
    assert leftovers == []
    if previous:
        assert read_json(workdir / "data" / "manifest.json") == old
        assert load_split(workdir / "data", "train").values.shape == (old["counts"]["train"], 1, 8, 8)
    else:
        assert not (workdir / "data").exists()


def test_load_split_without_ingest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_split(tmp_path / "empty", "train")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "empty") in message and "logdiff stage ingest" in message


def test_pixel_float_conversions() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    floats = images_to_float(pixels)
    assert floats.dtype == torch.float32 and floats.min() == -1 and floats.max() == 1
    np.testing.assert_array_equal(float_to_images(floats), pixels)
    np.testing.assert_array_equal(float_to_images(torch.tensor([-3.0, 3.0, 0.0])), [0, 255, 128])


@pytest.mark.parametrize("python_filter", [True, False], ids=["data-filter", "older-python"])
def test_tarball_members_outside_the_destination_are_refused(tmp_path: Path, monkeypatch, python_filter) -> None:
    import io
    import tarfile

    from tasks.ingest import safe_extract

    if not python_filter:
        monkeypatch.delattr(tarfile, "data_filter")
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("batches/ok.bin", "../escape.bin"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    dest = tmp_path / "out"
    dest.mkdir()
    with tarfile.open(archive) as tar, pytest.raises(ValueError, match="unsafe member") as err:
        safe_extract(tar, dest)
    assert "\n" not in str(err.value) and not (tmp_path / "escape.bin").exists()

    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("batches/ok.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with tarfile.open(archive) as tar:
        safe_extract(tar, dest)
    assert (dest / "batches" / "ok.bin").read_bytes() == b"abc"


def test_every_source_in_the_table_has_a_reader_and_back() -> None:
    from tasks.ingest import READERS

    assert set(READERS) == set(SOURCES)
