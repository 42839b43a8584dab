// Spinning in WebAssembly with threads, where a browser's main thread may not block: the thread
// pool's caller waiting for its workers (thread_pool.cpp) and the heap lock (wasm_heap.cpp).
//
// A spin must call out to JavaScript now and then. Measured in Chromium 156 (the demo page's test,
// 2 threads, a busy 2-core machine): with the waits as plain loops of atomic loads, one run in 6-10
// froze the page for good; the debugger could not even pause its main thread, so V8 had compiled
// the loop without the check through which a thread takes the engine's interrupts, while a worker
// waited on something that needs them (the likely one: growing the shared memory inside malloc).
// With a clock read (an import implemented in JavaScript) every 65536 rounds of the pool's wait,
// 25 runs of 25 passed. Both waits now make that call every 4096 rounds (a few microseconds of
// spinning; the call costs far less). The clock is the call, not a timeout: nothing gives up.
#pragma once
#include <chrono>

namespace tqkv::detail {

// Call once per round of a spin loop.
inline void spin_round(unsigned& round) {
    if (++round % 4096 == 0) (void)std::chrono::steady_clock::now();
}

}  // namespace tqkv::detail
