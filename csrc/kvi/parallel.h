// Threads over independent items (queries, texts). Each worker owns a workspace index so per-thread
// buffers are reused; items are handed out one at a time (dynamically) so uneven items balance.
//
// Built with OpenMP (Linux), the workers are an OpenMP team. The extension then shares PyTorch's libgomp (loaded
// first: kvi_engine imports torch before _core), so between PyTorch ops and ours the same threads run. Private
// std::threads would compete with libgomp workers still spin-waiting after the previous PyTorch op: measured inside a
// forward pass on 2 cores, the attention kernel ran at 7.0 ms a layer instead of 4.25.
// libgomp's pool does not survive fork(): a forked child's first parallel region hangs. The module installs a fork
// guard (install_fork_guard) that sends a forked child's work to plain std::threads. libgomp keeps one pool per
// calling thread, so N Python threads calling in keep up to N x (workers - 1) idle threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#include <pthread.h>
#endif

namespace kvi {

inline std::atomic<bool>& in_forked_child() {
    static std::atomic<bool> flag{false};
    return flag;
}

// Called once when the module loads: from then on a fork()ed child runs parallel_for on std::threads.
inline void install_fork_guard() {
#ifdef _OPENMP
    static const int installed = pthread_atfork(nullptr, nullptr, [] { in_forked_child().store(true); });
    (void)installed;
#endif
}

inline int resolve_threads(int64_t requested, int64_t items) {
    int64_t n = requested > 0 ? requested : static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
    return static_cast<int>(std::max<int64_t>(1, std::min(n, items)));
}

#ifdef _OPENMP
template <class Fn>
void parallel_for_omp(int64_t items, int workers, Fn& fn) {
    std::exception_ptr error;
    std::atomic<bool> failed{false};
#pragma omp parallel num_threads(workers)
    {
        const int w = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < items; ++i) {
            if (failed.load(std::memory_order_relaxed)) continue;  // no exception may leave the region
            try {
                fn(w, i);
            } catch (...) {
#pragma omp critical(kvi_parallel_error)
                if (!error) error = std::current_exception();
                failed.store(true);
            }
        }
    }
    if (error) std::rethrow_exception(error);
}
#endif

template <class Fn>
void parallel_for_threads(int64_t items, int workers, Fn& fn) {
    std::atomic<int64_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto body = [&](int w) {
        try {
            for (int64_t i; (i = next.fetch_add(1)) < items;) fn(w, i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            next.store(items);
        }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; ++w) pool.emplace_back(body, w);
    body(0);
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
}

// fn(worker, item) for item in [0, items); the first exception thrown by any worker is rethrown here.
template <class Fn>
void parallel_for(int64_t items, int workers, Fn&& fn) {
    if (workers <= 1) {
        for (int64_t i = 0; i < items; ++i) fn(0, i);
        return;
    }
#ifdef _OPENMP
    if (!in_forked_child().load(std::memory_order_relaxed)) return parallel_for_omp(items, workers, fn);
#endif
    parallel_for_threads(items, workers, fn);
}

}  // namespace kvi
