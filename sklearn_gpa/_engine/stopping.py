"""When is a flow done?  When its particles are as close to its target as a fresh sample.

Two unbiased (U-statistic) two-sample statistics compare a fixed subsample of each flow's
particles with a fixed subsample of its target rows: the squared energy distance, which sees
the large scale (where the mass is), and the squared MMD with a Gaussian kernel of a quarter
of the target's median distance (at least its median nearest-neighbour distance), which
sees misplaced mass within it (particles between two clusters rather than in them).
The expectation of each is its population value, zero when the particles are distributed
like the target, so what matters is their noise: the *floor* of a statistic is its root
mean square between two random halves of the target rows, over many random splits,
rescaled to the sizes compared.  Under the null hypothesis a degenerate two-sample
U-statistic times ``m n / (m + n)`` converges to a fixed distribution, so its spread scales
as ``1 / m + 1 / n``: halves of sizes ``a, b`` are rescaled by
``(1 / m + 1 / n) / (1 / a + 1 / b)``.

A flow's *score* is the larger of its two statistic / floor ratios.  A fresh sample of the
target scores about -1 to 1; the flow stops (is frozen) at the first check where its score
is at most ``factor`` (1: as close as a fresh sample typically is, and before the particles
get closer to the target rows than a fresh sample would, i.e. start to copy them).  There is
no patience rule: a flow whose score stalls far above its floor may still be on its way
(four-well flows stalled for 1300 steps, then went on to the wells).  Everything is batched
over the K flows on the run's device; the target's distances are computed once, each check
costs the particle-target and particle-particle distances of at most ``max_rows`` rows per
side.
"""

from __future__ import annotations

import math

import torch

__all__ = ["EnergyStopping", "rows_compared", "two_sample_statistics"]

_N_SPLITS = 64
_MEDIAN_ROWS = 300


def rows_compared(n_features: int) -> int:
    """Rows per side a check compares: 1000, fewer in many dimensions (cost ~ rows^2 d)."""
    return int(min(1000, max(250, math.sqrt(2.5e8 / max(n_features, 1)))))


def _distances(a, b):
    """Euclidean distances (K, m, n) between rows of a (K, m, d) and b (K, n, d)."""
    squared = torch.baddbmm(b.square().sum(-1)[:, None], a, b.transpose(1, 2), alpha=-2.0)
    squared += a.square().sum(-1, keepdim=True)
    return squared.clamp_min_(0.0).sqrt_()


def _gaussian(distances, bandwidth):
    return (distances / bandwidth[:, None, None]).square_().mul_(-0.5).exp_()


def _kernels(distances, bandwidth):
    """Kernel values (2, K, m, n): the energy kernel -|a - b| and a Gaussian of ``bandwidth``."""
    return torch.stack([-distances, _gaussian(distances, bandwidth)])


def _pair_sum(kernel, mask_a, mask_b):
    """Sum of kernel values (..., K, m, n) over the pairs of masked rows: (..., K)."""
    return ((kernel @ mask_b[..., None]).squeeze(-1) * mask_a).sum(-1)


def _kernel_means(distances, bandwidth, mask_a, mask_b=None):
    """Means (2, K) of the two kernels over the pairs of masked rows of a and b.

    With ``mask_b`` None, ``distances`` are within one sample and the pairs i != j count.
    The two kernels are reduced one after the other: no (2, K, m, n) copy.
    """
    within = mask_b is None
    mask_b = mask_a if within else mask_b
    sums = []
    for sign, kernel in ((-1.0, distances), (1.0, _gaussian(distances, bandwidth))):
        total = _pair_sum(kernel, mask_a, mask_b)
        if within:
            total = total - (torch.diagonal(kernel, dim1=-2, dim2=-1) * mask_a).sum(-1)
        sums.append(sign * total)
    count_a, count_b = mask_a.sum(1), mask_b.sum(1)
    pairs = count_a * (count_a - 1) if within else count_a * count_b
    return torch.stack(sums) / pairs.clamp_min(1.0)


def _statistics(a, mask_a, b, mask_b, bandwidth, within_b):
    cross = _kernel_means(_distances(a, b), bandwidth, mask_a, mask_b)
    within_a = _kernel_means(_distances(a, a), bandwidth, mask_a)
    return within_a + within_b - 2.0 * cross


def two_sample_statistics(a, mask_a, b, mask_b, bandwidth):
    """Unbiased two-sample statistics per flow between masked rows of a and b: (2, K).

    ``a`` (K, m, d), ``b`` (K, n, d); masks (K, m), (K, n) are 1 on rows that count, 0 on
    padding.  Row 0 is the squared energy distance, row 1 the squared MMD with a Gaussian
    kernel of ``bandwidth`` (K,).  Within-sample means leave out the pairs of a row with
    itself, so the expectation is the population value (zero for two samples of one law)
    and a value can be negative.
    """
    within_b = _kernel_means(_distances(b, b), bandwidth, mask_b)
    return _statistics(a, mask_a, b, mask_b, bandwidth, within_b)


def _local_bandwidth(distances, mask):
    """Per flow, a quarter of the median distance, or the median nearest-neighbour distance.

    The larger of the two: below the target's overall spread, so that the Gaussian kernel
    sees misplaced mass (particles between clusters) that the energy distance, dominated by
    the large scale, misses; never below the distance between neighbouring rows (in many
    dimensions, where all distances are alike), where the kernel would see only noise.
    """
    n = distances.shape[1]
    pair = (mask[:, :, None] * mask[:, None, :]).bool() & ~torch.eye(
        n, dtype=torch.bool, device=distances.device
    )
    # The rows are in random order: the median over the first few hundred is as good.
    block = min(n, _MEDIAN_ROWS)
    median = distances[:, :block, :block].masked_fill(~pair[:, :block, :block], math.nan)
    median = median.flatten(1).nanmedian(1).values
    nearest = distances.masked_fill(~pair, math.inf).min(2).values
    nearest = nearest.masked_fill(~mask.bool(), math.nan).nanmedian(1).values
    bandwidth = torch.maximum(median / 4.0, nearest)
    # Fewer than two distinct rows: any positive bandwidth will do.
    return torch.where(bandwidth > 0, bandwidth, torch.ones_like(bandwidth))


def _subsample(counts, max_rows, generator):
    """Per flow, indices (K, r) of at most ``max_rows`` of its ``counts[k]`` real rows; mask."""
    width = min(int(max(counts)), max_rows)
    index = torch.zeros(len(counts), width, dtype=torch.long)
    mask = torch.zeros(len(counts), width)
    for k, count in enumerate(counts):
        chosen = torch.randperm(int(count), generator=generator)[:width]
        index[k, : len(chosen)] = chosen
        mask[k, : len(chosen)] = 1.0
    return index, mask


def _gather(rows, index):
    return torch.gather(rows, 1, index[..., None].expand(-1, -1, rows.shape[2]))


class EnergyStopping:
    """Per-flow stopping rule for K packed flows; see the module docstring.

    Parameters
    ----------
    w_y, x, w_x : tensors
        Particle weights (K, M) and target rows (K, N, d) with weights (K, N), as in
        ``train_flow`` (zero weight on padding).
    max_rows : int
        Rows per side and flow compared at each check (a fixed random subsample).
    factor : float
        A flow stops when each statistic is at most ``factor`` times its floor.
    generator : torch.Generator
        A CPU generator for the subsamples and splits (kept apart from the critic's, so
        the particles' path does not depend on whether the rule is on).
    """

    def __init__(self, w_y, x, w_x, *, max_rows, factor, generator):
        device = x.device
        # float64 where the device has it: the U-statistic is a small difference of means.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.factor = factor
        counts_y = (w_y > 0).sum(1).tolist()
        counts_x = (w_x > 0).sum(1).tolist()
        index_y, mask_y = _subsample(counts_y, max_rows, generator)
        index_x, mask_x = _subsample(counts_x, max_rows, generator)
        self.index_y = index_y.to(device)
        self.mask_y = mask_y.to(device, self.dtype)
        pool = _gather(x, index_x.to(device)).to(self.dtype)
        pool_mask = mask_x.to(device, self.dtype)
        # Centre on the target's mean: the distances' expansion then loses no precision.
        count = pool_mask.sum(1)[:, None, None]
        self.center = (pool * pool_mask[..., None]).sum(1, keepdim=True) / count
        self.target, self.mask_x = pool - self.center, pool_mask
        distances = _distances(self.target, self.target)
        self.bandwidth = _local_bandwidth(distances, self.mask_x)
        self.within_target = _kernel_means(distances, self.bandwidth, self.mask_x)
        kernel = _kernels(distances, self.bandwidth)
        self.floor = self._floor(kernel, self.mask_x, self.mask_y.sum(1), generator)

    def _floor(self, kernel, pool_mask, n_particles, generator):
        """RMS (2, K) of the statistics between random halves of the target rows, rescaled."""
        n_pool = pool_mask.sum(1)
        # Random halves of each flow's real rows: rank random keys, real rows first.
        keys = torch.rand(_N_SPLITS, *pool_mask.shape, generator=generator, dtype=self.dtype)
        rank = (keys.to(kernel.device) + 2.0 * (1.0 - pool_mask)).argsort(-1).argsort(-1)
        half = torch.floor(n_pool / 2)
        # Halves as columns (K, rows, splits); kernel sums within and across them as
        # matrix products: (2, K, splits) each.
        first = ((rank < half[:, None]).to(self.dtype) * pool_mask).permute(1, 2, 0)
        second = pool_mask[..., None] - first
        kernel_first = kernel @ first
        sum_11 = (kernel_first * first).sum(-2)
        sum_12 = (kernel_first * second).sum(-2)
        sum_22 = _pair_sum(kernel, pool_mask, pool_mask)[..., None] - 2.0 * sum_12 - sum_11
        diagonal = torch.diagonal(kernel, dim1=-2, dim2=-1)  # (2, K, rows)
        diag_1 = (diagonal[..., None] * first).sum(-2)
        diag_2 = (diagonal[..., None] * second).sum(-2)
        a, b = half, n_pool - half
        values = (
            (sum_11 - diag_1) / (a * (a - 1)).clamp_min(1.0)[:, None]
            + (sum_22 - diag_2) / (b * (b - 1)).clamp_min(1.0)[:, None]
            - 2.0 * sum_12 / (a * b).clamp_min(1.0)[:, None]
        )
        rms = values.square().mean(-1).sqrt()
        # The spread of the statistic for two samples of one law scales as 1/m + 1/n.
        sizes = 1.0 / n_particles.clamp_min(1.0) + 1.0 / self.mask_x.sum(1).clamp_min(1.0)
        halves = 1.0 / a.clamp_min(1.0) + 1.0 / b.clamp_min(1.0)
        floor = rms * sizes / halves
        return torch.where(floor > 0, floor, torch.full_like(floor, math.inf))

    def statistics(self, y):
        """Statistics (2, K) between each flow's particle subsample and target subsample."""
        particles = _gather(y, self.index_y).to(self.dtype) - self.center
        return _statistics(
            particles, self.mask_y, self.target, self.mask_x, self.bandwidth, self.within_target
        )

    def check(self, y):
        """(statistics (2, K), score (K,), converged (K,)) for particles ``y``.

        The score is the larger ratio of a statistic to its floor; a flow has converged
        when its score is at most ``factor``.
        """
        values = self.statistics(y)
        score = (values / self.floor).max(0).values
        return values, score, score <= self.factor
