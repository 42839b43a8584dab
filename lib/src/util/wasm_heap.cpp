// WebAssembly with threads: one lock around the heap.
//
// Our standalone modules link Emscripten's single-threaded dlmalloc (its thread-safe build needs
// the pthread runtime, which standalone modules lack). With workers on a shared memory
// (util/thread_pool.cpp), pieces of a parallel_for may allocate on several threads at once (a
// workspace growing, an exception), so wasm/build.sh links the threaded modules with
// --wrap=malloc,free,... and every allocation passes here, under a spin lock. The lock is
// recursive because dlmalloc's own functions call malloc/free through the same symbols. Without
// contention it is two atomic operations per call. (Compiled only with -matomics: empty in the
// other modules.)
#if defined(__wasm__) && defined(__wasm_atomics__)
#include <atomic>
#include <cstddef>

#include "util/wasm_spin.hpp"

extern "C" {
void* __real_malloc(size_t);
void __real_free(void*);
void* __real_calloc(size_t, size_t);
void* __real_realloc(void*, size_t);
int __real_posix_memalign(void**, size_t, size_t);
void* __real_aligned_alloc(size_t, size_t);
}

namespace {

thread_local char thread_marker;       // its address tells the threads apart
std::atomic<const void*> owner{nullptr};
int depth = 0;                          // nesting of the owner (only the owner touches it)

struct HeapLock {
    HeapLock() {
        const void* me = &thread_marker;
        if (owner.load(std::memory_order_relaxed) == me) {
            ++depth;
            return;
        }
        unsigned round = 0;
        for (const void* none = nullptr; !owner.compare_exchange_weak(none, me, std::memory_order_acquire); none = nullptr)
            tqkv::detail::spin_round(round);  // (a spin must call out now and then: util/wasm_spin.hpp)
        depth = 1;
    }
    ~HeapLock() {
        if (--depth == 0) owner.store(nullptr, std::memory_order_release);
    }
};

}  // namespace

extern "C" {
__attribute__((export_name("malloc"))) void* __wrap_malloc(size_t n) {
    HeapLock lock;
    return __real_malloc(n);
}
__attribute__((export_name("free"))) void __wrap_free(void* p) {
    HeapLock lock;
    __real_free(p);
}
void* __wrap_calloc(size_t n, size_t size) {
    HeapLock lock;
    return __real_calloc(n, size);
}
void* __wrap_realloc(void* p, size_t n) {
    HeapLock lock;
    return __real_realloc(p, n);
}
int __wrap_posix_memalign(void** out, size_t align, size_t n) {
    HeapLock lock;
    return __real_posix_memalign(out, align, n);
}
void* __wrap_aligned_alloc(size_t align, size_t n) {
    HeapLock lock;
    return __real_aligned_alloc(align, n);
}
}
#endif
