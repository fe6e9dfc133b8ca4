// CRC-32C (Castagnoli), the checksum of the minibatch file's data section.
//
// Uses the SSE4.2 / ARMv8 CRC instructions when the CPU has them (checked at run time, so one
// binary serves every CPU), on x86-64 together with carry-less multiplication (PCLMULQDQ,
// VPCLMULQDQ) for longer buffers, and a slicing-by-8 table otherwise. Large buffers are split
// across threads and the partial CRCs combined, so verification runs at memory speed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparkbatch {

// CRC-32C of `data`, continuing from `crc` (0 to start). Standard conditioning: crc32c("123456789")
// == 0xE3069283.
uint32_t crc32c(uint32_t crc, const void* data, std::size_t size);

// The same, split over up to `threads` threads for large buffers (0 = hardware concurrency).
uint32_t crc32c_parallel(uint32_t crc, const void* data, std::size_t size, unsigned threads = 0);

// CRC of the concatenation A + B from crc(A), crc(B) and len(B).
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, std::size_t len_b);

// Whether the hardware instructions are used on this CPU.
bool crc32c_hardware();

// Which implementation runs on this CPU: "sse4.2+vpclmul" (CRC instruction plus 256-bit carry-less
// multiply folding for large buffers), "sse4.2+pclmul", "sse4.2", "armv8-crc" or "table".
const char* crc32c_method();

}  // namespace sparkbatch
