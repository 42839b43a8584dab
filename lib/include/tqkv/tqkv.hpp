// tqkv: TurboQuant-family compression of transformer KV caches.
#pragma once
#include "tqkv/codebook.hpp"
#include "tqkv/cache.hpp"
#include "tqkv/codec.hpp"
#include "tqkv/dense.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/kernels.hpp"
#include "tqkv/kvdump.hpp"
#include "tqkv/packing.hpp"
#include "tqkv/rng.hpp"
#include "tqkv/rotation.hpp"
#include "tqkv/threads.hpp"
