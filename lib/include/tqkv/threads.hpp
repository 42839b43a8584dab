// The library's one pool of worker threads. Work that splits into independent pieces (attention
// over KV heads and token ranges, configurations of a benchmark, layers of a budget cache) runs
// through parallel_for with a thread count the caller chooses per call.
//
//   tqkv::parallel_for(units, 2, [&](size_t i) { work(i); });  // the caller + 1 worker
//
// The calling thread always takes part, so a call makes progress even when every worker is busy
// with other calls, and calls may nest (a piece may itself call parallel_for). Workers are started
// on first use, as many as the largest request asked for (threads - 1, at most kMaxThreads - 1),
// and live until the process ends. Where threads cannot be started (the WebAssembly modules
// without threads), the caller runs every piece itself; in the threaded modules the workers are
// the ones the npm loader started (util/thread_pool.cpp), and a piece never runs a nested call
// on them.
#pragma once
#include <cstddef>
#include <functional>

namespace tqkv {

constexpr int kMaxThreads = 64;

// Runs fn(0), ..., fn(n - 1), each exactly once, on up to `threads` threads (the caller's
// included; threads <= 1 or n <= 1: on the caller, in order) and returns when all have run. The
// order and the thread of each piece are unspecified otherwise. If pieces throw, the others still
// run and the first exception is rethrown.
void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn);

// Worker threads the pool holds now (0 until the first parallel call).
int pool_workers();

}  // namespace tqkv
