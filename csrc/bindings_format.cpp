// Bindings of the minibatch file format, CRC32C and one-hot encoding.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "crc32c.hpp"
#include "minibatch_format.hpp"
#include "thread_pool.hpp"
#include "one_hot.hpp"

namespace sparkbatch::bindings {
namespace {

using sparkbatch::FormatError;

uint32_t py_crc32c(py::handle buffer, uint32_t value) {
  ByteView view(buffer);
  py::gil_scoped_release release;
  return sparkbatch::crc32c_parallel(value, view.data(), view.size());
}

py::dict metadata_dict(const sparkbatch::Header& header) {
  py::dict metadata;
  for (const auto& [key, value] : header.metadata) metadata[py::str(key)] = py::str(value);
  return metadata;
}

// The tensors of a checked header as numpy arrays over `file` (a uint8 array holding the whole
// file, which becomes their base), by name. `dtypes` maps safetensors dtype codes to numpy dtypes.
// A tensor whose data is not aligned to its item size (files of other writers may do that) is
// copied, as the native kernels want aligned data.
py::dict tensor_arrays(const py::array& file, const sparkbatch::Header& header,
                       const py::dict& dtypes, const std::string& name) {
  const auto* bytes = static_cast<const uint8_t*>(file.data());
  py::dict arrays;
  for (const auto& t : header.tensors) {
    PyObject* found = PyDict_GetItemString(dtypes.ptr(), t.dtype.c_str());
    if (found == nullptr)  // a valid safetensors dtype that numpy cannot hold (BF16, F8, ...)
      throw NamedFormatError(name + ": tensor '" + t.name + "' has dtype " + t.dtype +
                             ", which numpy cannot hold");
    const auto dtype = py::reinterpret_borrow<py::dtype>(found);
    const std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
    const uint8_t* data = bytes + header.data_start + t.begin;
    const auto itemsize = static_cast<uintptr_t>(dtype.itemsize());
    py::array array;
    try {
      if (t.end == t.begin) {
        array = py::array(dtype, shape);
      } else if (reinterpret_cast<uintptr_t>(data) % itemsize == 0) {
        array = py::array(dtype, shape, data, file);
      } else {
        array = py::array(dtype, shape);
        std::memcpy(array.mutable_data(), data, t.end - t.begin);
      }
    } catch (py::error_already_set& e) {
      // The header's checks follow numpy 2's limits; an older numpy allows fewer dimensions.
      if (!e.matches(PyExc_ValueError)) throw;
      throw NamedFormatError(name + ": tensor '" + t.name + "' cannot be held by numpy: " +
                             py::str(e.value()).cast<std::string>());
    }
    arrays[py::str(t.name)] = std::move(array);
  }
  return arrays;
}

// Checks the header of a file held in `file` (a uint8 array); returns (arrays over it by name,
// metadata, data_start).
py::tuple py_read_header(const py::array& file, const std::string& name, const py::dict& dtypes) {
  sparkbatch::Header header;
  try {
    header = sparkbatch::parse_header(static_cast<const uint8_t*>(file.data()),
                                      static_cast<uint64_t>(file.nbytes()));
  } catch (const FormatError& e) {
    throw NamedFormatError(name + ": " + e.what());
  }
  return py::make_tuple(tensor_arrays(file, header, dtypes, name), metadata_dict(header),
                        header.data_start);
}

// Closes a file descriptor on scope exit.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads a whole small local file into one 64-byte aligned numpy buffer and checks its header, in
// one call with the GIL released: no Python file object, and the CRC32C of the data section is
// taken chunk by chunk right after each chunk is read, while it is still in the CPU's cache.
// Returns None (having read nothing) when the file has `max_bytes` bytes or more, so that the
// caller maps it instead; else (arrays by name, metadata, crc or None).
py::object py_read_file(const std::string& path, const std::string& name, uint64_t max_bytes,
                        bool crc, const py::dict& dtypes) {
  FileDescriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) {
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
    throw py::error_already_set();
  }
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) {
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
    throw py::error_already_set();
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size >= max_bytes) return py::none();
  py::array_t<uint8_t> storage(static_cast<py::ssize_t>(size + sparkbatch::kAlignment));
  uint8_t* base = storage.mutable_data();
  const auto skip = static_cast<std::size_t>(
      (sparkbatch::kAlignment - reinterpret_cast<uintptr_t>(base) % sparkbatch::kAlignment) %
      sparkbatch::kAlignment);
  uint8_t* data = base + skip;

  constexpr uint64_t kChunk = uint64_t{256} << 10;
  uint64_t got = 0, checked = 0, data_start = 0;
  uint32_t value = 0;
  int error = 0;
  bool short_read = false;
  sparkbatch::Header header;
  std::string format_error;
  {
    py::gil_scoped_release release;
    while (got < size) {
      const ssize_t n = ::pread(file.fd, data + got, std::min(kChunk, size - got),
                                static_cast<off_t>(got));
      if (n < 0) {
        if (errno == EINTR) continue;
        error = errno;
        break;
      }
      if (n == 0) {
        short_read = true;
        break;
      }
      got += static_cast<uint64_t>(n);
      if (data_start == 0 && got >= 8) {
        uint64_t header_len = 0;
        std::memcpy(&header_len, data, 8);  // little-endian on every platform we build for
        data_start = header_len <= size - 8 ? 8 + header_len : size;
        checked = data_start;
      }
      if (crc && data_start != 0 && got > checked) {
        value = sparkbatch::crc32c(value, data + checked, got - checked);
        checked = got;
      }
    }
    if (error == 0 && !short_read) {
      try {
        header = sparkbatch::parse_header(data, size);
      } catch (const FormatError& e) {
        format_error = e.what();
      }
    }
  }
  if (error != 0) {
    errno = error;
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
    throw py::error_already_set();
  }
  if (short_read) throw NamedFormatError(name + ": the file changed size while it was read");
  if (!format_error.empty()) throw NamedFormatError(name + ": " + format_error);
  storage.attr("flags").attr("writeable") = false;  // read-only arrays, as a memory map gives
  py::array file_bytes = storage[py::slice(static_cast<py::ssize_t>(skip),
                                           static_cast<py::ssize_t>(skip + size), 1)];
  return py::make_tuple(tensor_arrays(file_bytes, header, dtypes, name), metadata_dict(header),
                        crc ? py::object(py::int_(value)) : py::object(py::none()));
}

// Keeps the buffers of the tensors to write alive while the GIL is released.
struct WriteRequest {
  std::vector<std::unique_ptr<ByteView>> views;
  std::vector<sparkbatch::TensorSource> sources;
  std::vector<std::pair<std::string, std::string>> metadata;
};

WriteRequest make_request(const py::list& tensors, const py::dict& metadata) {
  WriteRequest req;
  std::set<std::string> names;
  for (const auto& item : tensors) {
    auto entry = item.cast<py::tuple>();
    if (entry.size() != 3) throw py::value_error("tensors must be (name, dtype, array) tuples");
    sparkbatch::TensorSource src;
    src.name = entry[0].cast<std::string>();
    // A tensor named like a filler would vanish when read (or clash with the writer's fillers),
    // one named __metadata__ would be read as the metadata, a repeated name makes a duplicate key.
    if (src.name == "__metadata__" || src.name.rfind(sparkbatch::kPadPrefix, 0) == 0)
      throw py::value_error("tensor name '" + src.name + "' is reserved (__metadata__, " +
                            sparkbatch::kPadPrefix + "*)");
    if (!names.insert(src.name).second)
      throw py::value_error("tensor name '" + src.name + "' repeats");
    src.dtype = entry[1].cast<std::string>();
    const std::size_t item_size = sparkbatch::dtype_size(src.dtype);
    if (item_size == 0) throw py::value_error("unknown dtype " + src.dtype + " for tensor " + src.name);
    auto view = std::make_unique<ByteView>(entry[2]);
    const Py_buffer& pb = view->view();
    if (static_cast<std::size_t>(pb.itemsize) != item_size)
      throw py::value_error("tensor " + src.name + ": item size " + std::to_string(pb.itemsize) +
                            " does not match dtype " + src.dtype);
    for (int d = 0; d < pb.ndim; ++d) src.shape.push_back(static_cast<uint64_t>(pb.shape[d]));
    src.data = view->data();
    src.nbytes = view->size();
    req.sources.push_back(std::move(src));
    req.views.push_back(std::move(view));
  }
  for (const auto& [key, value] : metadata) {
    auto k = key.cast<std::string>();
    if (k == "crc32c") throw py::value_error("metadata key \"crc32c\" is reserved");
    req.metadata.emplace_back(std::move(k), value.cast<std::string>());
  }
  return req;
}

uint64_t py_write_file(int fd, const py::list& tensors, const py::dict& metadata) {
  WriteRequest req = make_request(tensors, metadata);
  py::gil_scoped_release release;
  sparkbatch::Layout layout = sparkbatch::plan_layout(req.sources, req.metadata);
  sparkbatch::write_file(fd, layout);
  return layout.total_size;
}

py::bytes py_serialize(const py::list& tensors, const py::dict& metadata) {
  WriteRequest req = make_request(tensors, metadata);
  sparkbatch::Layout layout = sparkbatch::plan_layout(req.sources, req.metadata);
  PyObject* raw = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(layout.total_size));
  if (raw == nullptr) throw py::error_already_set();
  auto out = py::reinterpret_steal<py::bytes>(raw);
  auto* dest = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(raw));
  {
    py::gil_scoped_release release;
    sparkbatch::serialize(layout, dest);
  }
  return out;
}

template <typename Index>
py::array_t<float> one_hot_typed(const py::array& indices, int64_t num_classes) {
  auto idx = py::array_t<Index, py::array::c_style>::ensure(indices);
  if (!idx) throw py::error_already_set();
  const auto n = static_cast<std::size_t>(idx.shape(0));
  const std::size_t steps = idx.ndim() == 2 ? static_cast<std::size_t>(idx.shape(1)) : 1;
  std::vector<py::ssize_t> shape{idx.shape(0), static_cast<py::ssize_t>(num_classes)};
  if (idx.ndim() == 2) shape.push_back(idx.shape(1));
  py::array_t<float> out(shape);
  const Index* in = idx.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    sparkbatch::one_hot(in, n, steps, num_classes, dst);
  }
  return out;
}

py::array_t<float> py_one_hot(const py::array& indices, int64_t num_classes) {
  if (num_classes <= 0) throw py::value_error("num_classes must be positive, got " + std::to_string(num_classes));
  if (indices.ndim() != 1 && indices.ndim() != 2)
    throw py::value_error("class indices must be 1-D [n] or 2-D [n, steps], got " +
                          std::to_string(indices.ndim()) + " dimensions");
  const auto dtype = indices.dtype();
  if (py::isinstance<py::array_t<int32_t>>(indices)) return one_hot_typed<int32_t>(indices, num_classes);
  if (py::isinstance<py::array_t<int64_t>>(indices)) return one_hot_typed<int64_t>(indices, num_classes);
  if (py::isinstance<py::array_t<uint8_t>>(indices)) return one_hot_typed<uint8_t>(indices, num_classes);
  if (py::isinstance<py::array_t<int16_t>>(indices)) return one_hot_typed<int16_t>(indices, num_classes);
  throw py::type_error("class indices must be an integer array (int8..int64), got " +
                       py::str(dtype).cast<std::string>());
}

py::dict build_info() {
  py::dict info;
  info["crc32c"] = sparkbatch::crc32c_method();
  info["threads"] = "std::thread";
  info["pool_threads"] = sparkbatch::pool_threads();
  info["openmp"] = false;
  info["compiler"] = __VERSION__;
#ifdef NDEBUG
  info["debug"] = false;
#else
  info["debug"] = true;
#endif
#ifdef SPARKBATCH_SANITIZE
  info["sanitizers"] = "address,undefined";
#else
  info["sanitizers"] = "";
#endif
  return info;
}

}  // namespace

void register_format(py::module_& m) {
  m.def("crc32c", &py_crc32c, py::arg("buffer"), py::arg("value") = 0,
        "CRC-32C of a contiguous buffer, continuing from `value`.");
  m.def("crc32c_hardware", &sparkbatch::crc32c_hardware,
        "Whether CRC-32C uses the CPU's CRC instructions.");
  m.def("read_header", &py_read_header, py::arg("file"), py::arg("name"), py::arg("dtypes"),
        "Check a minibatch/safetensors file held in the uint8 array `file`; return (its tensors as "
        "arrays over it by name, metadata, data_start). `dtypes` maps dtype codes to numpy dtypes.");
  m.def("read_file", &py_read_file, py::arg("path"), py::arg("name"), py::arg("max_bytes"),
        py::arg("crc"), py::arg("dtypes"),
        "Read a local file smaller than `max_bytes` into an aligned buffer and check its header; "
        "return (tensors as read-only arrays by name, metadata, crc32c of the data section or "
        "None), or None for a larger file.");
  m.def("write_file", &py_write_file, py::arg("fd"), py::arg("tensors"), py::arg("metadata"),
        "Write a minibatch file to an open file descriptor; return the bytes written.");
  m.def("serialize", &py_serialize, py::arg("tensors"), py::arg("metadata"),
        "Return a minibatch file as bytes.");
  m.def("one_hot", &py_one_hot, py::arg("indices"), py::arg("num_classes"),
        "One-hot encode class indices [n] or [n, steps] into float32 [n, C] or [n, C, steps].");
  m.def("build_info", &build_info, "Features of this native build.");
  m.attr("ALIGNMENT") = sparkbatch::kAlignment;
}

}  // namespace sparkbatch::bindings
