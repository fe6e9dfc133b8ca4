"""Spark-facing functions: CSV and DataFrames to DataSet RDDs, per record or per partition;
raw files (images) to FileBatch archives.

Importing this package does not start or need a JVM; pyspark is imported where it is used.
"""

from __future__ import annotations

from sparkbatch.spark._errors import executor_errors
from sparkbatch.spark.conf import recommended_conf
from sparkbatch.spark.csv import LinesToDataSets, RangesToDataSets, csv_to_datasets
from sparkbatch.spark.dataframe import ArrowToMinibatches, DataFrameError, dataframe_to_datasets
from sparkbatch.spark.export import BatchAndExport, batch_and_export, list_paths
from sparkbatch.spark.file_batches import create_file_batches_local, create_file_batches_spark
from sparkbatch.spark.map_files import (
    MapFilePartsToRecords,
    restore_map_file,
    restore_map_file_sequences,
)
from sparkbatch.spark.multi import (
    JoinedToMultiDataSets,
    RecordsToMultiDataSets,
    SparkSequenceSource,
    SparkSource,
    map_rrmdsi,
)
from sparkbatch.spark.records import FileToRecords, RecordsToDataSet, StringToRecords
from sparkbatch.spark.sequences import (
    SequenceFilesToDataSets,
    SequenceFileToRecords,
    SequencesToDataSet,
    csv_sequences_to_datasets,
)

__all__ = [
    "ArrowToMinibatches",
    "BatchAndExport",
    "DataFrameError",
    "FileToRecords",
    "JoinedToMultiDataSets",
    "LinesToDataSets",
    "MapFilePartsToRecords",
    "RangesToDataSets",
    "RecordsToDataSet",
    "SequenceFileToRecords",
    "SequenceFilesToDataSets",
    "SequencesToDataSet",
    "RecordsToMultiDataSets",
    "SparkSequenceSource",
    "SparkSource",
    "StringToRecords",
    "batch_and_export",
    "create_file_batches_local",
    "create_file_batches_spark",
    "csv_sequences_to_datasets",
    "csv_to_datasets",
    "dataframe_to_datasets",
    "executor_errors",
    "list_paths",
    "map_rrmdsi",
    "recommended_conf",
    "restore_map_file",
    "restore_map_file_sequences",
]
