// GeoShare's CPU allocator for libtorch: a caching allocator installed with c10::SetCPUAllocator, so that a program
// that only references the library gets jemalloc's speed without LD_PRELOAD (bench/allocator.md).
//
// Why: glibc, tuned to return every freed block of 128 KB or more to the kernel (the only glibc setting whose resident
// set stays bounded, see NativeAllocator.cs), page-faults every new tensor in again: 1.5-2.5x jemalloc's time.
// Here blocks of 128 KB or more are anonymous mappings kept after they are freed, in size classes (8 per doubling),
// and handed out again to the next request of their class. Bounded: the mapped total (in use + cached) never exceeds
// the peak in-use total plus a slack of 1/8 of it, 256 MB at least (the oldest cached blocks are given up first), and a
// block cached for more than 5 s unused is unmapped. A block given up for a request of another class is resized for it
// with mremap where it can be (its pages stay faulted in) rather than unmapped beside a fresh mapping: a planner cycling
// through five ranks' [r, out] sizes missed the cache 6,600 times in a 124M-shape plan, and each miss faulted a fresh
// mapping in page by page (6.7 M page faults, about a tenth of the run). Smaller requests go to glibc (posix_memalign,
// 64-byte aligned like c10).
//
// Built by the GeoShare project (g++, no libtorch headers): the declarations below reproduce libtorch 2.10's
// c10::DataPtr (c10/core/Allocator.h), c10::detail::UniqueVoidPtr (c10/util/UniqueVoidPtr.h), c10::Device
// (c10/core/Device.h) and the virtual functions of c10::Allocator in their declaration order. geoshare_alloc_install
// checks them against the running libc10 (an allocation through libc10's own CPU allocator, read through these
// declarations) before it installs anything.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1  // mremap
#endif
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>

#define GS_EXPORT extern "C" __attribute__((visibility("default")))

namespace geoshare_abi {
// c10/util/UniqueVoidPtr.h: using DeleterFnPtr = void (*)(void*);
// class UniqueVoidPtr { void* data_; std::unique_ptr<void, DeleterFnPtr> ctx_; };
using DeleterFnPtr = void (*)(void*);
struct UniqueVoidPtr {
  void* data_;
  std::unique_ptr<void, DeleterFnPtr> ctx_;
};
// c10/core/Device.h: DeviceType is an enum class : int8_t (CPU = 0); using DeviceIndex = int8_t;
// struct Device { DeviceType type_; DeviceIndex index_ = -1; };
struct Device {
  int8_t type_;
  int8_t index_;
};
// c10/core/Allocator.h: class DataPtr { c10::detail::UniqueVoidPtr ptr_; Device device_; };
struct DataPtr {
  UniqueVoidPtr ptr_;
  Device device_;
};
static_assert(sizeof(DataPtr) == 32, "c10::DataPtr is 32 bytes in libtorch 2.10");
// c10/core/Allocator.h (2.10), virtual functions in declaration order (clone, raw_allocate, raw_deallocate and
// default_copy_data are not virtual):
//   virtual ~Allocator() = default;                                 (two vtable slots: complete, deleting)
//   virtual DataPtr allocate(size_t n) = 0;
//   virtual bool is_simple_data_ptr(const DataPtr& data_ptr) const;
//   virtual DeleterFnPtr raw_deleter() const { return nullptr; }
//   virtual void copy_data(void* dest, const void* src, std::size_t count) const = 0;
// (libc10.so 2.10: the vtables of c10::Allocator and c10::DefaultCPUAllocator have exactly these six slots.)
struct Allocator {
  virtual ~Allocator() = default;
  virtual DataPtr allocate(size_t n) = 0;
  virtual bool is_simple_data_ptr(const DataPtr& data_ptr) const = 0;
  virtual DeleterFnPtr raw_deleter() const = 0;
  virtual void copy_data(void* dest, const void* src, size_t count) const = 0;
};
}  // namespace geoshare_abi

namespace {
using namespace geoshare_abi;

constexpr size_t kHeader = 64;  // c10's gAlignment: the data pointer is 64-byte aligned
constexpr size_t kPage = 4096;
constexpr size_t kLargeMin = 128 << 10;  // glibc's mmap threshold as the library tunes it
constexpr int kSubClasses = 8;           // size classes per doubling: at most 12.5% rounding
constexpr int kClasses = 64 * kSubClasses;
constexpr uint64_t kSmallTag = 0x67736d616c6c3031ull;  // "gsmall01"
constexpr uint64_t kLargeTag = 0x67736c6172676531ull;  // "gslarge1"
constexpr uint64_t kDecayNs = 5'000'000'000ull;        // a cached block unused for 5 s is unmapped
constexpr uint64_t kSweepNs = 250'000'000ull;          // how often a call looks for such blocks
// mapped total <= peak in use + max(1/8 of it, 256 MB): a small process keeps its working set of size classes (the 124M
// plan: 2.7 M page faults instead of 3.6 M with resizing alone); from a 2 GB peak on, the 1/8 decides.
constexpr size_t kSlackMin = size_t(256) << 20;

// Sits in the 64 bytes before every data pointer (the start of a large block's mapping, or of a small block).
struct Header {
  uint64_t tag;
  uint64_t bytes;  // mapping length (large) or the request (small)
  uint64_t freed_ns;
  uint32_t cls;
  uint32_t pad;
  Header* lru_prev;  // cached large blocks: oldest first
  Header* lru_next;
  Header* cls_prev;  // cached large blocks of this size class: most recently freed first
  Header* cls_next;
};
static_assert(sizeof(Header) == kHeader, "header must keep the data 64-byte aligned");

struct Stats {  // exported by geoshare_alloc_stats, in this order
  std::atomic<uint64_t> allocations{0}, large_allocations{0}, cache_hits{0}, frees{0}, maps{0}, unmaps{0}, remaps{0};
};

struct State {
  std::mutex mu;
  Header* cls_head[kClasses] = {};
  Header* lru_head = nullptr;
  Header* lru_tail = nullptr;
  uint64_t live = 0, cached = 0, peak_live = 0, last_sweep_ns = 0;
  Stats stats;
};
State& state() {  // never destroyed: tensors are freed during and after static destruction
  static State* s = new State();
  return *s;
}

struct ThreadCounters {  // per thread, for the tests (other test threads allocate at the same time)
  uint64_t allocations, frees, cache_hits, last_data, last_bytes, remaps;
};
thread_local ThreadCounters t_counters;

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

// The size class of a mapping of at least `bytes`: 8 classes per doubling, page multiples.
int class_of(size_t bytes, size_t* class_bytes) {
  size_t b = (bytes + kPage - 1) & ~(kPage - 1);
  int k = 63 - __builtin_clzll(b - 1);  // 2^k < b <= 2^(k+1)
  size_t step = (size_t(1) << k) / kSubClasses;
  if (step < kPage) step = kPage;
  size_t rounded = (b + step - 1) / step * step;
  int sub = int((rounded - (size_t(1) << k) + step - 1) / step) - 1;  // 0 .. kSubClasses-1
  if (sub < 0) sub = 0;
  *class_bytes = rounded;
  return k * kSubClasses + sub;
}

void lru_unlink(State& s, Header* h) {
  (h->lru_prev ? h->lru_prev->lru_next : s.lru_head) = h->lru_next;
  (h->lru_next ? h->lru_next->lru_prev : s.lru_tail) = h->lru_prev;
  h->lru_prev = h->lru_next = nullptr;
}
void cls_unlink(State& s, Header* h) {
  (h->cls_prev ? h->cls_prev->cls_next : s.cls_head[h->cls]) = h->cls_next;
  if (h->cls_next) h->cls_next->cls_prev = h->cls_prev;
  h->cls_prev = h->cls_next = nullptr;
}
// Takes a cached block out of the cache (the caller unmaps it or hands it out).
void uncache(State& s, Header* h) {
  lru_unlink(s, h);
  cls_unlink(s, h);
  s.cached -= h->bytes;
}

// Blocks to unmap once the lock is released.
struct Evicted {
  Header* list = nullptr;
  void add(Header* h) {
    h->lru_next = list;
    list = h;
  }
  void unmap_all(State& s) {
    while (list) {
      Header* h = list;
      list = h->lru_next;
      munmap(h, h->bytes);
      s.stats.unmaps.fetch_add(1, std::memory_order_relaxed);
    }
  }
};

void sweep_locked(State& s, uint64_t now, Evicted& ev) {
  if (now - s.last_sweep_ns < kSweepNs) return;
  s.last_sweep_ns = now;
  while (s.lru_head && now - s.lru_head->freed_ns > kDecayNs) {
    Header* h = s.lru_head;
    uncache(s, h);
    ev.add(h);
  }
}

void Delete(void* data);

void* allocate_large(size_t n) {
  State& s = state();
  size_t class_bytes;
  int cls = class_of(n + kHeader, &class_bytes);
  Evicted ev;
  Header* h = nullptr;
  Header* resize = nullptr;  // a block given up for this request: remapped to its size instead of unmapped
  {
    std::lock_guard<std::mutex> lock(s.mu);
    // This class, or the next one up (at most 1/8 larger).
    for (int c = cls; c <= cls + 1 && c < kClasses && !h; c++)
      if ((h = s.cls_head[c])) uncache(s, h);
    if (h) {
      s.live += h->bytes;
    } else {
      // Keep the mapped total within the peak in use plus the slack: give up the oldest cached blocks first; the
      // largest of them is resized for this request (the most pages kept), the others are unmapped.
      uint64_t peak = s.live + class_bytes > s.peak_live ? s.live + class_bytes : s.peak_live;
      uint64_t slack = peak / 8 > kSlackMin ? peak / 8 : kSlackMin;
      while (s.lru_head && s.live + s.cached + class_bytes > peak + slack) {
        Header* old = s.lru_head;
        uncache(s, old);
        if (!resize) {
          resize = old;
        } else if (old->bytes > resize->bytes) {
          ev.add(resize);
          resize = old;
        } else {
          ev.add(old);
        }
      }
      s.live += class_bytes;
    }
    if (s.live > s.peak_live) s.peak_live = s.live;
    sweep_locked(s, now_ns(), ev);
  }
  ev.unmap_all(s);
  if (h) {
    s.stats.cache_hits.fetch_add(1, std::memory_order_relaxed);
    t_counters.cache_hits++;
  } else {
    void* p = MAP_FAILED;
    if (resize) {
      p = mremap(resize, resize->bytes, class_bytes, MREMAP_MAYMOVE);
      if (p == MAP_FAILED) {
        munmap(resize, resize->bytes);
        s.stats.unmaps.fetch_add(1, std::memory_order_relaxed);
      } else {
        s.stats.remaps.fetch_add(1, std::memory_order_relaxed);
        t_counters.remaps++;
      }
    }
    if (p == MAP_FAILED) {
      p = mmap(nullptr, class_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p != MAP_FAILED) s.stats.maps.fetch_add(1, std::memory_order_relaxed);
    }
    if (p == MAP_FAILED) {
      std::lock_guard<std::mutex> lock(s.mu);
      s.live -= class_bytes;
      return nullptr;
    }
    h = static_cast<Header*>(p);
    h->tag = kLargeTag;
    h->bytes = class_bytes;
    h->cls = uint32_t(cls);
  }
  h->lru_prev = h->lru_next = h->cls_prev = h->cls_next = nullptr;
  s.stats.large_allocations.fetch_add(1, std::memory_order_relaxed);
  return reinterpret_cast<char*>(h) + kHeader;
}

void free_large(Header* h) {
  State& s = state();
  Evicted ev;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    uint64_t now = now_ns();
    s.live -= h->bytes;
    h->freed_ns = now;
    h->lru_prev = s.lru_tail;
    h->lru_next = nullptr;
    (s.lru_tail ? s.lru_tail->lru_next : s.lru_head) = h;
    s.lru_tail = h;
    h->cls_prev = nullptr;
    h->cls_next = s.cls_head[h->cls];
    if (h->cls_next) h->cls_next->cls_prev = h;
    s.cls_head[h->cls] = h;
    s.cached += h->bytes;
    sweep_locked(s, now, ev);
  }
  ev.unmap_all(s);
}

void* Allocate(size_t n) {
  State& s = state();
  s.stats.allocations.fetch_add(1, std::memory_order_relaxed);
  void* data;
  if (n + kHeader >= kLargeMin) {
    data = allocate_large(n);
  } else {
    void* base = nullptr;
    if (posix_memalign(&base, kHeader, n + kHeader) != 0) return nullptr;
    Header* h = static_cast<Header*>(base);
    h->tag = kSmallTag;
    h->bytes = n;
    data = static_cast<char*>(base) + kHeader;
  }
  if (data) {
    t_counters.allocations++;
    t_counters.last_data = reinterpret_cast<uint64_t>(data);
    t_counters.last_bytes = n;
  }
  return data;
}

void Delete(void* data) {
  if (!data) return;
  Header* h = reinterpret_cast<Header*>(static_cast<char*>(data) - kHeader);
  state().stats.frees.fetch_add(1, std::memory_order_relaxed);
  t_counters.frees++;
  if (h->tag == kLargeTag) {
    free_large(h);
  } else if (h->tag == kSmallTag) {
    h->tag = 0;
    free(h);
  } else {
    abort();  // not a block of this allocator: memory corruption or a foreign pointer
  }
}

struct CachingCpuAllocator final : Allocator {
  DataPtr allocate(size_t n) override {
    void* data = n == 0 ? nullptr : Allocate(n);
    if (n != 0 && !data) throw std::bad_alloc();  // c10 reports out-of-memory by throwing too
    return DataPtr{UniqueVoidPtr{data, std::unique_ptr<void, DeleterFnPtr>(data, &Delete)}, Device{0, -1}};
  }
  bool is_simple_data_ptr(const DataPtr& d) const override { return d.ptr_.data_ == d.ptr_.ctx_.get(); }
  DeleterFnPtr raw_deleter() const override { return &Delete; }
  void copy_data(void* dest, const void* src, size_t count) const override { memcpy(dest, src, count); }
};

CachingCpuAllocator* g_allocator = nullptr;
std::atomic<int> g_installed{0};

// The bytes of a DataPtr, read without its declarations (to check them against libc10's own allocator).
struct RawDataPtr {
  void* data;
  void* deleter;
  void* ctx;
  int8_t type, index;
};
}  // namespace

// Installs the caching allocator as libtorch's CPU allocator. libc10 is the path of libc10.so to load when it is
// not loaded yet (null: only an already loaded one). Returns 0 when installed (or already installed), else:
// 1 libc10.so not loaded and not loadable, 2 a symbol missing, 3 libc10's allocator does not match the declarations
// above (another libtorch version), 4 libc10 did not take it (an allocator of higher priority is set).
GS_EXPORT int geoshare_alloc_install(const char* libc10, int priority) {
  if (g_installed.load()) return 0;
  void* lib = dlopen("libc10.so", RTLD_NOW | RTLD_NOLOAD);
  if (!lib && libc10) lib = dlopen(libc10, RTLD_NOW);
  if (!lib) return 1;
  using SetFn = void (*)(void*, uint8_t);
  using GetFn = void* (*)();
  auto set = reinterpret_cast<SetFn>(dlsym(lib, "_ZN3c1015SetCPUAllocatorEPNS_9AllocatorEh"));
  auto get = reinterpret_cast<GetFn>(dlsym(lib, "_ZN3c1015GetCPUAllocatorEv"));
  if (!set || !get) return 2;
  // ABI check: allocate through libc10's current CPU allocator with these declarations. Its DataPtr must read back
  // as (data, data as context, a deleter that equals its raw_deleter(), CPU device, index -1).
  {
    auto* current = static_cast<Allocator*>(get());
    if (!current) return 3;
    DataPtr d = current->allocate(4096);
    RawDataPtr raw;
    memcpy(&raw, &d, sizeof raw);
    bool ok = d.ptr_.data_ != nullptr && raw.data == d.ptr_.data_ && raw.ctx == d.ptr_.data_ &&
              d.ptr_.ctx_.get() == d.ptr_.data_ && raw.deleter != nullptr &&
              raw.deleter == reinterpret_cast<void*>(current->raw_deleter()) && raw.type == 0 && raw.index == -1 &&
              (reinterpret_cast<uintptr_t>(d.ptr_.data_) & 63) == 0;
    if (!ok) {
      (void)d.ptr_.ctx_.release();  // do not call a deleter read from a layout we could not confirm
      return 3;
    }
  }
  if (!g_allocator) g_allocator = new CachingCpuAllocator();
  set(g_allocator, uint8_t(priority));
  if (get() != g_allocator) return 4;
  g_installed.store(1);
  return 0;
}

GS_EXPORT int geoshare_alloc_installed() { return g_installed.load(); }

// Process-wide figures: allocations, large allocations, cache hits, frees, mappings made, mappings returned,
// bytes in use (large), bytes cached, peak bytes in use (large), blocks given up and resized for another class.
// Returns how many were written.
GS_EXPORT int geoshare_alloc_stats(uint64_t* out, int n) {
  State& s = state();
  uint64_t v[10] = {s.stats.allocations.load(), s.stats.large_allocations.load(), s.stats.cache_hits.load(),
                    s.stats.frees.load(), s.stats.maps.load(), s.stats.unmaps.load(), 0, 0, 0, s.stats.remaps.load()};
  {
    std::lock_guard<std::mutex> lock(s.mu);
    v[6] = s.live;
    v[7] = s.cached;
    v[8] = s.peak_live;
  }
  int k = n < 10 ? n : 10;
  for (int i = 0; i < k; i++) out[i] = v[i];
  return k;
}

// The calling thread's figures: allocations, frees, cache hits, the last data pointer handed out and its size.
GS_EXPORT int geoshare_alloc_thread_stats(uint64_t* out, int n) {
  uint64_t v[6] = {t_counters.allocations, t_counters.frees, t_counters.cache_hits, t_counters.last_data,
                   t_counters.last_bytes, t_counters.remaps};
  int k = n < 6 ? n : 6;
  for (int i = 0; i < k; i++) out[i] = v[i];
  return k;
}

// Unmaps every cached block now (the blocks in use stay). Returns the bytes released.
GS_EXPORT uint64_t geoshare_alloc_release_cache() {
  State& s = state();
  Evicted ev;
  uint64_t released;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    released = s.cached;
    while (s.lru_head) {
      Header* h = s.lru_head;
      uncache(s, h);
      ev.add(h);
    }
  }
  ev.unmap_all(s);
  return released;
}
