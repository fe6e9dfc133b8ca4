// A process-wide pool of worker threads for splitting one native call across cores.
//
// Starting threads costs tens of microseconds, as much as checksumming a megabyte, so the workers
// are started once and wait for work. A child process made by fork() gets a fresh pool (the
// parent's workers do not exist there). One parallel job runs at a time; a caller that finds the
// pool busy runs its job on its own thread instead of waiting.
#pragma once

#include <cstddef>
#include <functional>

namespace sparkbatch {

// Threads a parallel_for can use, the caller included (the hardware concurrency).
unsigned pool_threads();

// Calls fn(i) for every i in [0, n), spread over the pool's workers and the calling thread, and
// returns when all calls have returned. The first exception thrown by a call is rethrown here
// (the other calls still run). Safe to call without the GIL; fn must not need it.
void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn);

}  // namespace sparkbatch
