// CKA-damage kernels: the greedy removal loop and the batched RBF candidate scan.
//
// Both are defined by the plain-torch references in pyprune/ops/reference.py (greedy_removal_order_reference,
// rbf_candidate_scan_reference), float64 throughout. Arrays are dense and row-major (C-contiguous).
#pragma once

#include <cstdint>

namespace pyprune {

// Greedy CKA-damage removal order. interaction is the p x p symmetric matrix M; active holds p bytes (nonzero:
// the neuron is active) or is nullptr for all active. Inactive neurons count in no sum. Each step removes the
// kept neuron whose removal leaves the highest linear CKA
//   score_j = (N - column_j) / (F sqrt(max(D2 - 2 kept_column_j + M_jj, 0)))   (0 where that denominator is
//   not positive)
// with ties going to the lowest index, until none is left. order and cka_after receive n_active entries (the
// number of active neurons): the indices in removal order and the CKA after each removal.
//
// The arithmetic follows the reference operation for operation (the column sums are taken row by row, in
// index order), so exact ties (dead or duplicated neurons) are broken the same way. O(p^2) in total: one pass
// over M for the column sums, then per step an O(p) scan for the best score and an O(p) update. The per-step
// scan runs on several threads (persistent workers synchronised by a spin barrier) only for p >= 2048; the
// result does not depend on num_threads.
void greedy_removal_order(const double* interaction, int64_t p, const uint8_t* active, int num_threads,
                          int64_t* order, double* cka_after);

// Number of nonzero entries of active (p when active is nullptr): the length of greedy_removal_order's outputs.
int64_t count_active(const uint8_t* active, int64_t p);

// HSIC sums of the RBF kernel of a layer with each candidate neuron removed, against a centred target. For
// candidate c (neuron j = candidates[c]) and samples a, b:
//   d_ab = max(D_ab - sum_t (V[j, a, t] - V[j, b, t])^2, 0),  k_ab = exp(-d_ab * inv_two_sigma_sq[c]),
//   cross[c] = sum_ab target_ab k_ab,  self_sq[c] = sum_ab k_ab^2,  row_sq[c] = |k 1|^2,  total[c] = 1^T k 1.
// distances_kept (D) and target are n x n and symmetric: only their lower triangles (diagonal included) are
// read, each pair a > b counting twice; on the diagonal the candidate's own distance is 0, so d_aa =
// max(D_aa, 0). values (V) is p x n x t. Nothing of size n x n per candidate is formed: one pass over the
// pairs, with a row-sum buffer of n doubles. Parallel over candidates, and also over blocks of rows (with
// per-block partial sums merged at the end) when there are fewer than two candidates per thread. Throws
// std::invalid_argument when a candidate is outside [0, p).
void rbf_candidate_scan(const double* distances_kept, const double* values, int64_t p, int64_t n, int64_t t,
                        const int64_t* candidates, int64_t m, const double* inv_two_sigma_sq,
                        const double* target, int num_threads, double* cross, double* self_sq, double* row_sq,
                        double* total);

}  // namespace pyprune
