// Bindings of the CSV parser: _native.parse_csv.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "csv_parser.hpp"

namespace sparkbatch::bindings {
namespace {

// Text from the data: invalid UTF-8 becomes U+FFFD rather than an exception without a position.
py::str decode(const char* data, std::size_t size) {
  PyObject* s = PyUnicode_DecodeUTF8(data, static_cast<Py_ssize_t>(size), "replace");
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

char single_char(const std::string& value, const char* name) {
  if (value.size() != 1 || static_cast<unsigned char>(value[0]) >= 128)
    throw py::value_error(std::string(name) + " must be one ASCII character, got '" + value + "'");
  return value[0];
}

py::dict py_parse_csv(py::handle buffer, const std::string& delimiter, const std::string& quote,
                      int64_t skip_lines, int64_t columns,
                      const std::map<int64_t, int64_t>& class_columns,
                      const std::map<int64_t, std::vector<std::string>>& categories,
                      const std::vector<int64_t>& string_columns, const std::string& on_error,
                      int64_t threads, bool quoted_newlines) {
  CsvOptions options;
  options.delimiter = single_char(delimiter, "delimiter");
  options.quoting = !quote.empty();
  options.quoted_newlines = quoted_newlines;
  if (options.quoting) options.quote = single_char(quote, "quote (or '' for none)");
  if (skip_lines < 0) {
    throw py::value_error("skip_lines must be >= 0, got " + std::to_string(skip_lines));
  }
  options.skip_lines = static_cast<uint64_t>(skip_lines);
  options.columns = columns;
  options.class_columns = class_columns;
  options.categories = categories;
  options.string_columns = string_columns;
  if (on_error != "raise" && on_error != "skip")
    throw py::value_error("on_error must be 'raise' or 'skip', got '" + on_error + "'");
  options.skip_bad_rows = on_error == "skip";
  if (threads < 0 || threads > 4096)
    throw py::value_error("threads must be in [0, 4096] (0: all cores), got " +
                          std::to_string(threads));
  options.threads = static_cast<unsigned>(threads);
  validate_csv_options(options);  // std::invalid_argument becomes ValueError

  ByteView view(buffer);
  CsvResult r;
  {
    py::gil_scoped_release release;
    r = parse_csv(reinterpret_cast<const char*>(view.data()), view.size(), options);
  }

  const auto rows = static_cast<py::ssize_t>(r.rows);
  const auto cols = static_cast<py::ssize_t>(r.columns);
  py::array_t<float> values;
  if (r.values.data() == nullptr) {
    values = py::array_t<float>(std::vector<py::ssize_t>{rows, cols});
  } else {
    py::capsule owner(r.values.data(), [](void* p) { std::free(p); });
    float* block = r.values.release();  // owned by the capsule from here on
    values = py::array_t<float>(std::vector<py::ssize_t>{rows, cols}, block, owner);
  }

  py::dict strings;
  for (std::size_t i = 0; i < r.string_columns.size(); ++i) {
    py::list cells(static_cast<py::ssize_t>(r.rows));
    py::ssize_t k = 0;
    for (const CsvStrings& piece : r.strings[i]) {
      std::size_t begin = 0;
      for (std::size_t end : piece.ends) {
        py::str cell = decode(piece.chars.data() + begin, end - begin);
        PyList_SET_ITEM(cells.ptr(), k++, cell.release().ptr());
        begin = end;
      }
    }
    if (k != rows) throw std::logic_error("parse_csv: string cells do not match the rows");
    strings[py::int_(r.string_columns[i])] = cells;
  }

  py::dict out;
  out["values"] = values;
  out["strings"] = strings;
  out["skipped"] = py::int_(r.skipped);
  if (r.error) {
    const CsvError& e = *r.error;
    out["error"] = py::make_tuple(py::int_(e.line), py::int_(e.column),
                                  decode(e.text.data(), e.text.size()), py::str(e.expected));
  } else {
    out["error"] = py::none();
  }
  out["lines"] = py::int_(r.lines);
  out["block_rows"] = py::int_(r.block_rows);
  return out;
}

}  // namespace

void register_csv(py::module_& m) {
  m.def("parse_csv", &py_parse_csv, py::arg("buffer"), py::kw_only(), py::arg("delimiter") = ",",
        py::arg("quote") = "\"", py::arg("skip_lines") = 0, py::arg("columns") = -1,
        py::arg("class_columns") = std::map<int64_t, int64_t>{},
        py::arg("categories") = std::map<int64_t, std::vector<std::string>>{},
        py::arg("string_columns") = std::vector<int64_t>{}, py::arg("on_error") = "raise",
        py::arg("threads") = 0, py::arg("quoted_newlines") = true,
        R"doc(Parses a whole buffer of CSV bytes into a float32 matrix, without the GIL.

With quoted_newlines=False every line is one record, and a quoted field must close on its line.

Returns a dict: "values" (float32 [rows, columns]), "strings" ({column: [str]} for string_columns),
"skipped" (bad rows skipped with on_error="skip"), "error" (None or (line, column, text, expected)
for the first bad row; line is 1-based in the buffer, column -1 for a wrong number of fields) and
"lines" (physical lines consumed), and "block_rows" (the rows parsed a block at a time: a
diagnostic, NOTE(csv-blocks)). Bad data never raises: the caller decides.)doc");
  m.def(
      "_set_csv_blocks",
      [](const std::string& mode) {
        static const char* const kNames[] = {"off", "sse2", "best"};
        for (int i = 0; i < 3; ++i) {
          if (mode == kNames[i]) {
            return std::string(kNames[static_cast<int>(set_csv_blocks(static_cast<CsvBlocks>(i)))]);
          }
        }
        throw py::value_error("mode must be 'off', 'sse2' or 'best', got '" + mode + "'");
      },
      py::arg("mode"),
      "For tests: how parse_csv parses tables of plain numbers (NOTE(csv-blocks)): 'best' (a "
      "block of rows at a time, with AVX2 where the CPU has it), 'sse2' (without AVX2) or 'off' "
      "(record by record, and category cells without their tables: NOTE(csv-categories)). "
      "Returns the previous mode.");
}

}  // namespace sparkbatch::bindings
