// The FAISS index inside a VectorIndex, for benchmarks that measure Vitrine's overhead
// over calling FAISS directly. Not part of the public interface.
#pragma once

#include "vitrine/search/vector_index.h"

#include <faiss/Index.h>

namespace vitrine::search {

/// The FAISS index that `index` wraps; throws for an index of another backend.
const faiss::Index& faiss_index_of(const VectorIndex& index);

}  // namespace vitrine::search
