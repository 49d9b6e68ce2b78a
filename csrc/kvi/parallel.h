// Threads over independent items (queries, texts). Each worker owns a workspace index so per-thread
// buffers are reused; items are handed out by an atomic counter so uneven items balance.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kvi {

inline int resolve_threads(int64_t requested, int64_t items) {
    int64_t n = requested > 0 ? requested : static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
    return static_cast<int>(std::max<int64_t>(1, std::min(n, items)));
}

// fn(worker, item) for item in [0, items); the first exception thrown by any worker is rethrown here.
template <class Fn>
void parallel_for(int64_t items, int workers, Fn&& fn) {
    if (workers <= 1) {
        for (int64_t i = 0; i < items; ++i) fn(0, i);
        return;
    }
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

}  // namespace kvi
