// The library's thread pool (tqkv/threads.hpp).
//
// A call of parallel_for is a Job on the caller's stack: an atomic counter hands out the indices,
// and `helpers` tickets for the job go into the pool's queue. A worker that takes a ticket joins
// the job (active + 1), takes indices until none are left, and leaves (active - 1). The caller
// takes indices as well; when none are left it withdraws the tickets nobody took and waits until
// no worker is active in the job any more — then every index has run and nothing refers to the
// job, which can go out of scope.
#include "tqkv/threads.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace tqkv {

namespace {

struct Job {
    const std::function<void(size_t)>* fn = nullptr;
    size_t n = 0;
    std::atomic<size_t> next{0};
    int active = 0;  // workers inside the job (guarded by the pool's mutex)
    std::exception_ptr error;
    std::mutex error_mu;

    void run() {
        for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
            try {
                (*fn)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mu);
                if (!error) error = std::current_exception();
            }
        }
    }
};

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
        }
        work_cv_.notify_all();
        job.run();
        {
            std::unique_lock<std::mutex> lock(mu_);
            queue_.erase(std::remove(queue_.begin(), queue_.end(), &job), queue_.end());
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
            work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
            if (stop_) return;
            Job* job = queue_.front();
            queue_.pop_front();
            ++job->active;
            lock.unlock();
            job->run();
            lock.lock();
            if (--job->active == 0) done_cv_.notify_all();
        }
    }

    std::mutex mu_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<Job*> queue_;  // tickets: one worker each
    std::vector<std::thread> workers_;
    bool stop_ = false;
};

Pool& pool() {
    static Pool p;
    return p;
}

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
    pool().parallel_for(n, threads, fn);
}

int pool_workers() { return pool().workers(); }

}  // namespace tqkv
