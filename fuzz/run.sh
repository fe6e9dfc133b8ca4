#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of sparkbatch's native entry points under ASan + UBSan.
#
# Usage: bash fuzz/run.sh TARGET [RUNS] [libFuzzer flags...]
#        bash fuzz/run.sh build            # build every target only
#        bash fuzz/run.sh merge TARGET     # pack the working corpus, minimized, as TARGET's seeds
#   TARGET: json          csrc/json.cpp: the strict JSON reader of safetensors headers
#           format        csrc/minibatch_format.cpp: parse_header on whole files, tensor bytes, CRC,
#                         write-and-read-back
#           csv           csrc/csv_parser.cpp: parse_csv, options from the first 6 bytes
#           csv_parallel  csv_parser.cpp with 64-byte chunks: several threads must equal one
#           csv_blocks    csv_parser.cpp with 64-byte blocks of number rows (NOTE(csv-blocks)):
#                         the same result as record by record
#   RUNS:   inputs to execute (default 1000000); 0 runs until stopped or a crash
# Builds with clang (clang++, or the newest clang++-NN on PATH; CXX overrides) into build/fuzz/,
# starts from the committed seeds (fuzz/corpus/TARGET/ by hand, fuzz/corpus/TARGET.tar.xz from
# earlier runs, tests/corpus/*.safetensors for format and their headers for json) plus the working
# corpus of this checkout's earlier runs (build/fuzz/corpus/TARGET), and runs one process. A
# crash leaves its input in build/fuzz/artifacts/TARGET/; reproduce it with
#   build/fuzz/TARGET build/fuzz/artifacts/TARGET/crash-...
# then keep it in tests/fuzz_regressions/TARGET/ (tests/test_fuzz_regressions.py runs those files).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CXX:-}" ] || ! "$CXX" --version 2>/dev/null | grep -q clang; then
  CXX=$(command -v clang++ || ls /usr/bin/clang++-[0-9]* 2>/dev/null | sort -V | tail -1 || true)
fi
[ -n "$CXX" ] || { echo "fuzz/run.sh: needs clang++ (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }

out=build/fuzz
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined
       -fno-sanitize-recover=all -Wall -Wextra -Wpedantic -Wshadow -Wconversion
       -Wno-sign-conversion -Icsrc -pthread)

# build TARGET: the harness and the sources it calls, instrumented for coverage.
build() {
  local target=$1 harness sources=() defs=()
  case $target in
    json) harness=fuzz/fuzz_json.cpp; sources=(csrc/json.cpp) ;;
    format) harness=fuzz/fuzz_format.cpp
            sources=(csrc/json.cpp csrc/minibatch_format.cpp csrc/crc32c.cpp csrc/thread_pool.cpp) ;;
    csv) harness=fuzz/fuzz_csv.cpp; sources=(csrc/csv_parser.cpp csrc/thread_pool.cpp) ;;
    csv_parallel)  # the parser with 64-byte chunks, so that small inputs are cut into several
      harness=fuzz/fuzz_csv.cpp; sources=(csrc/csv_parser.cpp csrc/thread_pool.cpp)
      defs=(-DFUZZ_CSV_PARALLEL -DSPARKBATCH_CSV_MIN_CHUNK_BYTES=64
            -DSPARKBATCH_CSV_ABORT_CHECK_RECORDS=2) ;;
    csv_blocks)  # 64-byte blocks of plain number rows against the parse record by record
      harness=fuzz/fuzz_csv.cpp; sources=(csrc/csv_parser.cpp csrc/thread_pool.cpp)
      defs=(-DFUZZ_CSV_BLOCKS -DSPARKBATCH_CSV_BLOCK_BYTES=64 -DSPARKBATCH_CSV_MIN_CHUNK_BYTES=64
            -DSPARKBATCH_CSV_ABORT_CHECK_RECORDS=2) ;;
    *) echo "fuzz/run.sh: unknown target '$target' (json, format, csv, csv_parallel, csv_blocks)" >&2
       exit 2 ;;
  esac
  mkdir -p "$out"
  "$CXX" "${flags[@]}" "${defs[@]}" -fsanitize=fuzzer "$harness" "${sources[@]}" -o "$out/$target"
}

usage="usage: bash fuzz/run.sh json|format|csv|csv_parallel|csv_blocks [RUNS] [libFuzzer flags] | build | merge TARGET"
target=${1:?$usage}
if [ "$target" = build ]; then
  for t in json format csv csv_parallel csv_blocks; do build "$t"; done
  exit 0
fi
merge=
if [ "$target" = merge ]; then
  merge=1
  target=${2:?$usage}
  set -- "$target" 0
fi
runs=${2:-1000000}
shift $(( $# >= 2 ? 2 : 1 ))
build "$target"

corpus=$out/corpus/$target
artifacts=$out/artifacts/$target
mkdir -p "$corpus" "$artifacts"
seeds=()
base=${target%_parallel}
base=${base%_blocks}  # csv_parallel and csv_blocks start from csv's seeds and dictionary
seed_dir=fuzz/corpus/$base
[ -d "$seed_dir" ] && seeds+=("$seed_dir")
# fuzz/corpus/TARGET.tar.xz: the corpus of earlier long runs, merged (bash fuzz/run.sh merge TARGET)
packed=fuzz/corpus/$target.tar.xz
if [ -f "$packed" ]; then
  rm -rf "$out/seeds/$target" && mkdir -p "$out/seeds/$target"
  tar -C "$out/seeds/$target" -xJf "$packed"
  seeds+=("$out/seeds/$target")
fi
case $target in
  format) seeds+=(tests/corpus) ;;
  json)  # the headers of the hostile files, as JSON documents
    mkdir -p "$out/seeds/json-headers"
    python3 - "$out/seeds/json-headers" tests/corpus/*.safetensors <<'PY'
import os, struct, sys
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    if len(data) >= 8:
        n = min(struct.unpack("<Q", data[:8])[0], len(data) - 8)
        with open(os.path.join(sys.argv[1], os.path.basename(path) + ".json"), "wb") as f:
            f.write(data[8:8 + n])
PY
    seeds+=("$out/seeds/json-headers") ;;
esac

if [ -n "$merge" ]; then
  # The smallest set of the working corpus and the seeds with every feature, packed as the seeds.
  minimal=$out/merged/$target
  rm -rf "$minimal" && mkdir -p "$minimal"
  "$out/$target" -merge=1 "$minimal" "$corpus" "${seeds[@]}" 2>&1 | tail -1
  tar -C "$minimal" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - . |
    xz -9e > "$packed"
  echo "$packed: $(ls "$minimal" | wc -l) inputs, $(stat -c %s "$packed") bytes"
  exit 0
fi
dict=fuzz/$base.dict
dict_flag=()
[ -f "$dict" ] && dict_flag=(-dict="$dict")
max_len=4096

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
echo "== $target: $runs runs ($CXX) =="
exec "$out/$target" -runs="$runs" -max_len=$max_len -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict_flag[@]}" "$@" "$corpus" "${seeds[@]}"
