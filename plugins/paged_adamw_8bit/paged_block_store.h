// Host-memory pages holding the 8-bit optimizer state, and the page table
// that says where each parameter's 256-element blocks live.
//
// defines: mftk::paged_adamw_8bit::BlockRecord, mftk::paged_adamw_8bit::BlockSpan,
//          mftk::paged_adamw_8bit::PagedBlockStore
//
// The state of one 256-element block is a record: 256 codes of m (signed
// map), 256 codes of v (unsigned map), absmax of m, absmax of v = 520 bytes.
// A page of page_size bytes holds floor(page_size / 520) records, laid out
// as four arrays (codes m | codes v | absmax m | absmax v) so each stays
// contiguous. Parameters take consecutive record slots, crossing page
// boundaries freely; only the last page is trimmed to what it holds.
//
// Paging on CPU is this layout and nothing more: the pages are host memory
// already. A CUDA build would keep the pages in pinned host memory and copy a
// parameter's pages to the device for its update when device memory is short
// (bitsandbytes uses CUDA unified memory for the same effect, FORMATS §7.4).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace mftk::paged_adamw_8bit {

constexpr int64_t kBlockSize = 256;
constexpr int64_t kRecordBytes = 2 * kBlockSize + 2 * static_cast<int64_t>(sizeof(float));

// Pointers to one block's state inside its page.
struct BlockRecord {
  uint8_t* codes_m;
  uint8_t* codes_v;
  float* absmax_m;
  float* absmax_v;
};

// Consecutive records of one range that share a page, as tensor views into
// that page: what the device-generic update reads and writes (no pointers).
struct BlockSpan {
  int64_t first_block = 0;  // within the range
  int64_t count = 0;        // records
  at::Tensor codes_m;       // uint8 [count, 256]
  at::Tensor codes_v;       // uint8 [count, 256]
  at::Tensor absmax_m;      // float32 [count]
  at::Tensor absmax_v;      // float32 [count]
};

class PagedBlockStore {
 public:
  PagedBlockStore() = default;
  // One range per 8-bit parameter, `blocks[r]` records long. With
  // page_size > 0 ranges share pages of that many bytes; with page_size == 0
  // every range gets one allocation of its own (the unpaged optimizer).
  // Everything starts at zero, like bitsandbytes' fresh state.
  PagedBlockStore(const std::vector<int64_t>& blocks, int64_t page_size);

  BlockRecord record(size_t range, int64_t block) const {
    const Range& r = ranges_[range];
    const int64_t slot = r.first_slot + block;
    const Page& page = pages_[static_cast<size_t>(r.first_page + slot / r.slots_per_page)];
    const int64_t s = slot % r.slots_per_page;
    uint8_t* base = page.base;
    const int64_t cap = page.capacity;
    float* absmax = reinterpret_cast<float*>(base + 2 * cap * kBlockSize);
    return {base + s * kBlockSize, base + (cap + s) * kBlockSize, absmax + s, absmax + cap + s};
  }

  // The records of `range` as views, page by page, in block order.
  std::vector<BlockSpan> spans(size_t range) const;

  int64_t page_count() const { return static_cast<int64_t>(pages_.size()); }
  // Bytes allocated for all pages.
  int64_t bytes() const { return bytes_; }
  // The page index each record of `range` lives on, in block order (tests).
  std::vector<int64_t> pages_of(size_t range) const;

 private:
  struct Page {
    at::Tensor storage;  // uint8, keeps the memory
    uint8_t* base = nullptr;
    int64_t capacity = 0;  // records
  };
  struct Range {
    int64_t first_page = 0;
    int64_t first_slot = 0;  // slot in first_page
    int64_t slots_per_page = 1;
    int64_t blocks = 0;
  };
  void add_page(int64_t capacity);

  std::vector<Page> pages_;
  std::vector<Range> ranges_;
  int64_t bytes_ = 0;
};

}  // namespace mftk::paged_adamw_8bit
