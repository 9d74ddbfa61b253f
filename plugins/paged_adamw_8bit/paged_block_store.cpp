#include "paged_block_store.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "mftk/error.h"

namespace mftk::paged_adamw_8bit {

PagedBlockStore::PagedBlockStore(const std::vector<int64_t>& blocks, int64_t page_size) {
  if (page_size < 0) throw Error(fmt::format("page_size must be >= 0, got {}", page_size));
  if (page_size == 0) {
    for (int64_t n : blocks) {
      ranges_.push_back({static_cast<int64_t>(pages_.size()), 0, std::max<int64_t>(n, 1), n});
      if (n > 0) add_page(n);
    }
    return;
  }
  const int64_t per_page = page_size / kRecordBytes;
  if (per_page < 1)
    throw Error(fmt::format("page_size {} bytes cannot hold one 256-element block ({} bytes)", page_size,
                            kRecordBytes));
  int64_t total = 0;
  for (int64_t n : blocks) {
    ranges_.push_back({total / per_page, total % per_page, per_page, n});
    total += n;
  }
  for (int64_t done = 0; done < total; done += per_page) add_page(std::min(per_page, total - done));
}

void PagedBlockStore::add_page(int64_t capacity) {
  Page page;
  page.capacity = capacity;
  page.storage = at::zeros({capacity * kRecordBytes}, at::kByte);
  page.base = page.storage.data_ptr<uint8_t>();
  bytes_ += capacity * kRecordBytes;
  pages_.push_back(std::move(page));
}

std::vector<BlockSpan> PagedBlockStore::spans(size_t range) const {
  const Range& r = ranges_.at(range);
  std::vector<BlockSpan> out;
  for (int64_t b = 0; b < r.blocks;) {
    const int64_t slot = r.first_slot + b;
    const Page& page = pages_[static_cast<size_t>(r.first_page + slot / r.slots_per_page)];
    const int64_t s = slot % r.slots_per_page, cap = page.capacity;
    const int64_t count = std::min(r.blocks - b, cap - s);
    // The page's four arrays, as record() lays them out; the absmax arrays
    // start at a multiple of 4 bytes, so they view as float32.
    BlockSpan span;
    span.first_block = b;
    span.count = count;
    span.codes_m = page.storage.narrow(0, s * kBlockSize, count * kBlockSize).view({count, kBlockSize});
    span.codes_v = page.storage.narrow(0, (cap + s) * kBlockSize, count * kBlockSize).view({count, kBlockSize});
    const int64_t absmax_bytes = 2 * cap * kBlockSize;
    span.absmax_m = page.storage.narrow(0, absmax_bytes + 4 * s, 4 * count).view(at::kFloat);
    span.absmax_v = page.storage.narrow(0, absmax_bytes + 4 * (cap + s), 4 * count).view(at::kFloat);
    out.push_back(std::move(span));
    b += count;
  }
  return out;
}

std::vector<int64_t> PagedBlockStore::pages_of(size_t range) const {
  const Range& r = ranges_.at(range);
  std::vector<int64_t> out;
  for (int64_t b = 0; b < r.blocks; ++b) out.push_back(r.first_page + (r.first_slot + b) / r.slots_per_page);
  return out;
}

}  // namespace mftk::paged_adamw_8bit
