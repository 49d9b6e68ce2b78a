// Text normalisation for entity linking, with a map back to character offsets of the original text.
//
// The tables come from Python's unicodedata (kvi_engine/graph/normalize.py builds them; that file is also the
// definition): per source code point, fold = casefold(NFKC(c)) with punctuation, separators and controls mapped
// to a space and format characters (zero-width, soft hyphen, BOM) removed; a base followed by combining marks is
// first composed canonically (so "e" + U+0301 equals "é"). Runs of spaces collapse to one; leading spaces drop.
// Each output code point keeps the [begin, end) code-point range of the source characters it came from.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvi/graph.h"

namespace kvi {

enum CharClass : uint8_t { kSpace = 0, kWord = 1, kStandalone = 2, kOther = 3 };
constexpr uint8_t kClassMask = 3;
constexpr uint8_t kCombining = 4;  // source character is a combining mark (Unicode category M*)
constexpr uint32_t kNumCodePoints = 0x110000;
constexpr uint32_t kMulti = 0x80000000u;  // fold entry is an index into the expansion pool

struct Normalized {
    std::vector<uint32_t> cp;
    std::vector<int64_t> begin, end;
    void clear() { cp.clear(); begin.clear(); end.clear(); }
    size_t size() const { return cp.size(); }
};

// Strict UTF-8 decoding, except that surrogate code points are accepted: Python strings may hold lone
// surrogates and cross as 'surrogatepass' bytes, and offsets must count them as one character each.
inline void decode_utf8(std::string_view s, std::vector<uint32_t>& out) {
    out.clear();
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        uint32_t b = p[i], cp;
        size_t len;
        if (b < 0x80) { out.push_back(b); ++i; continue; }
        if ((b >> 5) == 6) len = 2, cp = b & 0x1f;
        else if ((b >> 4) == 14) len = 3, cp = b & 0x0f;
        else if ((b >> 3) == 30) len = 4, cp = b & 0x07;
        else fail("invalid UTF-8 lead byte at offset " + std::to_string(i));
        if (i + len > n) fail("truncated UTF-8 sequence at offset " + std::to_string(i));
        for (size_t k = 1; k < len; ++k) {
            if ((p[i + k] >> 6) != 2) fail("invalid UTF-8 continuation byte at offset " + std::to_string(i + k));
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[len] || cp >= kNumCodePoints) fail("invalid UTF-8 code point at offset " + std::to_string(i));
        out.push_back(cp);
        i += len;
    }
}

class Normalizer {
  public:
    Normalizer(std::vector<uint32_t> fold, std::vector<uint8_t> cls, std::vector<uint32_t> pool,
               std::vector<int64_t> pool_indptr, const uint64_t* comp_keys, const uint32_t* comp_vals, size_t num_comp)
        : fold_(std::move(fold)), cls_(std::move(cls)), pool_(std::move(pool)), pool_indptr_(std::move(pool_indptr)) {
        if (fold_.size() != kNumCodePoints || cls_.size() != kNumCodePoints)
            fail("normalizer: fold and class tables must have 0x110000 entries");
        if (pool_indptr_.empty() || pool_indptr_.front() != 0 || pool_indptr_.back() != static_cast<int64_t>(pool_.size()))
            fail("normalizer: pool_indptr must run from 0 to len(pool)");
        for (size_t i = 0; i + 1 < pool_indptr_.size(); ++i)
            if (pool_indptr_[i + 1] < pool_indptr_[i]) fail("normalizer: pool_indptr is not monotone");
        for (uint32_t c : pool_) if (c >= kNumCodePoints) fail("normalizer: pool holds an invalid code point");
        const size_t num_multi = pool_indptr_.size() - 1;
        for (uint32_t f : fold_) {
            if ((f & kMulti) ? (f & ~kMulti) >= num_multi : f >= kNumCodePoints)
                fail("normalizer: fold table entry out of range");
        }
        for (uint8_t c : cls_) if (c & ~(kClassMask | kCombining)) fail("normalizer: class table entry out of range");
        if (char_class(' ') != kSpace) fail("normalizer: ' ' must be a space");
        compose_.reserve(num_comp);
        for (size_t i = 0; i < num_comp; ++i) {
            if (comp_vals[i] >= kNumCodePoints) fail("normalizer: composition value out of range");
            compose_.emplace(comp_keys[i], comp_vals[i]);
        }
    }

    uint8_t char_class(uint32_t cp) const { return cls_[cp] & kClassMask; }
    bool is_word(uint32_t cp) const { return char_class(cp) == kWord; }

    // A match may start or end at i only where it does not split a run of word characters.
    bool boundary(const Normalized& t, size_t i) const {
        return i == 0 || i >= t.size() || !(is_word(t.cp[i - 1]) && is_word(t.cp[i]));
    }

    void normalize(std::string_view utf8, Normalized& out, std::vector<uint32_t>& scratch) const {
        decode_utf8(utf8, scratch);
        out.clear();
        const size_t n = scratch.size();
        for (size_t i = 0; i < n;) {
            uint32_t c = scratch[i];
            size_t j = i + 1;
            while (j < n && (cls_[scratch[j]] & kCombining)) {
                auto it = compose_.find((uint64_t{c} << 21) | scratch[j]);
                if (it == compose_.end()) break;
                c = it->second;
                ++j;
            }
            const uint32_t f = fold_[c];
            if (f & kMulti) {
                const uint32_t k = f & ~kMulti;
                for (int64_t q = pool_indptr_[k]; q < pool_indptr_[k + 1]; ++q) push(out, pool_[q], i, j);
            } else {
                push(out, f, i, j);
            }
            i = j;
        }
    }

    // Names: normalised like text, without a trailing space.
    void normalize_name(std::string_view utf8, Normalized& out, std::vector<uint32_t>& scratch) const {
        normalize(utf8, out, scratch);
        if (!out.cp.empty() && out.cp.back() == ' ') out.cp.pop_back(), out.begin.pop_back(), out.end.pop_back();
    }

  private:
    void push(Normalized& out, uint32_t cp, size_t b, size_t e) const {
        if (char_class(cp) == kSpace) {
            if (out.cp.empty() || out.cp.back() == ' ') return;
            cp = ' ';
        }
        out.cp.push_back(cp);
        out.begin.push_back(static_cast<int64_t>(b));
        out.end.push_back(static_cast<int64_t>(e));
    }

    std::vector<uint32_t> fold_;
    std::vector<uint8_t> cls_;
    std::vector<uint32_t> pool_;
    std::vector<int64_t> pool_indptr_;
    std::unordered_map<uint64_t, uint32_t> compose_;
};

}  // namespace kvi
