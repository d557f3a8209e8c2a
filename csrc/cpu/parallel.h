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

// Runs body(worker, block) for block in [0, num_blocks) on up to num_threads std::threads, handing out blocks
// dynamically so that uneven blocks (rows of a triangle) stay balanced. worker is in [0, workers) and lets the
// body keep per-thread partial sums without locks. The first exception thrown by a body is rethrown here.
template <typename Body>
void parallel_blocks(int64_t num_blocks, int num_threads, Body&& body) {
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, num_blocks)));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](int worker) {
    try {
      for (int64_t block = next++; block < num_blocks; block = next++) body(worker, block);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = num_blocks;
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
  run(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

inline int worker_count(int64_t num_blocks, int num_threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, num_blocks)));
}

}  // namespace pyprune
