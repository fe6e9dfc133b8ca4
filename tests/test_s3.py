"""S3 end to end against a real S3-protocol server on 127.0.0.1 (moto): driver and executors."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from sparkbatch import DataSet
from sparkbatch.data import load
from sparkbatch.spark import batch_and_export, csv_to_datasets, list_paths
from sparkbatch.storage import list_files, open_output

pytestmark = [pytest.mark.s3, pytest.mark.spark]


@pytest.fixture
def prefix() -> str:
    return f"s3://sparkbatch/{uuid.uuid4().hex[:12]}"


def test_save_load_and_list_on_s3(s3_storage, prefix):
    ds = DataSet(np.arange(12, dtype=np.float32).reshape(4, 3), np.eye(4, dtype=np.float32))
    for i in range(3):
        ds.save(f"{prefix}/batch-{i}.safetensors", storage_options=s3_storage, compact_labels=True)
    urls = list_files(prefix, suffix=".safetensors", storage_options=s3_storage)
    assert urls == [f"{prefix}/batch-{i}.safetensors" for i in range(3)]
    back = load(urls[1], storage_options=s3_storage)
    np.testing.assert_array_equal(back.features, ds.features)
    np.testing.assert_array_equal(back.labels, ds.labels)


def test_missing_object_names_the_url(s3_storage, prefix):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load(f"{prefix}/nothing.safetensors", storage_options=s3_storage)


def test_csv_byte_ranges_read_by_executors_from_s3(sc, s3_storage, prefix):
    rng = np.random.default_rng(0)
    features = np.round(rng.standard_normal((300, 4)), 3)
    labels = rng.integers(0, 3, 300)
    text = "a,b,c,d,y\n" + "".join(
        ",".join(f"{v:.3f}" for v in row) + f",{y}\n"
        for row, y in zip(features, labels, strict=True)
    )
    with open_output(f"{prefix}/data.csv", storage_options=s3_storage) as f:
        f.write(text.encode())
    rdd = csv_to_datasets(
        f"{prefix}/*.csv",
        label_index=4,
        num_classes=3,
        skip_lines=1,
        split_size=1000,
        sc=sc,
        storage_options=s3_storage,
    )
    assert rdd.getNumPartitions() > 5
    merged = DataSet.merge(rdd.collect())
    np.testing.assert_array_equal(merged.features, features.astype(np.float32))
    np.testing.assert_array_equal(merged.labels.argmax(axis=1), labels)


def test_export_from_executors_to_s3_then_list_and_load(sc, s3_storage, prefix):
    data = [
        DataSet(np.full((n, 2), i, np.float32), np.ones((n, 1), np.float32))
        for i, n in enumerate([5, 7, 4])
    ]
    urls = batch_and_export(
        sc.parallelize(data, 2), prefix, batch_size=4, storage_options=s3_storage
    )
    assert list_paths(sc, prefix, storage_options=s3_storage).collect() == urls  # from the manifest
    assert sum(load(u, storage_options=s3_storage).num_examples for u in urls) == 16
    with pytest.raises(FileExistsError):
        batch_and_export(sc.parallelize(data, 1), prefix, batch_size=4, storage_options=s3_storage)
