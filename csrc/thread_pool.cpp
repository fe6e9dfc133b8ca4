#include "thread_pool.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sparkbatch {
namespace {

class Pool {
 public:
  explicit Pool(unsigned workers) : pid_(::getpid()) {
    for (unsigned i = 0; i < workers; ++i) std::thread([this] { work(); }).detach();
    workers_ = workers;
  }

  pid_t pid() const { return pid_; }
  unsigned workers() const { return workers_; }

  void run(std::size_t n, const std::function<void(std::size_t)>& fn) {
    std::unique_lock<std::mutex> busy(job_mutex_, std::try_to_lock);
    if (!busy.owns_lock() || workers_ == 0 || n <= 1) {
      run_inline(n, fn);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      error_ = nullptr;
      active_ = workers_;
      ++generation_;
    }
    wake_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return active_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static void run_inline(std::size_t n, const std::function<void(std::size_t)>& fn) {
    std::exception_ptr error;
    for (std::size_t i = 0; i < n; ++i) {
      try {
        fn(i);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  }

  // Takes indices until none are left.
  void drain() {
    for (;;) {
      const std::size_t i = next_.fetch_add(1);
      if (i >= n_) return;
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      drain();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--active_ == 0) done_.notify_one();
    }
  }

  const pid_t pid_;
  unsigned workers_ = 0;
  std::mutex job_mutex_;  // one job at a time
  std::mutex mutex_;      // guards the fields below
  std::condition_variable wake_, done_;
  uint64_t generation_ = 0;
  unsigned active_ = 0;
  const std::function<void(std::size_t)>* fn_ = nullptr;
  std::size_t n_ = 0;
  std::atomic<std::size_t> next_{0};
  std::exception_ptr error_;
};

// Threads the pool works with, the caller included: $SPARKBATCH_NUM_THREADS when set to a
// positive number (Spark workers set it to their task's cores, so that many concurrent tasks
// do not each start a thread per core), else the hardware concurrency.
unsigned configured_threads() {
  if (const char* value = std::getenv("SPARKBATCH_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(value, &end, 10);
    if (end != value && *end == '\0' && n > 0) return static_cast<unsigned>(std::min(n, 4096L));
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static std::mutex creation;
  static Pool* instance = nullptr;  // never deleted: detached workers may still wait on it
  std::lock_guard<std::mutex> lock(creation);
  if (instance == nullptr || instance->pid() != ::getpid()) {
    instance = new Pool(configured_threads() - 1);
  }
  return *instance;
}

}  // namespace

unsigned pool_threads() { return pool().workers() + 1; }

void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) { pool().run(n, fn); }

}  // namespace sparkbatch
