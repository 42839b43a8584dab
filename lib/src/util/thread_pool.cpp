// The library's thread pool (tqkv/threads.hpp).
//
// A call of parallel_for is a Job on the caller's stack: an atomic counter hands out the indices,
// and `helpers` tickets for the job go into the pool's queue. A worker that takes a ticket joins
// the job (active + 1), takes indices until none are left, and leaves (active - 1). The caller
// takes indices as well; when none are left it withdraws the tickets nobody took and waits until
// no worker is active in the job any more — then every index has run and nothing refers to the
// job, which can go out of scope.
//
// WebAssembly with threads (objects built with -matomics, the module linked with shared memory):
// there is no pthread runtime in our standalone modules, so the workers are Web Workers (or Node
// worker_threads) that the npm loader starts; each instantiates the same module on the shared
// memory and calls tqkv_worker_main() (below), which never returns. The job protocol is the same
// (an atomic counter of indices); tickets and active workers live in one atomic word so that a
// worker cannot take a ticket after the caller withdrew them, and workers sleep on a futex word
// (memory.atomic.wait32; allowed in workers, not on a browser's main thread, where the caller
// spins instead while the workers finish, calling out now and then: util/wasm_spin.hpp).
#include "tqkv/threads.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__wasm__) && defined(__wasm_atomics__)
#include "util/wasm_spin.hpp"
#define TQKV_WEB_THREADS 1
#else
#define TQKV_WEB_THREADS 0
#endif

namespace tqkv {

namespace {

struct Job {
    const std::function<void(size_t)>* fn = nullptr;
    size_t n = 0;
    std::atomic<size_t> next{0};
    std::atomic<int> active{0};  // workers inside the job (changed under the pool's mutex)
    std::exception_ptr error;
    std::atomic<bool> failed{false};  // the first piece that throws keeps its exception

    void run() {
        for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
            try {
                (*fn)(i);
            } catch (...) {
                if (!failed.exchange(true)) error = std::current_exception();
            }
        }
    }
};

// Calls pred() until it holds or kPollMicros passed; true if it held. Jobs come in bursts (the
// heads of one attend, the layers of a decode step): a worker that polls a moment before sleeping
// takes the next job without a wake-up, which on a busy or virtual machine costs tens to hundreds
// of microseconds, as long as a whole attend over a few thousand tokens. (In wasm the clock is a
// call out to JavaScript, hence the check every 64 rounds.)
constexpr int kPollMicros = 100;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

template <class Pred>
bool poll(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kPollMicros);
    for (unsigned i = 1;; ++i) {
        if (pred()) return true;
        cpu_relax();
        if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return false;
    }
}

#if !TQKV_WEB_THREADS

class Pool {
public:
    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        work_cv_.notify_all();
        for (auto& t : workers_) t.join();
    }

    void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn) {
        Job job;
        job.fn = &fn;
        job.n = n;
        const int helpers = int(std::min<size_t>(size_t(std::min(threads, kMaxThreads)) - 1, n - 1));
        {
            std::lock_guard<std::mutex> lock(mu_);
            grow(helpers);
            for (int i = 0; i < std::min(helpers, int(workers_.size())); ++i) queue_.push_back(&job);
            queued_.store(queue_.size(), std::memory_order_relaxed);
        }
        work_cv_.notify_all();
        job.run();
        {
            std::lock_guard<std::mutex> lock(mu_);
            queue_.erase(std::remove(queue_.begin(), queue_.end(), &job), queue_.end());
            queued_.store(queue_.size(), std::memory_order_relaxed);
        }
        // No worker joins any more: wait for those inside, polling first (a helper finishing
        // its last piece is usually microseconds away; a sleep and wake-up costs more).
        poll([&] { return job.active.load(std::memory_order_acquire) == 0; });
        {
            std::unique_lock<std::mutex> lock(mu_);  // also: the last worker left the mutex
            done_cv_.wait(lock, [&] { return job.active == 0; });
        }
        if (job.error) std::rethrow_exception(job.error);
    }

    int workers() {
        std::lock_guard<std::mutex> lock(mu_);
        return int(workers_.size());
    }

private:
    // Starts workers up to `count` (mu_ held). Where threads cannot start, the pool stays smaller.
    void grow(int count) {
        while (int(workers_.size()) < count) {
            try {
                workers_.emplace_back([this] { work(); });
            } catch (const std::system_error&) {
                return;
            }
        }
    }

    void work() {
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
            if (queue_.empty() && !stop_) {
                lock.unlock();
                poll([&] { return queued_.load(std::memory_order_relaxed) != 0; });
                lock.lock();
            }
            work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
            if (stop_) return;
            Job* job = queue_.front();
            queue_.pop_front();
            queued_.store(queue_.size(), std::memory_order_relaxed);
            ++job->active;
            lock.unlock();
            job->run();
            lock.lock();
            if (--job->active == 0) done_cv_.notify_all();
        }
    }

    std::mutex mu_;
    std::condition_variable work_cv_, done_cv_;
    std::atomic<size_t> queued_{0};  // queue_.size(), for polling without the mutex
    std::deque<Job*> queue_;  // tickets: one worker each
    std::vector<std::thread> workers_;
    bool stop_ = false;
};

Pool& pool() {
    static Pool p;
    return p;
}

#else  // TQKV_WEB_THREADS

// The pool's state, in linear memory that every instance shares.
struct WebPool {
    std::atomic<uint32_t> epoch{0};   // moves when a job is published; workers sleep on it
    std::atomic<uint32_t> state{0};   // tickets (low 16 bits) | workers active in the job (high 16)
    std::atomic<int> workers{0};      // workers inside tqkv_worker_main
    std::atomic<bool> busy{false};    // a job is published (one at a time; others run serially)
    Job* job = nullptr;               // valid while tickets or active workers remain

    bool take_ticket() {
        uint32_t s = state.load(std::memory_order_relaxed);
        while (s & 0xffffu)
            if (state.compare_exchange_weak(s, s - 1 + 0x10000u, std::memory_order_acquire)) return true;
        return false;
    }

    void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn) {
        Job job;
        job.fn = &fn;
        job.n = n;
        const int helpers = int(std::min<size_t>(size_t(std::min({threads, kMaxThreads, workers.load() + 1})) - 1, n - 1));
        this->job = &job;
        state.store(uint32_t(helpers), std::memory_order_release);
        epoch.fetch_add(1, std::memory_order_release);
        __builtin_wasm_memory_atomic_notify(reinterpret_cast<int*>(&epoch), uint32_t(helpers));
        job.run();
        // Withdraw the tickets nobody took, then wait (spinning: a browser's main thread may not
        // block) until no worker is inside the job.
        uint32_t s = state.load(std::memory_order_relaxed);
        while (!state.compare_exchange_weak(s, s & 0xffff0000u, std::memory_order_acquire)) {
        }
        for (unsigned round = 0; state.load(std::memory_order_acquire) != 0;) detail::spin_round(round);
        if (job.error) std::rethrow_exception(job.error);
    }

    [[noreturn]] void work() {
        workers.fetch_add(1);
        for (;;) {
            const uint32_t e = epoch.load(std::memory_order_acquire);
            if (take_ticket()) {
                job->run();
                state.fetch_sub(0x10000u, std::memory_order_release);
                continue;
            }
            if (!poll([&] { return epoch.load(std::memory_order_relaxed) != e; }))
                __builtin_wasm_memory_atomic_wait32(reinterpret_cast<int*>(&epoch), int(e), -1);
        }
    }
};

WebPool web_pool;
thread_local bool in_worker = false;

#endif  // TQKV_WEB_THREADS

}  // namespace

void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn) {
    if (threads <= 1 || n <= 1) {  // no pool, no job: the same contract on the caller alone
        std::exception_ptr error;
        for (size_t i = 0; i < n; ++i) {
            try {
                fn(i);
            } catch (...) {
                if (!error) error = std::current_exception();
            }
        }
        if (error) std::rethrow_exception(error);
        return;
    }
#if TQKV_WEB_THREADS
    // Serially where no worker runs, inside a worker (nested) or while another job is published.
    if (in_worker || web_pool.workers.load() == 0 || web_pool.busy.exchange(true)) return parallel_for(n, 1, fn);
    struct Release {
        ~Release() { web_pool.busy.store(false); }
    } release;
    web_pool.parallel_for(n, threads, fn);
#else
    pool().parallel_for(n, threads, fn);
#endif
}

#if TQKV_WEB_THREADS
int pool_workers() { return web_pool.workers.load(); }
#else
int pool_workers() { return pool().workers(); }
#endif

}  // namespace tqkv

#if TQKV_WEB_THREADS
// Entered by each worker the npm loader starts (web/src/threads.ts), after it set its own stack
// and thread-local storage; never returns.
extern "C" __attribute__((export_name("tqkv_worker_main"))) void tqkv_worker_main() {
    tqkv::in_worker = true;
    tqkv::web_pool.work();
}
#endif
