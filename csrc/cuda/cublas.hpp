// Row-major matrix products through cuBLAS, which is loaded at run time (see cublas.cpp).
#pragma once

#include <string>
#include <vector>

namespace sparkbatch::cuda {

// The sonames tried when nothing else is asked for, newest first.
std::vector<std::string> default_cublas_names();

// Loads cuBLAS from the first of `candidates` (sonames or paths) that dlopen accepts, unless it
// is loaded already; returns what was loaded. Throws std::runtime_error naming every candidate
// tried, with dlerror's reason, when none loads.
std::string load_cublas(const std::vector<std::string>& candidates);

// What load_cublas loaded, or "" when cuBLAS is not loaded yet.
std::string loaded_cublas();

// C[M, N] = alpha * op(A) op(B) + beta * C for row-major matrices of T (float or double) on the
// current device, on the legacy default stream: op(A) is A [M, K] or, with trans_a, A^T with A
// stored [K, M]; op(B) likewise is B [K, N] or B^T with B stored [N, K]. Loads cuBLAS (default
// names) on first use.
template <typename T>
void gemm(bool trans_a, bool trans_b, long m, long n, long k, T alpha, const T* a, const T* b,
          T beta, T* c);

}  // namespace sparkbatch::cuda
