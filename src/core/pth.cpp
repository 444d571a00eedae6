// torch.save checkpoints are a zip archive holding a pickle (data.pkl) plus one raw record
// per storage (data/<key>). Python's unpickler can call any function the file names, so the
// pickle is interpreted here by a small VM that knows only the opcodes torch.save emits and
// an allow-list of globals: containers and tensor rebuilders, nothing that runs code.
#include "vitrine/core/pth.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "vitrine/core/error.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pth.cpp reads storages as raw little-endian data; big-endian hosts are not supported"
#endif

namespace vitrine {
namespace {

constexpr char kResaveHint[] = "re-save it with torch.save(model.state_dict(), path)";
constexpr char kWrapperKeys[][17] = {"state_dict", "model", "model_state_dict", "module",
                                     "model_ema"};
constexpr char kParallelPrefix[] = "module.";
constexpr size_t kMaxDims = 64;
constexpr size_t kMaxShownName = 120;

// ---------------------------------------------------------------------------------------
// Values

enum class Kind {
  kNone,
  kBool,
  kInt,
  kBigInt,  // outside int64: kept so unrelated entries (optimizer state) do not fail
  kFloat,
  kString,
  kBytes,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor,
  // An object of a class this reader does not rebuild (a training checkpoint's
  // argparse.Namespace, a numpy scalar): inert, never called; an error only where it stands
  // in the state_dict. `s` names its class.
  kOpaque,
};

enum class GlobalId {
  kOrderedDict,
  kRebuildTensorV2,
  kRebuildParameter,
  kRebuildFromTypeV2,
  kTensorType,   // only ever an argument of _rebuild_from_type_v2
  kStorageType,  // only ever inside a persistent id
  kOpaque,       // any other class or function: calling it gives a kOpaque value
};

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Value {
  explicit Value(Kind k) : kind(k) {}

  Kind kind;
  int64_t i = 0;  // kBool, kInt; kStorage: numel
  double f = 0;
  std::string s;  // kString, kBytes; kGlobal: "module.name"
  GlobalId global = GlobalId::kOrderedDict;
  at::ScalarType dtype = at::kFloat;          // kGlobal storage types, kStorage
  std::vector<ValuePtr> items;                // kTuple, kList
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // kDict, in insertion order
  std::unordered_map<std::string, size_t> index;       // kDict: hashable key -> entry
  at::Storage storage;                        // kStorage
  at::Tensor tensor;                          // kTensor: a view of a storage
};

const char* kind_name(const Value& v) {
  switch (v.kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kBigInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "type or function";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
    case Kind::kOpaque: return "object";
  }
  return "value";
}

// "an int", "a tensor", "None": for messages.
std::string described(const Value& v) {
  if (v.kind == Kind::kNone) return "None";
  const char* name = kind_name(v);
  return std::string(name[0] == 'i' ? "an " : "a ") + name;
}

// Names from the file go into messages: keep them printable and short.
std::string shown(const std::string& name) {
  std::string out;
  for (char c : name.substr(0, kMaxShownName)) {
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  if (name.size() > kMaxShownName) out += "...";
  return out;
}

// Python dict semantics for the key types a checkpoint uses; other keys are never merged.
bool dict_key(const Value& k, std::string* out) {
  switch (k.kind) {
    case Kind::kString: *out = "s" + k.s; return true;
    case Kind::kBool:
    case Kind::kInt: *out = "i" + std::to_string(k.i); return true;
    case Kind::kNone: *out = "n"; return true;
    default: return false;
  }
}

void dict_set(Value& dict, ValuePtr key, ValuePtr value) {
  std::string hashed;
  if (dict_key(*key, &hashed)) {
    auto found = dict.index.find(hashed);
    if (found != dict.index.end()) {
      dict.entries[found->second].second = std::move(value);
      return;
    }
    dict.index.emplace(std::move(hashed), dict.entries.size());
  }
  dict.entries.emplace_back(std::move(key), std::move(value));
}

struct StorageTypeName {
  const char* name;
  at::ScalarType dtype;
};

constexpr StorageTypeName kStorageTypes[] = {
    {"FloatStorage", at::kFloat},     {"DoubleStorage", at::kDouble},
    {"HalfStorage", at::kHalf},       {"BFloat16Storage", at::kBFloat16},
    {"LongStorage", at::kLong},       {"IntStorage", at::kInt},
    {"ShortStorage", at::kShort},     {"CharStorage", at::kChar},
    {"ByteStorage", at::kByte},       {"BoolStorage", at::kBool},
};

// c10 messages can span lines and carry context we do not need.
std::string first_line(const char* what) {
  std::string s(what == nullptr ? "" : what);
  s = s.substr(0, s.find('\n'));
  if (s.size() > 300) s = s.substr(0, 300) + "...";
  return s;
}

// ---------------------------------------------------------------------------------------
// Pickle VM

using StorageLoader =
    std::function<at::Storage(const std::string& key, at::ScalarType dtype, int64_t numel)>;

/// The unsigned little-endian number in the `n` bytes at `p` (pickle arguments, zip
/// headers).
uint64_t little_endian(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
  return v;
}

class Unpickler {
 public:
  Unpickler(std::string path, const uint8_t* data, size_t size, StorageLoader load_storage)
      : path_(std::move(path)), data_(data), size_(size), load_storage_(std::move(load_storage)) {}

  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;

  // Containers can nest deeply or reference themselves through the memo; emptying them all
  // first keeps destruction flat and frees cycles.
  ~Unpickler() {
    for (auto& v : containers_) {
      v->items.clear();
      v->entries.clear();
    }
  }

  /// Runs the pickle to its STOP and returns the result; valid while the Unpickler lives.
  const Value& run();

 private:
  template <typename... Args>
  [[noreturn]] void bad(const Args&... args) const {
    VT_FAIL(path_, ": malformed checkpoint (data.pkl, byte ", op_pos_, "): ", args...,
            "; the file is damaged or was not written by torch.save (", kResaveHint, ")");
  }

  template <typename... Args>
  [[noreturn]] void refuse(const Args&... args) const {
    VT_FAIL(path_, ": refusing to load: ", args...,
            "; only plain state_dicts are accepted (", kResaveHint, ")");
  }

  const uint8_t* take(size_t n) {
    if (n > size_ - pos_) {
      bad("the pickle is truncated (", n, " more bytes needed, ", size_ - pos_, " left)");
    }
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  uint64_t read_le(size_t n) { return little_endian(take(n), n); }
  std::string read_bytes(uint64_t n) {
    if (n > size_ - pos_) {
      bad("the pickle is truncated (a ", n, "-byte string with ", size_ - pos_,
          " bytes left)");
    }
    const uint8_t* p = take(static_cast<size_t>(n));
    return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  std::string read_line() {
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (nl == nullptr) bad("the pickle is truncated inside a GLOBAL name");
    size_t n = static_cast<const uint8_t*>(nl) - (data_ + pos_);
    std::string line = read_bytes(n);
    pos_ += 1;
    return line;
  }

  ValuePtr make(Kind kind) {
    auto v = std::make_shared<Value>(kind);
    if (kind == Kind::kTuple || kind == Kind::kList || kind == Kind::kDict) {
      containers_.push_back(v);
    }
    return v;
  }
  ValuePtr make_int(int64_t i) {
    auto v = make(Kind::kInt);
    v->i = i;
    return v;
  }
  ValuePtr make_string(Kind kind, std::string s) {
    auto v = make(kind);
    v->s = std::move(s);
    return v;
  }

  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  ValuePtr pop() {
    if (stack_.size() <= floor()) bad("stack underflow");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  ValuePtr& top() {
    if (stack_.size() <= floor()) bad("stack underflow");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) bad("no MARK before an opcode that needs one");
    size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + mark),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }
  ValuePtr make_tuple(std::vector<ValuePtr> items) {
    auto t = make(Kind::kTuple);
    t->items = std::move(items);
    return t;
  }

  void memo_put(uint64_t index) {
    ValuePtr v = top();
    memo_[index] = std::move(v);
  }
  ValuePtr memo_get(uint64_t index) {
    auto found = memo_.find(index);
    if (found == memo_.end()) bad("memo entry ", index, " is used before it is defined");
    return found->second;
  }

  ValuePtr resolve_global(const std::string& module, const std::string& name);
  ValuePtr call(const Value& callable, const Value& args);
  ValuePtr persistent_load(const Value& pid);
  ValuePtr rebuild_tensor_v2(const Value& args);

  int64_t as_int(const Value& v, const char* what) const {
    if (v.kind == Kind::kBigInt) bad(what, " is out of range");
    if (v.kind != Kind::kInt && v.kind != Kind::kBool) {
      bad(what, " is ", described(v), ", expected an int");
    }
    return v.i;
  }
  std::vector<int64_t> as_int_tuple(const Value& v, const char* what) const {
    if (v.kind != Kind::kTuple && v.kind != Kind::kList) {
      bad(what, " is ", described(v), ", expected a tuple of ints");
    }
    if (v.items.size() > kMaxDims) bad(what, " has ", v.items.size(), " dimensions");
    std::vector<int64_t> out;
    for (const auto& item : v.items) out.push_back(as_int(*item, what));
    return out;
  }

  std::string path_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  StorageLoader load_storage_;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::unordered_map<std::string, ValuePtr> storages_;
  std::vector<ValuePtr> containers_;
};

const Value& Unpickler::run() {
  while (true) {
    op_pos_ = pos_;
    if (pos_ >= size_) bad("the pickle ends without a STOP opcode (truncated)");
    const uint8_t op = data_[pos_++];
    switch (op) {
      case 0x80: {  // PROTO
        uint64_t proto = read_le(1);
        if (proto < 2 || proto > 5) bad("unsupported pickle protocol ", proto);
        break;
      }
      case 0x95: {  // FRAME: only a read-ahead hint
        uint64_t n = read_le(8);
        if (n > size_ - pos_) bad("a pickle frame runs past the end of data.pkl");
        break;
      }
      case '.': {  // STOP
        ValuePtr result = pop();
        stack_.clear();
        stack_.push_back(std::move(result));
        return *stack_.back();
      }
      case '(':  // MARK
        marks_.push_back(stack_.size());
        break;
      case '}':  // EMPTY_DICT
        push(make(Kind::kDict));
        break;
      case ']':  // EMPTY_LIST
        push(make(Kind::kList));
        break;
      case ')':  // EMPTY_TUPLE
        push(make(Kind::kTuple));
        break;
      case 't':  // TUPLE
        push(make_tuple(pop_mark()));
        break;
      case 0x85:  // TUPLE1
      case 0x86:  // TUPLE2
      case 0x87: {  // TUPLE3
        std::vector<ValuePtr> items(op - 0x84);
        for (size_t k = items.size(); k > 0; --k) items[k - 1] = pop();
        push(make_tuple(std::move(items)));
        break;
      }
      case 'l': {  // LIST
        auto list = make(Kind::kList);
        list->items = pop_mark();
        push(std::move(list));
        break;
      }
      case 'd': {  // DICT
        std::vector<ValuePtr> items = pop_mark();
        if (items.size() % 2 != 0) bad("DICT with an odd number of items");
        auto dict = make(Kind::kDict);
        for (size_t k = 0; k < items.size(); k += 2) dict_set(*dict, items[k], items[k + 1]);
        push(std::move(dict));
        break;
      }
      case 'a': {  // APPEND
        ValuePtr v = pop();
        Value& list = *top();
        if (list.kind == Kind::kOpaque) break;  // an object's items: not needed
        if (list.kind != Kind::kList) bad("APPEND to ", described(list));
        list.items.push_back(std::move(v));
        break;
      }
      case 'e': {  // APPENDS
        std::vector<ValuePtr> items = pop_mark();
        Value& list = *top();
        if (list.kind == Kind::kOpaque) break;
        if (list.kind != Kind::kList) bad("APPENDS to ", described(list));
        for (auto& item : items) list.items.push_back(std::move(item));
        break;
      }
      case 's': {  // SETITEM
        ValuePtr value = pop();
        ValuePtr key = pop();
        Value& dict = *top();
        if (dict.kind == Kind::kOpaque) break;
        if (dict.kind != Kind::kDict) bad("SETITEM on ", described(dict));
        dict_set(dict, std::move(key), std::move(value));
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<ValuePtr> items = pop_mark();
        if (items.size() % 2 != 0) bad("SETITEMS with an odd number of items");
        Value& dict = *top();
        if (dict.kind == Kind::kOpaque) break;
        if (dict.kind != Kind::kDict) bad("SETITEMS on ", described(dict));
        for (size_t k = 0; k < items.size(); k += 2) dict_set(dict, items[k], items[k + 1]);
        break;
      }
      case 'X':  // BINUNICODE
        push(make_string(Kind::kString, read_bytes(read_le(4))));
        break;
      case 0x8c:  // SHORT_BINUNICODE
        push(make_string(Kind::kString, read_bytes(read_le(1))));
        break;
      case 0x8d:  // BINUNICODE8
        push(make_string(Kind::kString, read_bytes(read_le(8))));
        break;
      case 'T':  // BINSTRING
        push(make_string(Kind::kString, read_bytes(read_le(4))));
        break;
      case 'U':  // SHORT_BINSTRING
        push(make_string(Kind::kString, read_bytes(read_le(1))));
        break;
      case 'B':  // BINBYTES
        push(make_string(Kind::kBytes, read_bytes(read_le(4))));
        break;
      case 'C':  // SHORT_BINBYTES
        push(make_string(Kind::kBytes, read_bytes(read_le(1))));
        break;
      case 0x8e:  // BINBYTES8
        push(make_string(Kind::kBytes, read_bytes(read_le(8))));
        break;
      case 'J':  // BININT
        push(make_int(static_cast<int32_t>(static_cast<uint32_t>(read_le(4)))));
        break;
      case 'K':  // BININT1
        push(make_int(static_cast<int64_t>(read_le(1))));
        break;
      case 'M':  // BININT2
        push(make_int(static_cast<int64_t>(read_le(2))));
        break;
      case 0x8a:    // LONG1
      case 0x8b: {  // LONG4
        uint64_t n = read_le(op == 0x8a ? 1 : 4);
        if (n > size_ - pos_) bad("the pickle is truncated inside an integer");
        const uint8_t* p = take(static_cast<size_t>(n));
        if (n > 8) {
          push(make(Kind::kBigInt));
          break;
        }
        uint64_t u = 0;
        for (size_t k = 0; k < n; ++k) u |= static_cast<uint64_t>(p[k]) << (8 * k);
        if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t{0} << (8 * n);
        push(make_int(static_cast<int64_t>(u)));
        break;
      }
      case 'G': {  // BINFLOAT, big-endian
        const uint8_t* p = take(8);
        uint64_t u = 0;
        for (size_t k = 0; k < 8; ++k) u = (u << 8) | p[k];
        auto v = make(Kind::kFloat);
        std::memcpy(&v->f, &u, sizeof(double));
        push(std::move(v));
        break;
      }
      case 'N':  // NONE
        push(make(Kind::kNone));
        break;
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        auto v = make(Kind::kBool);
        v->i = op == 0x88 ? 1 : 0;
        push(std::move(v));
        break;
      }
      case 'q':  // BINPUT
        memo_put(read_le(1));
        break;
      case 'r':  // LONG_BINPUT
        memo_put(read_le(4));
        break;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        break;
      case 'h':  // BINGET
        push(memo_get(read_le(1)));
        break;
      case 'j':  // LONG_BINGET
        push(memo_get(read_le(4)));
        break;
      case 'c': {  // GLOBAL
        std::string module = read_line();
        std::string name = read_line();
        push(resolve_global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        ValuePtr name = pop();
        ValuePtr module = pop();
        if (module->kind != Kind::kString || name->kind != Kind::kString) {
          bad("STACK_GLOBAL needs two strings, got ", described(*module), " and ",
              described(*name));
        }
        push(resolve_global(module->s, name->s));
        break;
      }
      case 'R': {  // REDUCE
        ValuePtr args = pop();
        ValuePtr callable = pop();
        push(call(*callable, *args));
        break;
      }
      case 0x81: {  // NEWOBJ
        ValuePtr args = pop();
        ValuePtr cls = pop();
        if (cls->kind == Kind::kGlobal && cls->global == GlobalId::kOpaque) {
          push(make_string(Kind::kOpaque, cls->s));
          break;
        }
        if (cls->kind != Kind::kGlobal || cls->global != GlobalId::kOrderedDict) {
          bad("NEWOBJ of ", described(*cls), " '", shown(cls->s), "'");
        }
        push(make(Kind::kDict));
        break;
      }
      case 'b': {  // BUILD
        ValuePtr state = pop();
        const Value& target = *top();
        // A state_dict's only attribute is _metadata (per-module versions), not needed here;
        // an object's state is not either.
        if (target.kind != Kind::kDict && target.kind != Kind::kOpaque) {
          bad("BUILD on ", described(target));
        }
        break;
      }
      case 'Q': {  // BINPERSID
        ValuePtr pid = pop();
        push(persistent_load(*pid));
        break;
      }
      default: {
        static const std::unordered_map<uint8_t, const char*> kOtherOpcodes = {
            {'I', "INT"},         {'L', "LONG"},           {'S', "STRING"},
            {'V', "UNICODE"},     {'F', "FLOAT"},          {'p', "PUT"},
            {'g', "GET"},         {'i', "INST"},           {'o', "OBJ"},
            {'P', "PERSID"},      {'0', "POP"},            {'1', "POP_MARK"},
            {'2', "DUP"},         {0x82, "EXT1"},          {0x83, "EXT2"},
            {0x84, "EXT4"},       {0x8f, "EMPTY_SET"},     {0x90, "ADDITEMS"},
            {0x91, "FROZENSET"},  {0x92, "NEWOBJ_EX"},     {0x96, "BYTEARRAY8"},
            {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"},
        };
        auto found = kOtherOpcodes.find(op);
        static const char kHex[] = "0123456789abcdef";
        std::string code = {'0', 'x', kHex[op >> 4], kHex[op & 15]};
        if (found != kOtherOpcodes.end()) {
          bad("pickle opcode ", found->second, " (", code, ") is not used by torch.save and "
              "is not supported");
        }
        bad("unknown pickle opcode ", code);
      }
    }
  }
}

ValuePtr Unpickler::resolve_global(const std::string& module, const std::string& name) {
  // Python's qualified names are short; a long one, copied into each placeholder made from
  // it, would let a small file fill memory.
  constexpr size_t kMaxGlobalName = 256;
  if (module.size() > kMaxGlobalName || name.size() > kMaxGlobalName) {
    bad("a global name of ", module.size() + name.size(), " bytes");
  }
  auto global = make_string(Kind::kGlobal, module + "." + name);
  if (module == "collections" && name == "OrderedDict") {
    global->global = GlobalId::kOrderedDict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    global->global = GlobalId::kRebuildTensorV2;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    global->global = GlobalId::kRebuildParameter;
  } else if (module == "torch._tensor" && name == "_rebuild_from_type_v2") {
    global->global = GlobalId::kRebuildFromTypeV2;
  } else if ((module == "torch._tensor" && name == "Tensor") ||
             (module == "torch" && name == "Tensor") ||
             (module == "torch.nn.parameter" && name == "Parameter")) {
    global->global = GlobalId::kTensorType;
  } else {
    bool found = false;
    if (module == "torch") {
      for (const auto& type : kStorageTypes) {
        if (name == type.name) {
          global->global = GlobalId::kStorageType;
          global->dtype = type.dtype;
          found = true;
        }
      }
    }
    // Another class or function (a training checkpoint's argparse.Namespace): nothing of
    // it runs; what it would make is an inert value, refused only inside the state_dict.
    if (!found) global->global = GlobalId::kOpaque;
  }
  return global;
}

ValuePtr Unpickler::call(const Value& callable, const Value& args) {
  if (callable.kind != Kind::kGlobal) bad("REDUCE calls ", described(callable));
  if (args.kind != Kind::kTuple) bad("REDUCE arguments are ", described(args));
  switch (callable.global) {
    case GlobalId::kOpaque:
      return make_string(Kind::kOpaque, callable.s);
    case GlobalId::kOrderedDict: {
      auto dict = make(Kind::kDict);
      if (args.items.empty()) return dict;
      const Value& pairs = *args.items[0];
      if (args.items.size() != 1 ||
          (pairs.kind != Kind::kList && pairs.kind != Kind::kTuple)) {
        bad("OrderedDict() with unexpected arguments");
      }
      for (const auto& pair : pairs.items) {
        if ((pair->kind != Kind::kList && pair->kind != Kind::kTuple) ||
            pair->items.size() != 2) {
          bad("OrderedDict() item is not a (key, value) pair");
        }
        dict_set(*dict, pair->items[0], pair->items[1]);
      }
      return dict;
    }
    case GlobalId::kRebuildTensorV2:
      return rebuild_tensor_v2(args);
    case GlobalId::kRebuildParameter: {
      // (data, requires_grad, backward_hooks): the data is all a state_dict needs.
      if (args.items.size() != 3 || args.items[0]->kind != Kind::kTensor) {
        bad("_rebuild_parameter() with unexpected arguments");
      }
      return args.items[0];
    }
    case GlobalId::kRebuildFromTypeV2: {
      // (func, type, args, state): a tensor (sub)class with Python attributes; only the
      // plain rebuild is honoured, the attributes are dropped.
      if (args.items.size() != 4) bad("_rebuild_from_type_v2() with unexpected arguments");
      const Value& func = *args.items[0];
      const Value& type = *args.items[1];
      if (type.kind != Kind::kGlobal || type.global != GlobalId::kTensorType) {
        refuse("the checkpoint holds a tensor of type '", shown(type.s),
               "', which is not a plain tensor or parameter");
      }
      if (func.kind != Kind::kGlobal || (func.global != GlobalId::kRebuildTensorV2 &&
                                         func.global != GlobalId::kRebuildParameter)) {
        bad("_rebuild_from_type_v2() with an unexpected rebuild function");
      }
      return call(func, *args.items[2]);
    }
    case GlobalId::kTensorType:
    case GlobalId::kStorageType:
      break;
  }
  bad("'", shown(callable.s), "' is called, which torch.save never does");
}

ValuePtr Unpickler::persistent_load(const Value& pid) {
  if (pid.kind != Kind::kTuple || pid.items.size() != 5 ||
      pid.items[0]->kind != Kind::kString || pid.items[0]->s != "storage") {
    bad("persistent id is not a ('storage', type, key, location, numel) tuple");
  }
  const Value& type = *pid.items[1];
  const Value& key = *pid.items[2];
  if (type.kind != Kind::kGlobal || type.global != GlobalId::kStorageType) {
    bad("persistent id names ", described(type), " '", shown(type.s),
        "' instead of a storage type");
  }
  if (key.kind != Kind::kString) bad("storage key is ", described(key));
  const int64_t numel = as_int(*pid.items[4], "storage size");
  if (numel < 0) bad("storage size ", numel, " is negative");

  // Views of one tensor share its storage: read each record once.
  auto cached = storages_.find(key.s);
  if (cached != storages_.end()) {
    const Value& storage = *cached->second;
    if (storage.dtype != type.dtype || storage.i != numel) {
      bad("storage '", shown(key.s), "' is used both as ", storage.i, " x ", storage.dtype,
          " and as ", numel, " x ", type.dtype);
    }
    return cached->second;
  }
  auto storage = make(Kind::kStorage);
  storage->dtype = type.dtype;
  storage->i = numel;
  storage->storage = load_storage_(key.s, type.dtype, numel);
  storages_.emplace(key.s, storage);
  return storage;
}

ValuePtr Unpickler::rebuild_tensor_v2(const Value& args) {
  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  if (args.items.size() != 6 && args.items.size() != 7) {
    bad("_rebuild_tensor_v2() takes 6 or 7 arguments, got ", args.items.size());
  }
  const Value& storage = *args.items[0];
  if (storage.kind != Kind::kStorage) bad("tensor storage is ", described(storage));
  const int64_t offset = as_int(*args.items[1], "tensor storage offset");
  const std::vector<int64_t> sizes = as_int_tuple(*args.items[2], "tensor size");
  const std::vector<int64_t> strides = as_int_tuple(*args.items[3], "tensor stride");
  if (sizes.size() != strides.size()) {
    bad("tensor has ", sizes.size(), " sizes but ", strides.size(), " strides");
  }
  if (offset < 0) bad("tensor storage offset ", offset, " is negative");
  int64_t numel = 1;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0 || strides[d] < 0) {
      bad("tensor has a negative size or stride in dimension ", d);
    }
    if (__builtin_mul_overflow(numel, sizes[d], &numel)) bad("tensor size overflows");
  }
  auto tensor = make(Kind::kTensor);
  const auto options = at::TensorOptions().dtype(storage.dtype);
  if (numel == 0) {
    tensor->tensor = at::empty(sizes, options);
    return tensor;
  }
  int64_t last = offset;
  for (size_t d = 0; d < sizes.size(); ++d) {
    int64_t span = 0;
    if (__builtin_mul_overflow(sizes[d] - 1, strides[d], &span) ||
        __builtin_add_overflow(last, span, &last)) {
      bad("tensor extent overflows");
    }
  }
  if (last >= storage.i) {
    bad("a tensor of size ", at::IntArrayRef(sizes), ", stride ", at::IntArrayRef(strides),
        " and offset ", offset, " reaches element ", last, " of a ", storage.i,
        "-element storage");
  }
  try {
    tensor->tensor = at::empty({0}, options).set_(storage.storage, offset, sizes, strides);
  } catch (const c10::Error& e) {
    bad("cannot view the storage as a tensor: ", first_line(e.what_without_backtrace()));
  }
  return tensor;
}

// ---------------------------------------------------------------------------------------
// Archive

// Everything the zip reader throws is about this file, not about the caller.
template <typename F>
auto guarded(const std::string& path, const char* doing, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    VT_FAIL(path, ": cannot read the checkpoint while ", doing, " (",
            first_line(e.what_without_backtrace()),
            "); the file is truncated or corrupt, or is not a zip-format torch.save file");
  } catch (const std::bad_alloc&) {
    VT_FAIL(path, ": out of memory while ", doing,
            "; the file is corrupt or larger than this machine can load");
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // the zip reader's number parsing (std::stoull)
    VT_FAIL(path, ": cannot read the checkpoint while ", doing, " (", e.what(),
            "); the file is truncated or corrupt, or is not a zip-format torch.save file");
  }
}

void check_signature(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  VT_CHECK(std::filesystem::exists(status), path,
           ": no such checkpoint file; check the path");
  VT_CHECK(!std::filesystem::is_directory(status), path,
           ": is a directory; expected a torch.save checkpoint file (.pth)");
  std::ifstream in(path, std::ios::binary);
  VT_CHECK(in.good(), path, ": cannot open the checkpoint (", std::strerror(errno),
           "); check its permissions");
  unsigned char head[2] = {0, 0};
  in.read(reinterpret_cast<char*>(head), 2);
  const std::streamsize got = in.gcount();
  VT_CHECK(got > 0, path, ": the file is empty; expected a torch.save checkpoint");
  if (got == 2 && head[0] == 'P' && head[1] == 'K') return;
  if (got == 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5) {
    VT_FAIL(path, ": this is a legacy (pre-PyTorch 1.6) torch.save file, which is not yet "
            "supported; convert it to the zip format with: "
            "python3 -c \"import torch; torch.save(torch.load('old.pth'), 'new.pth')\" "
            "(torch.load runs the file's pickle: do this only for a file you trust)");
  }
  VT_FAIL(path, ": not a PyTorch checkpoint (it starts with neither a zip nor a pickle "
          "signature); expected a file written by torch.save");
}

// torch.save stores every record as is. A compressed record is allocated at the size it
// declares before a byte of it is inflated, so a small hostile file could claim gigabytes:
// the central directory is read first and such records refused. A directory this cannot
// make sense of is left to the zip reader, which names the damage.
void check_records_stored(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  const auto size = static_cast<uint64_t>(in.tellg());
  const auto read_at = [&](uint64_t at, uint64_t n) {
    std::string out;
    if (!in || at > size || n > size - at) return out;
    out.resize(n);
    in.seekg(static_cast<std::streamoff>(at));
    in.read(&out[0], static_cast<std::streamsize>(n));
    if (!in) out.clear();
    return out;
  };
  const auto le = [](const std::string& b, size_t at, size_t bytes) {
    return little_endian(reinterpret_cast<const uint8_t*>(b.data()) + at, bytes);
  };
  // The end-of-central-directory record: 22 bytes and a comment of up to 64 KiB.
  constexpr uint64_t kEocd = 22;
  if (size < kEocd) return;
  const uint64_t tail_size = std::min<uint64_t>(size, kEocd + 0xFFFF);
  const std::string tail = read_at(size - tail_size, tail_size);
  if (tail.empty()) return;
  const size_t eocd = tail.rfind(std::string("PK\x05\x06", 4));
  if (eocd == std::string::npos || eocd + kEocd > tail.size()) return;
  uint64_t entries = le(tail, eocd + 10, 2), dir_size = le(tail, eocd + 12, 4),
           dir_at = le(tail, eocd + 16, 4);
  if (entries == 0xFFFF || dir_size == 0xFFFFFFFF || dir_at == 0xFFFFFFFF) {  // ZIP64
    const uint64_t eocd_at = size - tail_size + eocd;
    if (eocd_at < 20) return;
    const std::string locator = read_at(eocd_at - 20, 20);
    if (locator.size() != 20 || locator.compare(0, 4, "PK\x06\x07") != 0) return;
    const std::string eocd64 = read_at(le(locator, 8, 8), 56);
    if (eocd64.size() != 56 || eocd64.compare(0, 4, "PK\x06\x06") != 0) return;
    entries = le(eocd64, 32, 8);
    dir_size = le(eocd64, 40, 8);
    dir_at = le(eocd64, 48, 8);
  }
  const std::string dir = read_at(dir_at, dir_size);
  size_t at = 0;
  for (uint64_t i = 0; i < entries && at + 46 <= dir.size(); ++i) {
    if (dir.compare(at, 4, "PK\x01\x02") != 0) return;
    const uint64_t method = le(dir, at + 10, 2), name_size = le(dir, at + 28, 2);
    const uint64_t next = at + 46 + name_size + le(dir, at + 30, 2) + le(dir, at + 32, 2);
    if (next > dir.size()) return;
    VT_CHECK(method == 0, path, ": its record '", shown(dir.substr(at + 46, name_size)),
             "' is compressed (zip method ", method, "), which torch.save never writes; load "
             "the original with torch.load and save it again with torch.save, unzipped");
    at = next;
  }
}

at::Storage read_storage(caffe2::serialize::PyTorchStreamReader& reader, const std::string& path,
                         const std::string& key, at::ScalarType dtype, int64_t numel) {
  const std::string record = "data/" + key;
  const bool present = guarded(path, "looking up a storage record",
                               [&] { return reader.hasRecord(record); });
  VT_CHECK(present, path, ": the checkpoint has no record '", shown(record),
           "' for one of its tensors; the file is incomplete or corrupt");
  at::DataPtr data;
  size_t nbytes = 0;
  std::tie(data, nbytes) = guarded(path, "reading a storage record",
                                   [&] { return reader.getRecord(record); });
  const int64_t item = static_cast<int64_t>(c10::elementSize(dtype));
  int64_t expected = 0;
  VT_CHECK(!__builtin_mul_overflow(numel, item, &expected) &&
               static_cast<uint64_t>(expected) == nbytes,
           path, ": storage record '", shown(record), "' holds ", nbytes, " bytes but ",
           numel, " elements of ", dtype, " need ", numel * item,
           "; the file is corrupt or was not written by torch.save");
  if (dtype == at::kBool) {
    const auto* bytes = static_cast<const uint8_t*>(data.get());
    for (size_t k = 0; k < nbytes; ++k) {
      VT_CHECK(bytes[k] <= 1, path, ": storage record '", shown(record), "' holds a bool "
               "that is neither 0 nor 1; the file is corrupt");
    }
  }
  // The record's buffer comes from the CPU allocator, so the storage may own and resize it
  // like any other.
  return at::Storage(at::Storage::use_byte_size_t(), nbytes, std::move(data),
                     c10::GetCPUAllocator(), /*resizable=*/true);
}

bool all_tensors(const Value& dict) {
  for (const auto& entry : dict.entries) {
    if (entry.second->kind != Kind::kTensor) return false;
  }
  return true;
}

const Value* find_entry(const Value& dict, const char* key) {
  for (const auto& entry : dict.entries) {
    if (entry.first->kind == Kind::kString && entry.first->s == key) return entry.second.get();
  }
  return nullptr;
}

std::string key_text(const Value& key) {
  if (key.kind == Kind::kString) return "'" + shown(key.s) + "'";
  if (key.kind == Kind::kInt || key.kind == Kind::kBool) return std::to_string(key.i);
  return described(key);
}

// A class or function the reader does not rebuild, where tensors are wanted: refused by
// name. Outside the state_dict (a training checkpoint's `args`) such values are let be.
void refuse_opaque(const std::string& path, const Value& v) {
  const bool opaque = v.kind == Kind::kOpaque ||
                      (v.kind == Kind::kGlobal && v.global == GlobalId::kOpaque);
  if (!opaque) return;
  VT_FAIL(path, ": refusing to load: the checkpoint's pickle references '", shown(v.s),
          "', which is not a tensor or state_dict type; only state_dicts of tensors are "
          "accepted (", kResaveHint, ")");
}

// Picks the state_dict out of what the pickle built and detaches its tensors from the
// pickle's values.
StateDict extract_state_dict(const std::string& path, const Value& root) {
  refuse_opaque(path, root);
  VT_CHECK(root.kind == Kind::kDict, path, ": the checkpoint holds ", described(root),
           ", not a state_dict; ", kResaveHint);
  const Value* sd = &root;
  std::string where = "";
  if (!all_tensors(root)) {
    const Value* wrapped = nullptr;
    for (const char* key : kWrapperKeys) {
      const Value* v = find_entry(root, key);
      if (v != nullptr && v->kind == Kind::kDict) {
        wrapped = v;
        where = std::string(" under '") + key + "'";
        break;
      }
    }
    if (wrapped != nullptr) sd = wrapped;
  }
  for (const auto& entry : sd->entries) {
    const Value& key = *entry.first;
    const Value& value = *entry.second;
    VT_CHECK(key.kind == Kind::kString, path, ": the checkpoint's state_dict", where,
             " has a key that is ", key_text(key), ", not a tensor name; ", kResaveHint);
    refuse_opaque(path, value);
    VT_CHECK(value.kind == Kind::kTensor, path, ": the checkpoint's entry ", key_text(key),
             where, " is ", described(value), ", not a tensor; expected a state_dict of "
             "tensors, or a training checkpoint with one under 'state_dict', 'model', "
             "'model_state_dict', 'module' or 'model_ema' (", kResaveHint, ")");
  }
  VT_CHECK(!sd->entries.empty(), path, ": the checkpoint's state_dict", where,
           " holds no tensors");

  // DataParallel prefixes every key; when only some keys have it, "module" is the name of a
  // real submodule and stays.
  bool prefixed = true;
  for (const auto& entry : sd->entries) {
    if (entry.first->s.compare(0, std::strlen(kParallelPrefix), kParallelPrefix) != 0) {
      prefixed = false;
      break;
    }
  }

  // A tensor that is the only user of all of its storage takes it over as is; anything
  // else (views, slices, shared storages) is copied out so no two results alias.
  std::unordered_map<const c10::StorageImpl*, int> users;
  for (const auto& entry : sd->entries) {
    ++users[entry.second->tensor.storage().unsafeGetStorageImpl()];
  }
  // A view larger than its storage (stride 0, as expand() makes) may add this much.
  constexpr uint64_t kMaxExpandedBytes = uint64_t{1} << 30;
  // The copies together: a pickle can name one storage a million times, and every copy
  // alone may be small. Real checkpoints copy at most what the file holds, and a little more
  // for expanded views.
  std::error_code ec;
  const uint64_t file_bytes = std::filesystem::file_size(path, ec);
  const uint64_t copy_budget = (ec ? 0 : file_bytes) + kMaxExpandedBytes;
  uint64_t copied = 0;
  StateDict out;
  out.reserve(sd->entries.size());
  for (const auto& entry : sd->entries) {
    std::string name = entry.first->s;
    if (prefixed) name.erase(0, std::strlen(kParallelPrefix));
    const at::Tensor& t = entry.second->tensor;
    const bool whole = t.storage_offset() == 0 && t.is_contiguous() &&
                       static_cast<size_t>(t.nbytes()) == t.storage().nbytes() &&
                       users[t.storage().unsafeGetStorageImpl()] == 1;
    if (whole) {
      out.emplace_back(std::move(name), t);
      continue;
    }
    // A view larger than its storage repeats elements (stride 0, as expand() makes): real
    // checkpoints have few and small ones, a corrupt one could ask for terabytes.
    VT_CHECK(static_cast<uint64_t>(t.nbytes()) <= std::max<uint64_t>(t.storage().nbytes(),
                                                                      kMaxExpandedBytes),
             path, ": tensor '", shown(name), "' repeats its ", t.storage().nbytes(),
             "-byte storage into ", t.nbytes(), " bytes; the file is corrupt");
    copied += static_cast<uint64_t>(t.nbytes());
    VT_CHECK(copied <= copy_budget, path, ": its tensors that share storage (views, or one "
             "storage named under many keys; up to '", shown(name), "') come to ", copied,
             " bytes, more than the file's ", file_bytes, " bytes can hold; the file is corrupt");
    at::Tensor copy;
    try {
      copy = t.clone(at::MemoryFormat::Contiguous);
    } catch (const c10::Error& e) {
      VT_FAIL(path, ": cannot materialise tensor '", shown(name), "' (", t.numel(),
              " elements): ", first_line(e.what_without_backtrace()));
    } catch (const std::bad_alloc&) {
      VT_FAIL(path, ": out of memory materialising tensor '", shown(name), "' (", t.numel(),
              " elements)");
    }
    out.emplace_back(std::move(name), std::move(copy));
  }
  return out;
}

}  // namespace

StateDict pth_load(const std::string& path) {
  check_signature(path);
  check_records_stored(path);
  using caffe2::serialize::PyTorchStreamReader;
  auto reader = guarded(path, "opening its zip archive",
                        [&] { return std::make_unique<PyTorchStreamReader>(path); });
  const bool has_pickle = guarded(path, "looking up data.pkl",
                                  [&] { return reader->hasRecord("data.pkl"); });
  if (!has_pickle) {
    const bool scripted = guarded(path, "looking up constants.pkl",
                                  [&] { return reader->hasRecord("constants.pkl"); });
    VT_CHECK(!scripted, path, ": this is a TorchScript archive (torch.jit.save), not a "
             "torch.save checkpoint; save the model's weights with "
             "torch.save(model.state_dict(), path)");
    VT_FAIL(path, ": the zip archive has no data.pkl, so it is not a torch.save checkpoint; "
            "expected a file written by torch.save(model.state_dict(), path)");
  }
  // Newer torch.save records the byte order of the machine that wrote the tensors;
  // without the record they are little-endian.
  const bool has_byteorder = guarded(path, "looking up byteorder",
                                     [&] { return reader->hasRecord("byteorder"); });
  if (has_byteorder) {
    const auto [order, order_size] = guarded(path, "reading byteorder",
                                             [&] { return reader->getRecord("byteorder"); });
    const std::string text(static_cast<const char*>(order.get()), order_size);
    VT_CHECK(text == "little", path, ": its tensors were written in '", shown(text), "' byte "
             "order (a big-endian machine); load it there with torch.load and save it again "
             "on a little-endian machine (x86-64, ARM), or export safetensors");
  }
  at::DataPtr pickle;
  size_t pickle_size = 0;
  std::tie(pickle, pickle_size) = guarded(path, "reading data.pkl",
                                          [&] { return reader->getRecord("data.pkl"); });
  VT_CHECK(pickle_size == 0 || pickle.get() != nullptr, path,
           ": cannot read data.pkl; the file is corrupt");

  Unpickler unpickler(
      path, static_cast<const uint8_t*>(pickle.get()), pickle_size,
      [&](const std::string& key, at::ScalarType dtype, int64_t numel) {
        return read_storage(*reader, path, key, dtype, numel);
      });
  const Value& root = unpickler.run();
  return extract_state_dict(path, root);
}

}  // namespace vitrine
