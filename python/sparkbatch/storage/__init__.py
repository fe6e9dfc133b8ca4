"""Storage: fsspec URLs and local paths, atomic writes, stable listings, FileBatch archives,
Hadoop SequenceFiles and MapFiles."""

from __future__ import annotations

from sparkbatch.storage.datavec_writables import decode_datavec_record, decode_datavec_sequence
from sparkbatch.storage.file_batch import FileBatch
from sparkbatch.storage.map_file import MapFilePartWriter, MapFileReader, map_file_parts
from sparkbatch.storage.map_file_writers import MapFileSequenceWriter, MapFileWriter
from sparkbatch.storage.paths import (
    atomic_local_path,
    exists,
    is_directory,
    is_local,
    join,
    list_files,
    list_tree,
    open_output,
    read_bytes,
    resolve,
)
from sparkbatch.storage.ranges import (
    LineRange,
    count_lines_before,
    expand_paths,
    plan_line_ranges,
    read_line_range,
)
from sparkbatch.storage.record_codec import (
    decode_record,
    decode_sequence,
    encode_record,
    encode_sequence,
)
from sparkbatch.storage.sequence_file import SequenceFileReader, SequenceFileWriter

__all__ = [
    "FileBatch",
    "LineRange",
    "MapFilePartWriter",
    "MapFileReader",
    "MapFileSequenceWriter",
    "MapFileWriter",
    "SequenceFileReader",
    "SequenceFileWriter",
    "count_lines_before",
    "decode_datavec_record",
    "decode_datavec_sequence",
    "decode_record",
    "decode_sequence",
    "encode_record",
    "encode_sequence",
    "expand_paths",
    "plan_line_ranges",
    "read_line_range",
    "atomic_local_path",
    "exists",
    "is_directory",
    "is_local",
    "join",
    "list_files",
    "list_tree",
    "map_file_parts",
    "open_output",
    "read_bytes",
    "resolve",
]
