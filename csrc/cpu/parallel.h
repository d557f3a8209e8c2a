// Minimal thread pool-free parallel loop over blocks, used by every CPU kernel.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pyprune {

// Runs work(worker, stop) for worker in [0, workers) on std::threads (worker 0 on the calling thread). stop
// turns true once any worker has thrown; the first exception is rethrown here after every thread has joined.
template <typename Work>
void run_workers(int workers, Work&& work) {
  std::atomic<bool> stop{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](int worker) {
    try {
      work(worker, stop);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      stop = true;
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
  run(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

// Runs body(worker, block) for block in [0, num_blocks) on up to num_threads std::threads, handing out blocks
// dynamically so that uneven blocks (rows of a triangle) stay balanced. worker is in [0, workers) and lets the
// body keep per-thread partial sums without locks. The first exception thrown by a body is rethrown here.
template <typename Body>
void parallel_blocks(int64_t num_blocks, int num_threads, Body&& body) {
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, num_blocks)));
  std::atomic<int64_t> next{0};
  run_workers(workers, [&](int worker, const std::atomic<bool>& stop) {
    for (int64_t block = next++; block < num_blocks && !stop; block = next++) body(worker, block);
  });
}

// Like parallel_blocks, but worker w always gets blocks w, w + workers, w + 2 workers, ...: a fixed
// assignment, so per-worker partial sums (merged in worker order) are bit-identical from run to run for a given
// thread count. Cyclic dealing keeps blocks of steadily changing cost (rows of a triangle) balanced.
template <typename Body>
void parallel_blocks_cyclic(int64_t num_blocks, int num_threads, Body&& body) {
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, num_blocks)));
  run_workers(workers, [&](int worker, const std::atomic<bool>& stop) {
    for (int64_t block = worker; block < num_blocks && !stop; block += workers) body(worker, block);
  });
}

inline int worker_count(int64_t num_blocks, int num_threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, num_blocks)));
}

}  // namespace pyprune
