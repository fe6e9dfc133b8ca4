// How fast can the numbers of a CSV file be converted at all, on one core of this machine?
//
// Issue 23 asks for sparkbatch's native CSV parse at three times the fastest current peer on
// every shape. This program measures the conversion alone, without finding the cells: the cells
// of a numeric CSV file are located first (untimed), then each is converted to float32 by
// std::from_chars<float> (GCC 12's libstdc++ implements it with fast_float's algorithm, Lemire,
// "Number Parsing at a Gigabyte per Second", 2021: the fastest correctly rounded decimal
// conversion published) and by strtof, and the rate is the file's bytes over the time. A CSV
// parser does this conversion and more (find the delimiters, check the columns, write the
// table), so the rate bounds what any parser built on such a conversion reaches on one core.
//
// Build and run (a file of bench/csv_peers.py's shapes, e.g. from its --keep folder):
//
//   g++ -O3 -std=c++17 -o /tmp/csv_number_ceiling bench/csv_number_ceiling.cpp
//   /tmp/csv_number_ceiling /tmp/sparkbatch-bench-csvpeers-*/wide17.csv
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

namespace {

struct Cell {
  std::size_t begin, end;
};

double best_seconds(int repeat, const std::vector<Cell>& cells, const std::string& text,
                    std::vector<float>& out, bool use_strtof) {
  double best = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < cells.size(); ++i) {
      const char* first = text.data() + cells[i].begin;
      const char* last = text.data() + cells[i].end;
      if (use_strtof) {
        out[i] = std::strtof(first, nullptr);  // stops at the delimiter after the cell
      } else {
        float value = 0;
        const auto result = std::from_chars(first, last, value);
        if (result.ec != std::errc()) {
          std::fprintf(stderr, "cell %zu is not a number\n", i);
          std::exit(1);
        }
        out[i] = value;
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (seconds < best) best = seconds;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE.csv [repeat]\n", argv[0]);
    return 2;
  }
  const int repeat = argc > 2 ? std::atoi(argv[2]) : 5;
  std::ifstream file(argv[1], std::ios::binary);
  if (!file) {
    std::fprintf(stderr, "cannot open %s\n", argv[1]);
    return 1;
  }
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::vector<Cell> cells;
  std::size_t begin = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == ',' || text[i] == '\n') {
      if (i > begin) cells.push_back({begin, i});
      begin = i + 1;
    }
  }
  if (begin < text.size()) cells.push_back({begin, text.size()});
  std::vector<float> out(cells.size());
  const double mb = static_cast<double>(text.size()) / 1e6;
  const double from_chars_s = best_seconds(repeat, cells, text, out, false);
  double checksum = 0;
  for (float v : out) checksum += v;
  const double strtof_s = best_seconds(repeat, cells, text, out, true);
  std::printf("%s: %.1f MB, %zu cells (%.1f bytes each with its delimiter), best of %d\n",
              argv[1], mb, cells.size(), static_cast<double>(text.size()) / cells.size(),
              repeat);
  std::printf("  std::from_chars<float> %8.0f MB/s  (%.1f ns per cell; sum %.6g)\n",
              mb / from_chars_s, from_chars_s * 1e9 / cells.size(), checksum);
  std::printf("  strtof                 %8.0f MB/s  (%.1f ns per cell)\n", mb / strtof_s,
              strtof_s * 1e9 / cells.size());
  return 0;
}
