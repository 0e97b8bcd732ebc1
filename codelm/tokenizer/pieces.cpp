// codelm's piece encoder in C++: the code pre-tokenizer (pretokenize.PATTERN) written out
// by hand, plus a cache of piece -> token ids. BPE itself stays in HF `tokenizers`: Python
// asks HF for the ids of the pieces this cache has not seen and hands them back here.
//
// Why: in Python the regex cut (28 MB/s), the cache lookups and the joining of ids cost
// 0.4 s of CPU per 6 MB of code; here about 0.05 s (measured with bench/tokenizer.py's
// files). A plain C ABI, loaded with ctypes: no Python or torch headers.
//
// The cut must equal Python's `re` on PATTERN for every string: tests compare the two on
// the standard library and with hypothesis. Text arrives as UTF-8 ("surrogatepass", so a
// lone surrogate is three bytes ED A0..BF xx). Every non-ASCII code point is a word
// character in PATTERN, so identifiers can be scanned byte by byte: each byte of a
// non-ASCII character is >= 0x80.
//
// Not thread-safe: the Python side holds a lock around every call.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using u8 = uint8_t;

// Character classes of PATTERN, one bit each, looked up per byte.
enum : uint16_t {
  kWord = 1,        // A-Za-z_ and every byte of a non-ASCII character
  kDigit = 2,       // 0-9
  kHex = 4,         // 0-9A-Fa-f
  kRun = 8,         // ()[]{},;'"` (`.` and `:` join runs with conditions)
  kRuler = 16,      // -=*#~+^<>/!. (symbols whose long runs are rulers)
  kSpace = 32,      // ASCII whitespace
  kPrefix = 64,     // bBrRfFuU: a string prefix's first letter
  kPrefix2 = 128,   // bBrRfF: its optional second letter
};

struct Classes {
  uint16_t of[256] = {};
  void set(const char* chars, uint16_t bit) {
    for (; *chars; chars++) of[(u8)*chars] |= bit;
  }
  Classes() {
    for (int c = 0; c < 256; c++) {
      if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c >= 0x80) of[c] |= kWord;
      if (c >= '0' && c <= '9') of[c] |= kDigit | kHex;
      if ((c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f')) of[c] |= kHex;
    }
    set("()[]{},;'\"`", kRun);
    set("-=*#~+^<>/!.", kRuler);
    set(" \t\n\r\x0b\x0c", kSpace);
    set("bBrRfFuU", kPrefix);
    set("bBrRfF", kPrefix2);
  }
};

const Classes kClasses;

inline bool is(u8 c, uint16_t bits) { return kClasses.of[c] & bits; }
inline bool word(u8 c) { return is(c, kWord); }
inline bool digit(u8 c) { return is(c, kDigit); }
inline bool hex(u8 c) { return is(c, kHex); }
inline bool quote(u8 c) { return c == '\'' || c == '"'; }
inline bool blank(u8 c) { return c == ' ' || c == '\t'; }

// Bytes in the UTF-8 character that starts with `c` (input is well formed).
inline size_t char_len(u8 c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

struct Text {
  const u8* s;
  size_t n;
  u8 at(size_t i) const { return i < n ? s[i] : 0; }  // 0 past the end: matches no rule
};

// _NAME: an identifier, then `.identifier` while one follows. Returns i when none starts here.
size_t name(const Text& t, size_t i) {
  if (!word(t.at(i))) return i;
  size_t j = i + 1;
  for (;;) {
    while (word(t.at(j)) || digit(t.at(j))) j++;
    if (t.at(j) != '.' || !word(t.at(j + 1))) return j;
    j += 2;
  }
}

// `quote NAME` at i; returns i when it does not match.
size_t quoted_name(const Text& t, size_t i) {
  if (!quote(t.at(i))) return i;
  size_t j = name(t, i + 1);
  return j > i + 1 ? j : i;
}

// _PREFIX quote NAME: `b'utf`, `rb"x`.
size_t prefixed(const Text& t, size_t i) {
  if (!is(t.at(i), kPrefix)) return i;
  size_t j = i + 1;
  if (is(t.at(j), kPrefix2)) j++;  // the optional second letter: never a quote, so no backtracking
  size_t k = quoted_name(t, j);
  return k > j ? k : i;
}

// `# ?NAME`.
size_t comment(const Text& t, size_t i) {
  if (t.at(i) != '#') return i;
  if (t.at(i + 1) == ' ') {
    size_t j = name(t, i + 2);
    if (j > i + 2) return j;
  }
  size_t j = name(t, i + 1);
  return j > i + 1 ? j : i;
}

// _ESCAPE.
size_t escape(const Text& t, size_t i) {
  if (t.at(i) != '\\' || i + 1 >= t.n) return i;
  u8 c = t.at(i + 1);
  if (c >= '0' && c <= '7') {
    size_t j = i + 2;
    while (j < i + 4 && t.at(j) >= '0' && t.at(j) <= '7') j++;
    return j;
  }
  if (c == 'x' && hex(t.at(i + 2)) && hex(t.at(i + 3))) return i + 4;
  if (c == 'u' && hex(t.at(i + 2)) && hex(t.at(i + 3)) && hex(t.at(i + 4)) && hex(t.at(i + 5)))
    return i + 6;
  if (c == '\n' || c == '\r') return i;
  return i + 1 + char_len(c);
}

// `\n(?:\r?\n)*[ \t]*` and `\r\n(?:\r?\n)*[ \t]*`.
size_t newline(const Text& t, size_t i) {
  size_t j;
  if (t.at(i) == '\n') j = i + 1;
  else if (t.at(i) == '\r' && t.at(i + 1) == '\n') j = i + 2;
  else return i;
  for (;;) {
    if (t.at(j) == '\n') j++;
    else if (t.at(j) == '\r' && t.at(j + 1) == '\n') j += 2;
    else break;
  }
  while (blank(t.at(j))) j++;
  return j;
}

// _RUN: brackets and delimiters, `.` not before `..`, `:` not before `=`.
size_t run(const Text& t, size_t i) {
  size_t j = i;
  for (;;) {
    u8 c = t.at(j);
    if (is(c, kRun)) j++;
    else if (c == '.' && !(t.at(j + 1) == '.' && t.at(j + 2) == '.')) j++;
    else if (c == ':' && t.at(j + 1) != '=') j++;
    else return j;
  }
}

// _RULERS: three or more of one symbol (four or more dots).
size_t ruler(const Text& t, size_t i) {
  u8 c = t.at(i);
  if (!is(c, kRuler)) return i;
  size_t j = i + 1;
  while (t.at(j) == c) j++;
  return j - i >= (c == '.' ? 4u : 3u) ? j : i;
}

// _OPS, longest first (pretokenize.OPERATORS).
const char* const kOps3[] = {"**=", "//=", ">>=", "<<=", "...", "!=="};
const char* const kOps2[] = {"->", ":=", "==", "!=", "<=", ">=", "**", "//", "<<", ">>",
                             "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=", "&&",
                             "||", "++", "--", "=>"};

size_t op(const Text& t, size_t i) {
  u8 a = t.at(i), b = t.at(i + 1), c = t.at(i + 2);
  for (const char* o : kOps3)
    if (a == (u8)o[0] && b == (u8)o[1] && c == (u8)o[2]) return i + 3;
  for (const char* o : kOps2)
    if (a == (u8)o[0] && b == (u8)o[1]) return i + 2;
  return i;
}

size_t digits(const Text& t, size_t i) {
  size_t j = i;
  while (j < i + 3 && digit(t.at(j))) j++;
  return j;
}

// _SYMBOL: one character that is not a word character, digit or ASCII whitespace.
size_t symbol(const Text& t, size_t i) {
  if (i >= t.n) return i;
  u8 c = t.at(i);
  return is(c, kWord | kDigit | kSpace) ? i : i + 1;
}

// PATTERN's alternatives that may follow one space, tried in PATTERN's order; after a space
// the `.NAME`, escape and newline rules do not apply (they have no spaced form).
size_t body(const Text& t, size_t i, bool spaced) {
  size_t j;
  if ((j = prefixed(t, i)) > i) return j;
  if ((j = name(t, i)) > i) return j;
  if ((j = quoted_name(t, i)) > i) return j;
  if (!spaced && t.at(i) == '.' && (j = name(t, i + 1)) > i + 1) return j;
  if ((j = comment(t, i)) > i) return j;
  if (!spaced) {
    if ((j = escape(t, i)) > i) return j;
    if ((j = newline(t, i)) > i) return j;
  }
  if ((j = run(t, i)) > i) return j;
  if ((j = ruler(t, i)) > i) return j;
  if ((j = op(t, i)) > i) return j;
  if ((j = digits(t, i)) > i) return j;
  return symbol(t, i);
}

// The end of the piece that starts at i (< t.n).
size_t piece_end(const Text& t, size_t i) {
  u8 c = t.s[i];
  if (i == 0 && blank(c)) {  // \A[ \t]+
    size_t j = 1;
    while (blank(t.at(j))) j++;
    return j;
  }
  size_t j = c == ' ' ? body(t, i + 1, true) : body(t, i, false);
  if (c == ' ' && j > i + 1) return j;
  if (c != ' ' && j > i) return j;
  if (blank(c)) {  // [ \t]+
    j = i + 1;
    while (blank(t.at(j))) j++;
    return j;
  }
  return i + char_len(c);  // [\s\S]
}

// ---- the piece cache -------------------------------------------------------------------

uint64_t hash_bytes(const u8* p, size_t n) {  // multiply-xorshift, 8 bytes at a time
  uint64_t h = n * 0x9E3779B97F4A7C15ull;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  uint64_t w = 0;
  for (size_t i = 0; i < n; i++) w |= (uint64_t)p[i] << (8 * i);
  h = (h ^ w) * 0x94D049BB133111EBull;
  return h ^ (h >> 29);
}

struct Entry {
  uint64_t hash;
  uint64_t key;   // offset of the piece's bytes in keys
  uint32_t size;  // its length in bytes
  int32_t ids;    // offset of its ids in Encoder::ids; -1 until learned
  uint32_t count; // how many ids
};

// byte -> its character in GPT-2's byte-level alphabet, UTF-8 encoded (pretokenize.BYTE_TO_CHAR)
struct ByteLevel {
  char utf8[256][2];
  u8 len[256];
  ByteLevel() {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      int cp = printable ? b : 256 + extra++;
      if (cp < 0x80) {
        utf8[b][0] = (char)cp;
        len[b] = 1;
      } else {
        utf8[b][0] = (char)(0xC0 | (cp >> 6));
        utf8[b][1] = (char)(0x80 | (cp & 0x3F));
        len[b] = 2;
      }
    }
  }
};

const ByteLevel kByteLevel;

struct Encoder {
  std::vector<Entry> entries;  // the cached pieces; an entry's index never changes
  std::vector<uint32_t> table; // open addressing: entry index + 1, or 0 for an empty slot
  std::string keys;            // the cached pieces' bytes, back to back
  std::vector<int32_t> ids;    // the cached pieces' ids, back to back
  std::vector<uint32_t> cut;   // the last scan: entry of each piece, in order
  std::vector<uint64_t> text_pieces;  // the last scan: where each text's pieces end in `cut`
  std::vector<uint32_t> fresh;        // the last scan: entries not learned yet
  std::string fresh_text;             // their byte-level spelling, separated by one space
  std::vector<size_t> fresh_start;    // where each starts in fresh_text
  std::vector<int32_t> token_size;    // token id -> bytes it stands for

  Encoder() { table.resize(1 << 12); }

  void clear() {
    std::fill(table.begin(), table.end(), 0);
    entries.clear();
    keys.clear();
    ids.clear();
    cut.clear();
    text_pieces.clear();
    fresh.clear();
    fresh_start.clear();
    fresh_text.clear();
  }

  void insert(uint32_t index) {
    size_t mask = table.size() - 1, k = entries[index].hash & mask;
    while (table[k] != 0) k = (k + 1) & mask;
    table[k] = index + 1;
  }

  // The entry of a piece, added (not learned yet) when new.
  uint32_t find(const u8* p, size_t n) {
    uint64_t h = hash_bytes(p, n);
    size_t mask = table.size() - 1;
    for (size_t k = h & mask; table[k] != 0; k = (k + 1) & mask) {
      const Entry& e = entries[table[k] - 1];
      if (e.hash == h && e.size == n && std::memcmp(keys.data() + e.key, p, n) == 0) return table[k] - 1;
    }
    entries.push_back(Entry{h, keys.size(), (uint32_t)n, -1, 0});
    keys.append((const char*)p, n);
    if (2 * entries.size() > table.size()) {  // keep the table at most half full
      table.assign(table.size() * 2, 0);
      for (uint32_t i = 0; i < entries.size(); i++) insert(i);
    } else {
      insert((uint32_t)entries.size() - 1);
    }
    return (uint32_t)entries.size() - 1;
  }

  // Queue entry i for BPE: its byte-level spelling goes to fresh_text.
  void queue(uint32_t i) {
    Entry& e = entries[i];
    const u8* p = (const u8*)keys.data() + e.key;
    if (!fresh.empty()) fresh_text.push_back(' ');
    fresh_start.push_back(fresh_text.size());
    for (size_t j = 0; j < e.size; j++) {
      u8 b = p[j];
      // a lone surrogate (ED A0..BF xx) counts as U+FFFD (EF BF BD), as in to_byte_level
      if (b == 0xED && j + 2 < e.size && p[j + 1] >= 0xA0) {
        for (u8 r : {0xEF, 0xBF, 0xBD}) fresh_text.append(kByteLevel.utf8[r], kByteLevel.len[r]);
        j += 2;
        continue;
      }
      fresh_text.append(kByteLevel.utf8[b], kByteLevel.len[b]);
    }
    fresh.push_back(i);
    e.ids = -2;  // queued: not queued twice in one scan
  }
};

}  // namespace

extern "C" {

void* pieces_new() { return new Encoder(); }
void pieces_free(void* h) { delete static_cast<Encoder*>(h); }
int64_t pieces_cached(void* h) { return (int64_t) static_cast<Encoder*>(h)->entries.size(); }
void pieces_clear(void* h) { static_cast<Encoder*>(h)->clear(); }

// Cut texts 0..n-1 (text i is buf[off[i]:off[i+1]]) into pieces and queue the ones never
// learned. Returns how many were queued; `pieces_fresh` gives their byte-level text.
int64_t pieces_scan(void* h, const char* buf, const int64_t* off, int64_t n) {
  Encoder& e = *static_cast<Encoder*>(h);
  for (uint32_t i : e.fresh)  // queued by an earlier scan that was never learned
    if (e.entries[i].ids == -2) e.entries[i].ids = -1;
  e.cut.clear();
  e.text_pieces.clear();
  e.fresh.clear();
  e.fresh_start.clear();
  e.fresh_text.clear();
  for (int64_t t = 0; t < n; t++) {
    Text text{(const u8*)buf + off[t], (size_t)(off[t + 1] - off[t])};
    for (size_t i = 0; i < text.n;) {
      size_t j = piece_end(text, i);
      uint32_t k = e.find(text.s + i, j - i);
      if (e.entries[k].ids == -1) e.queue(k);
      e.cut.push_back(k);
      i = j;
    }
    e.text_pieces.push_back(e.cut.size());
  }
  return (int64_t)e.fresh.size();
}

// The byte-level text of the queued pieces first..last-1, separated by spaces.
const char* pieces_fresh(void* h, int64_t first, int64_t last, int64_t* size) {
  Encoder& e = *static_cast<Encoder*>(h);
  int64_t n = (int64_t)e.fresh.size();
  if (first < 0 || last > n || first >= last) {
    *size = 0;
    return e.fresh_text.data();
  }
  size_t end = last < n ? e.fresh_start[last] - 1 : e.fresh_text.size();
  *size = (int64_t)(end - e.fresh_start[first]);
  return e.fresh_text.data() + e.fresh_start[first];
}

// Bytes each token id stands for (the length of its byte-level spelling); set once.
void pieces_set_lengths(void* h, const int32_t* lengths, int64_t n) {
  static_cast<Encoder*>(h)->token_size.assign(lengths, lengths + n);
}

// Learn the ids of the queued pieces first, first+1, ...: ids[0..m) are their BPE tokens back
// to back, which split between pieces where the tokens' bytes add up to a piece's size (BPE
// never merges across pieces). Returns the pieces learned, or -1 if the ids do not fit.
int64_t pieces_learn(void* h, int64_t first, const int32_t* ids, int64_t m) {
  Encoder& e = *static_cast<Encoder*>(h);
  int64_t piece = first, k = 0;
  while (k < m) {
    if (piece >= (int64_t)e.fresh.size()) return -1;
    Entry& entry = e.entries[e.fresh[piece++]];
    if (entry.ids != -2) return -1;
    int64_t start = k, bytes = 0;
    while (bytes < entry.size && k < m) {
      if (ids[k] < 0 || ids[k] >= (int64_t)e.token_size.size() || e.token_size[ids[k]] == 0) return -1;
      bytes += e.token_size[ids[k++]];
    }
    if (bytes != entry.size) return -1;
    entry.ids = (int32_t)e.ids.size();
    entry.count = (uint32_t)(k - start);
    e.ids.insert(e.ids.end(), ids + start, ids + k);
  }
  return piece - first;
}

// The ids of the last scan's texts, back to back, into out (size: pieces_total); ends[t] is
// where text t's ids end. Returns -1 if a piece was never learned.
int64_t pieces_total(void* h) {
  Encoder& e = *static_cast<Encoder*>(h);
  int64_t total = 0;
  for (uint32_t k : e.cut) {
    if (e.entries[k].ids < 0) return -1;
    total += e.entries[k].count;
  }
  return total;
}

void pieces_emit(void* h, int32_t* out, int64_t* ends) {
  Encoder& e = *static_cast<Encoder*>(h);
  size_t p = 0, o = 0;
  for (size_t t = 0; t < e.text_pieces.size(); t++) {
    for (; p < e.text_pieces[t]; p++) {
      const Entry& entry = e.entries[e.cut[p]];
      std::memcpy(out + o, e.ids.data() + entry.ids, entry.count * sizeof(int32_t));
      o += entry.count;
    }
    ends[t] = (int64_t)o;
  }
}

// For tests: the pieces of one text, as byte offsets where each ends; returns the count.
int64_t pieces_cut(const char* buf, int64_t n, int64_t* ends, int64_t cap) {
  Text text{(const u8*)buf, (size_t)n};
  int64_t m = 0;
  for (size_t i = 0; i < text.n; m++) {
    i = piece_end(text, i);
    if (m < cap) ends[m] = (int64_t)i;
  }
  return m;
}

}  // extern "C"
