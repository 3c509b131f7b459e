"""When is a flow done?  When its particles are as close to its target as a fresh sample.

Three statistics compare a fixed subsample of each flow's particles with a fixed subsample
of its target rows.  Two are unbiased (U-statistic) two-sample statistics: the squared
energy distance, which sees the large scale (where the mass is), and the squared MMD with a
Gaussian kernel of a quarter of the target's median distance (at least its median
nearest-neighbour distance), which sees misplaced mass within it.  Their expectation is
their population value, zero when the particles are distributed like the target, so what
matters is their noise: the *floor* of a statistic is its root mean square between two
random halves of the target rows, over many random splits, rescaled to the sizes compared.
Under the null hypothesis a degenerate two-sample U-statistic times ``m n / (m + n)``
converges to a fixed distribution, so its spread scales as ``1 / m + 1 / n``: halves of
sizes ``a, b`` are rescaled by ``(1 / m + 1 / n) / (1 / a + 1 / b)``.

Identical target rows are one unit, weighted by their number of copies: the rule's target is
the distinct rows, a pair of a row's copies is not a pair of rows, the halves split the
distinct rows (each row's copies go with it), sizes are effective sizes ``(sum w)^2 / sum
w^2`` (the number of distinct rows when each has as many copies), and the stray radius
below is between distinct rows.  Copies split between two halves would make the halves far
closer than two fresh samples: the floor would be too low for a flow ever to reach, and the
flow would run to ``n_steps`` and pack its particles onto the target rows.  Identical
particles (repeated source rows) are one unit too, weighted by their copies, with their
effective size in the floors: they stay identical as they move, and counted as many, a few
distinct rows never come as close to the target as a fresh sample of that many rows would
(20 rows repeated ten times ran every step).  Without copies every weight is 1 and these are
the plain statistics.

The kernel statistics are averages, and a flow's particles are not a fresh sample: most of
them settle closer to the target rows than a fresh sample would, which pulls the averages
below the floor while a share of the particles is still between the target's clusters
(four-well flows stopped with 14-65 % of their particles away from every well).  The third
statistic counts those: the share of particles whose nearest target row is farther than the
radius beyond which ``STRAY_SHARE`` (10 %) of the target rows have their nearest other
target row, less ``STRAY_SHARE``.  For a fresh sample it is binomial around zero, of spread
``sqrt(p (1 - p) (1 / m + 1 / n))``; its floor is ``STRAY_TOLERANCE`` (1) such spread, and
it counts only in at most ``STRAY_MAX_FEATURES`` (20) features (in 64-D digits it kept
generative flows going past their best).  Particles on the target rows make it negative, so
it never keeps a flow from stopping before the particles copy the rows.

A row's distance to its nearest target row is set by the target's sparsest direction: where
the clusters are thin in one feature and long in another (four wells on a line, scaled per
feature, become four thin bars), the radius is the rows' spacing along the bars, 2.7-3.6
data units along the line for wells of sd 0.5 and 100 rows, and flows stopped with 17-45 %
of their particles 1.5 or more from every well.  The fourth statistic counts the strays in
each feature, where no other feature's spread hides them: the share of particles whose value
of a feature is farther from every target row's value than the feature's radius (beyond
which ``STRAY_SHARE`` of the target rows have no other value), less ``STRAY_SHARE``,
averaged over the features.  An average of binomial shares spreads at most as one does: its
floor is the third statistic's.  Discrete features count at their spacing (a particle
between two levels is no stray), where a fresh sample, on the levels, has none.

Each of these is an average or a share, so a few particles far outside the target hardly
move it (the kernel statistics see a share ``e`` of far particles as ``e^2``): a
one-dimensional flow that had to narrow 20-fold stopped with 2-3 of 100 particles 20 to 30
target spreads out (a spread 5 to 6 times the target's), where more steps brought them in.
The fifth statistic is the farthest particle's distance from the target's centre (the
features' medians) over the farthest target row's; with ``m`` particles against ``n``
target rows, the ``ceil(m / n)``-th farthest, so that more particles do not reach farther
out by their number alone.  Its floor is ``FAR_TOLERANCE`` (3) times the level a fresh
sample reaches, read off the target itself: the 0.9 quantile over random halves of the
largest distance in one half over the largest in the other (1.1-1.4 for light tails,
higher for heavy ones, where a fresh row can land far out).  In integration the level is
also read off the particles' start about their own centre, the larger counting: a source
whose farthest rows lie far beyond its own bulk may keep them there.  The estimators count
it in generation and in integration without a pre-alignment (``far``), where the flow alone
brings the source's spread onto the target's; after a pre-alignment a row still far out is
a row of its own (a latent flow on SurvSet vdv pulled one in, its error 2.26 -> 3.07).  It
does not count at integration's first check (a few far source rows alone do not set a flow
moving, they keep a moving one going), nor in ranking a run's checks for its best one
(``ranking``).

A flow's *score* is the largest statistic / floor ratio. A fresh sample of the target scores
about -1 to 1; the flow stops (is frozen) at the first check where its score is at most
``factor`` (1: as close as a fresh sample typically is). A fresh sample scores above 1 at a
fifth to a half of the checks, though: ``start_factor`` (``START_FACTOR``, 3, for
integration) is the bar at the first check, where a flow that does not clear it never moves
(about the 95th-99th percentile of a fresh sample's score); so does one with fewer than
``START_MIN_ROWS`` (10) distinct target rows, whose halves say nothing of its noise.  At that
check the kernel statistics' floors are the larger of the target's and those of random
halves of the particles and target rows pooled (a permutation test): the target's halves
cannot hold rows only the source has, far out in a heavy tail, and a fresh sample with such
rows scored far above its floor (``EnergyStopping._start_floor``).
Integration has no patience rule: a flow whose score stalls far above its floor may still be
on its way (four-well flows stalled for 1300 steps, then went on to the wells). Generation
(``patience``) does: its particles start from a fitted prior near the target, and a flow
whose score has not fallen by ``STALL_GAIN`` within ``STALL_STEPS`` steps stops at its best
check. Everything is batched over the K flows on the run's device; the target's distances
are computed once, each check costs the particle-target and particle-particle distances of
at most ``max_rows`` rows per side."""

from __future__ import annotations

import copy
import math

import torch

__all__ = ["EnergyStopping", "rows_compared", "two_sample_statistics"]

_N_SPLITS = 64
_MEDIAN_ROWS = 300
# Gaussian bandwidths: the target's median distance over each divisor (at least its median
# nearest-neighbour distance).
DIVISORS = (4.0,)
# The share of a fresh sample's rows that are strays (farther from every target row than
# this share of the target rows are from their nearest other target row).
STRAY_SHARE = 0.1
# The strays' floor is this many binomial spreads, and they count in at most this many
# features: above, nearest-neighbour distances concentrate and counting strays kept
# generative flows of 8 x 8 digits (64-D) going past their best (C2ST 0.72 -> 0.79-0.84).
# One spread rather than two: pre-aligned four-well flows stopped with 12 % of their
# particles between wells at two (generation and LatentGPA unchanged, benchmarks/README.md).
STRAY_TOLERANCE = 1.0
STRAY_MAX_FEATURES = 20
# stop="evidence" (integration): at the first check a flow moves only if its score exceeds
# this, about the 97-99th percentile of a fresh sample's score (a fresh sample scores above
# 1 at 20-45 % of checks: under factor 1, integration moved rows that were already right).
START_FACTOR = 3.0
# ... and only with at least this many distinct target rows: the floor is the spread of the
# statistics between random halves of the target, and 4 rows have 3 ways to be halved.  A
# class of 4 rows on each side of one KEEL table (kddcup, no batch effect) scored 18-20 and its
# flow sent counts of 0 to -9900.
START_MIN_ROWS = 10
# At the first check of integration, a flow moves only past the floors of the pooled rows
# too (``EnergyStopping._start_floor``).  False: the target's floors alone (benchmarks).
START_POOLED = True
# ... from at most this many rows a side (the first of each random subsample): the floor is
# rescaled to the sizes compared, and 1 000 + 1 000 pooled rows cost 0.2 s a flow.
START_POOL_ROWS = 500
# Generation (stop="auto"): a flow whose score has not fallen below (1 - STALL_GAIN) times
# its last such low within STALL_STEPS steps has stalled: it stops and goes back to its best
# check.  Its particles start from a fitted prior, near the target, and the first few
# hundred steps do what the flow can do (vehicle3's class of three vehicle types: score 21
# -> 4 in 300 steps, then 4 -> 2.3 in 1700 more while the C2ST stayed within its noise, or a
# critic gone flat for good: benchmarks/README.md).  Integration keeps no such rule: its rows
# may travel far, and four-well flows stalled for 1300 steps, then went on to the wells.
STALL_GAIN = 0.1
STALL_STEPS = 400
# Far particles (the fifth statistic): a flow is not done while its farthest particles lie
# more than FAR_TOLERANCE times as far out from the target's centre, in units of the target
# rows' farthest, as the farthest rows of a random half of the target lie in units of the
# other half's (the 0.9 quantile over FAR_SPLITS splits).  None: it does not count.
FAR_TOLERANCE = 3.0
FAR_SPLITS = 64
# In integration, the level is also read off the particles' start, about their own centre
# (the larger counts).  False: the target's alone (benchmarks).
FAR_SOURCE_LEVEL = True


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


def _each_kernel(distances, bandwidths):
    """The energy kernel -|a - b|, then a Gaussian of each column of ``bandwidths`` (K, B)."""
    yield -distances
    for column in bandwidths.unbind(1):
        yield _gaussian(distances, column)


def _kernels(distances, bandwidths):
    """Kernel values (1 + B, K, m, n): the energy kernel and the B Gaussians."""
    return torch.stack(list(_each_kernel(distances, bandwidths)))


def _pair_sum(kernel, mask_a, mask_b):
    """Sum of kernel values (..., K, m, n) over the pairs of masked rows: (..., K)."""
    return ((kernel @ mask_b[..., None]).squeeze(-1) * mask_a).sum(-1)


def _kernel_means(distances, bandwidths, mask_a, mask_b=None):
    """Means (1 + B, K) of the kernels over the pairs of masked rows of a and b.

    The masks are weights: 0 on padding, 1 on a row, ``c`` on a row that stands for ``c``
    identical rows.  With ``mask_b`` None, ``distances`` are within one sample and the
    pairs of distinct rows count (``i != j``; not a row's copies with one another).  The
    kernels are reduced one after the other: no (1 + B, K, m, n) copy.
    """
    within = mask_b is None
    mask_b = mask_a if within else mask_b
    sums = []
    for kernel in _each_kernel(distances, bandwidths):
        total = _pair_sum(kernel, mask_a, mask_b)
        if within:
            diagonal = torch.diagonal(kernel, dim1=-2, dim2=-1)
            total = total - (diagonal * mask_a.square()).sum(-1)
        sums.append(total)
    count_a, count_b = mask_a.sum(1), mask_b.sum(1)
    pairs = count_a.square() - mask_a.square().sum(1) if within else count_a * count_b
    return torch.stack(sums) / pairs.clamp_min(1.0)


def _statistics(a, mask_a, b, mask_b, bandwidths, within_b):
    """Kernel statistics (1 + B, K) and the distances (K, m, n) between rows of a and b."""
    distances = _distances(a, b)
    cross = _kernel_means(distances, bandwidths, mask_a, mask_b)
    within_a = _kernel_means(_distances(a, a), bandwidths, mask_a)
    return within_a + within_b - 2.0 * cross, distances


def two_sample_statistics(a, mask_a, b, mask_b, bandwidth):
    """Unbiased two-sample statistics per flow between masked rows of a and b: (2, K).

    ``a`` (K, m, d), ``b`` (K, n, d); masks (K, m), (K, n) are 1 on rows that count, 0 on
    padding.  Row 0 is the squared energy distance, row 1 the squared MMD with a Gaussian
    kernel of ``bandwidth`` (K,).  Within-sample means leave out the pairs of a row with
    itself, so the expectation is the population value (zero for two samples of one law)
    and a value can be negative.
    """
    bandwidths = bandwidth[:, None] if bandwidth.dim() == 1 else bandwidth
    within_b = _kernel_means(_distances(b, b), bandwidths, mask_b)
    return _statistics(a, mask_a, b, mask_b, bandwidths, within_b)[0]


def _local_bandwidth(distances, mask, divisors=(4.0,)):
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
    scale = torch.tensor(divisors, dtype=median.dtype, device=median.device)
    bandwidth = torch.maximum(median[:, None] / scale, nearest[:, None])
    # Fewer than two distinct rows: any positive bandwidth will do.
    return torch.where(bandwidth > 0, bandwidth, torch.ones_like(bandwidth))


def _nearest_other(distances, mask):
    """Per row (K, n), the distance to the nearest other masked row; inf on padding."""
    n = distances.shape[1]
    other = (mask[:, None, :] > 0) & ~torch.eye(n, dtype=torch.bool, device=distances.device)
    nearest = distances.masked_fill(~other, math.inf).min(2).values
    return nearest.masked_fill(mask == 0, math.inf)


def _stray_share(nearest, mask, radius):
    """Per flow (K,), the share of masked rows whose nearest target row is beyond ``radius``."""
    return ((nearest > radius[:, None]) * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _feature_radii(rows, mask):
    """Per flow, each feature's sorted values (K, d, n) and radius (K, d): the distance
    within which ``1 - STRAY_SHARE`` of the rows have another value of the feature (nan for
    a feature of one value, which does not count).

    Another *value*: a row whose value other rows share is as far as the next value up or
    down, so that a discrete feature's radius is its spacing, not zero (a particle between
    two levels of a count is no stray).
    """
    real = mask[..., None] > 0
    padded = rows.masked_fill(~real, math.inf).transpose(1, 2).contiguous()
    values = padded.sort(-1).values  # padding last
    n = values.shape[-1]
    below = torch.searchsorted(values, padded) - 1  # the largest smaller value
    above = torch.searchsorted(values, padded, right=True)  # the smallest larger one
    lower = torch.where(below >= 0, padded - values.gather(-1, below.clamp_min(0)), math.inf)
    upper = torch.where(above < n, values.gather(-1, above.clamp_max(n - 1)) - padded, math.inf)
    gaps = torch.minimum(lower, upper).transpose(1, 2)
    gaps = gaps.masked_fill(~real | ~torch.isfinite(gaps), math.nan)
    return values, gaps.nanquantile(1.0 - STRAY_SHARE, dim=1)


def _value_distances(values, points):
    """(K, m, d): each point's distance to the nearest value of each feature in ``values``
    (K, d, n), sorted, padding (inf) last."""
    points = points.transpose(1, 2).contiguous()
    after = torch.searchsorted(values, points)
    n = values.shape[-1]
    lower = values.gather(-1, (after - 1).clamp_min(0))
    upper = values.gather(-1, after.clamp_max(n - 1))
    return torch.minimum((points - lower).abs(), (upper - points).abs()).transpose(1, 2)


def _random_halves(real, n_splits, generator, dtype):
    """(n_splits, K, n): per random split of each flow's real rows (``real`` (K, n)), whether
    a row is in the first half (``floor(count / 2)`` rows; the other real rows are the
    second).  The keys are drawn on ``generator`` in ``dtype``, real rows ranked first."""
    keys = torch.rand(n_splits, *real.shape, generator=generator, dtype=dtype)
    rank = (keys.to(real.device) + 2.0 * ~real).argsort(-1).argsort(-1)
    return real & (rank < torch.floor(real.sum(-1) / 2)[:, None])


def _far_level(norms, mask, generator):
    """Per flow (K,): how far out a fresh sample's farthest row lies, in units of the
    target rows' farthest: over ``FAR_SPLITS`` random halves of the masked rows, the 0.9
    quantile of the largest ``norms`` (distances to the target's centre) of one half over
    the other half's (inf where over 10 % of the splits have no such ratio: an empty half,
    or one whose only row is the centre, as with fewer than 4 distinct rows in 1-D).

    The target's own halves set it, so that a heavy tail, where a fresh row can land far
    beyond the target's rows, sets a higher level than a light one (1.1-1.4 for Gaussians).
    """
    real = mask > 0
    first = _random_halves(real, FAR_SPLITS, generator, norms.dtype)
    top_first = norms.masked_fill(~first, -math.inf).max(-1).values
    top_second = norms.masked_fill(~(real & ~first), -math.inf).max(-1).values
    levels = (top_second / top_first).T  # (K, splits)
    levels = levels.masked_fill(~(torch.isfinite(levels) & (levels > 0)), math.inf)
    # An order statistic, not an interpolated quantile: between two inf it would be nan.
    return levels.sort(1).values[:, math.ceil(0.9 * (FAR_SPLITS - 1))]


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


def _copy_weights(rows, mask):
    """Per flow (K, n): on the first of identical masked rows their number of copies, 0 on
    the other copies and on padding.  Without copies, ``mask`` itself."""
    weights = mask
    for k, (flow, real) in enumerate(zip(rows, mask)):
        where = torch.nonzero(real > 0).squeeze(1)
        unique, inverse = torch.unique(flow[where], dim=0, return_inverse=True)
        if len(unique) == len(where):
            continue
        position = torch.arange(len(where), device=rows.device)
        first = torch.full((len(unique),), len(where), dtype=torch.long, device=rows.device)
        first = first.scatter_reduce(0, inverse, position, "amin")
        counts = torch.bincount(inverse, minlength=len(unique)).to(mask.dtype)
        weights = weights.clone() if weights is mask else weights
        weights[k, where] = 0.0
        weights[k, where[first]] = counts
    return weights


def _distinct(rows, mask):
    """Per flow, its distinct masked rows in order of first occurrence, and their counts.

    ``rows`` (K, n, d), ``mask`` (K, n) 1 on real rows; returns rows (K, u, d) and weights
    (K, u), the number of copies of each row (0 on padding).  Without copies, the rows and
    mask as they are.
    """
    weights = _copy_weights(rows, mask)
    if weights is mask:
        return rows, mask
    keep = weights > 0
    width = int(keep.sum(1).max())
    out = rows.new_zeros(len(rows), width, rows.shape[2])
    compact = mask.new_zeros(len(rows), width)
    for k, kept in enumerate(keep):
        count = int(kept.sum())
        out[k, :count], compact[k, :count] = rows[k, kept], weights[k, kept]
    return out, compact


def _effective_size(weights):
    """(sum w)^2 / sum w^2 over the last axis: the number of rows when all weigh alike."""
    return weights.sum(-1).square() / weights.square().sum(-1).clamp_min(1e-300)


class EnergyStopping:
    """Per-flow stopping rule for K packed flows; see the module docstring.

    Parameters
    ----------
    y, w_y, x, w_x : tensors
        Particles (K, M, d) with weights (K, M) and target rows (K, N, d) with weights
        (K, N), as in ``train_flow`` (zero weight on padding).  Identical particles are
        found in ``y`` here: they stay identical as they move.
    max_rows : int
        Rows per side and flow compared at each check (a fixed random subsample).
    factor : float
        A flow stops when each statistic is at most ``factor`` times its floor.
    generator : torch.Generator
        A CPU generator for the subsamples and splits (kept apart from the critic's, so
        the particles' path does not depend on whether the rule is on).
    divisors : tuple of float
        The Gaussian kernels' bandwidths: the target's median distance over each (at least
        its median nearest-neighbour distance).
    start_factor : float or None
        The bar at the first check (``check(y, first=True)``); None: ``factor``.
    patience : int or None
        Steps after which a flow whose score has not fallen by ``STALL_GAIN`` stops (the
        run's record of the checks applies it, ``flow._RuleRecord``); None: never.
    far : bool
        Whether the far particles' statistic counts (False: its floor is inf).
    """

    def __init__(
        self,
        y,
        w_y,
        x,
        w_x,
        *,
        max_rows,
        factor,
        generator,
        divisors=DIVISORS,
        start_factor=None,
        patience=None,
        far=True,
    ):
        device = x.device
        self.patience = patience
        # float64 where the device has it: the U-statistic is a small difference of means.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.factor = factor
        self.start_factor = factor if start_factor is None else start_factor
        # Flows that move only on evidence (integration) start near their targets: a flow
        # that moves can pass its target within a few steps (see flow.EARLY_EVERY).
        self.on_evidence = start_factor is not None
        counts_y = (w_y > 0).sum(1).tolist()
        counts_x = (w_x > 0).sum(1).tolist()
        index_y, mask_y = _subsample(counts_y, max_rows, generator)
        index_x, mask_x = _subsample(counts_x, max_rows, generator)
        self.index_y = index_y.to(device)
        # Identical particles stay identical (one position, one velocity): one unit each,
        # weighted by its copies, as the target's copies below.  Counted as many, a source
        # of 20 rows repeated 10 times never came as close as a fresh sample of 200 rows,
        # and its flow ran to n_steps, moving the rows 3 times farther from their truth.
        self.mask_y = _copy_weights(_gather(y, self.index_y), mask_y.to(device, self.dtype))
        n_particles = _effective_size(self.mask_y)
        pool = _gather(x, index_x.to(device)).to(self.dtype)
        # Identical rows as one unit: distinct rows weighted by their number of copies.
        pool, pool_mask = _distinct(pool, mask_x.to(device, self.dtype))
        # Centre on the target's mean: the distances' expansion then loses no precision.
        count = pool_mask.sum(1)[:, None, None]
        self.center = (pool * pool_mask[..., None]).sum(1, keepdim=True) / count
        self.target, self.mask_x = pool - self.center, pool_mask
        self.n_target = _effective_size(pool_mask)
        distances = _distances(self.target, self.target)
        self.bandwidth = _local_bandwidth(distances, self.mask_x, divisors)
        self.within_target = _kernel_means(distances, self.bandwidth, self.mask_x)
        kernel = _kernels(distances, self.bandwidth)
        floor = self._floor(kernel, self.mask_x, n_particles, generator)
        # Strays: a target row's nearest other target row is beyond the radius for a share
        # STRAY_SHARE of the rows, and so (up to one row fewer) is a fresh row's; the share
        # of particles beyond it is binomial, of spread sqrt(p (1 - p) (1 / m + 1 / n)).
        nearest = _nearest_other(distances, self.mask_x).masked_fill(self.mask_x == 0, math.nan)
        self.radius = nearest.nanquantile(1.0 - STRAY_SHARE, dim=1)
        sizes = 1.0 / n_particles.clamp_min(1.0) + 1.0 / self.n_target.clamp_min(1.0)
        spread = STRAY_TOLERANCE * (STRAY_SHARE * (1.0 - STRAY_SHARE) * sizes).sqrt()
        # Strays in each feature (``_feature_strays``), averaged over the features, with
        # the same floor (a smaller one, from the spread of the target rows' own shares of
        # features, made generation on glass0 worse: C2ST 0.523 -> 0.576).  Above
        # STRAY_MAX_FEATURES no strays count, and no values are kept.
        self.values = self.feature_radius = None
        if x.shape[2] <= STRAY_MAX_FEATURES:
            self.values, self.feature_radius = _feature_radii(self.target, self.mask_x)
        else:
            spread = torch.full_like(spread, math.inf)
        # The first check's floors of the pooled rows (``_start_floor``): on their own
        # random stream, drawn once per flow, so that checking twice decides alike.
        self.start_seed = int(torch.randint(2**31, (), generator=generator))
        # Far particles: their distances to the target's centre (the features' medians)
        # over the target rows' largest, against the level of the target's halves (on a
        # stream of their own: the other draws are as without the statistic).  The
        # particles' k-th largest counts, k their number over the target's (at least 1):
        # the largest of more rows lies farther out.
        real = self.mask_x > 0
        self.far_centre = self.target.masked_fill(~real[..., None], math.nan).nanmedian(1).values
        norms = (self.target - self.far_centre[:, None]).norm(dim=-1)
        self.far_radius = norms.masked_fill(~real, -math.inf).max(1).values
        self.far_rank = (n_particles / self.n_target.clamp_min(1.0)).ceil().clamp_min(1.0)
        far_floor = torch.full_like(spread, math.inf)
        if far and FAR_TOLERANCE is not None:
            far_generator = torch.Generator().manual_seed(self.start_seed + 1)
            level = _far_level(norms, self.mask_x, far_generator)
            if self.on_evidence and FAR_SOURCE_LEVEL:
                # Integration: the level of the particles' start too, about their own centre:
                # where the source's farthest rows lie far beyond its bulk, so may theirs.
                start = self._particles(y)
                own = start.masked_fill(~(self.mask_y > 0)[..., None], math.nan)
                start = (start - own.nanmedian(1).values[:, None]).norm(dim=-1)
                level = torch.maximum(level, _far_level(start, self.mask_y, far_generator))
            far_floor = FAR_TOLERANCE * level
        self.floor = torch.cat([floor, spread[None], spread[None], far_floor[None]])
        self.start_floor = self.start_known = None

    def _floor(self, kernel, pool_mask, n_particles, generator, n_target=None):
        """RMS (1 + B, K) of the kernel statistics between random halves of the pooled rows
        (the target's, or ``_start_floor``'s), rescaled to ``n_particles`` and ``n_target``.

        The halves split the distinct rows; each row's weight (its copies) goes with it.
        """
        n_target = self.n_target if n_target is None else n_target
        # Random halves of each flow's real rows as columns (K, rows, splits); kernel sums
        # within and across them as matrix products: (2, K, splits) each.
        halves = _random_halves(pool_mask > 0, _N_SPLITS, generator, self.dtype)
        first = (halves.to(self.dtype) * pool_mask).permute(1, 2, 0)
        second = pool_mask[..., None] - first
        kernel_first = kernel @ first
        sum_11 = (kernel_first * first).sum(-2)
        sum_12 = (kernel_first * second).sum(-2)
        sum_22 = _pair_sum(kernel, pool_mask, pool_mask)[..., None] - 2.0 * sum_12 - sum_11
        diagonal = torch.diagonal(kernel, dim1=-2, dim2=-1)  # (2, K, rows)
        diag_1 = (diagonal[..., None] * first.square()).sum(-2)
        diag_2 = (diagonal[..., None] * second.square()).sum(-2)
        # Per flow and split (K, splits): the halves' weights, sums of squared weights.
        a, b = first.sum(1), second.sum(1)
        a2, b2 = first.square().sum(1), second.square().sum(1)
        values = (
            (sum_11 - diag_1) / (a.square() - a2).clamp_min(1.0)
            + (sum_22 - diag_2) / (b.square() - b2).clamp_min(1.0)
            - 2.0 * sum_12 / (a * b).clamp_min(1.0)
        )
        # The spread of the statistic for two samples of one law scales as 1/m + 1/n (n,
        # a, b effective sizes): each split's value is rescaled to the sizes compared.
        sizes = 1.0 / n_particles.clamp_min(1.0) + 1.0 / n_target.clamp_min(1.0)
        halves = a2 / a.square().clamp_min(1.0) + b2 / b.square().clamp_min(1.0)
        halves = torch.where(halves > 0, halves, torch.ones_like(halves))
        floor = (values * (sizes[:, None] / halves)).square().mean(-1).sqrt()
        return torch.where(floor > 0, floor, torch.full_like(floor, math.inf))

    def select(self, flows):
        """The rule of ``flows`` (indices) alone: their subsamples, kernels and floors."""
        new = copy.copy(self)
        index = torch.as_tensor(flows, dtype=torch.long, device=self.target.device)
        names = ("index_y", "mask_y", "center", "target", "mask_x", "n_target", "bandwidth")
        for name in (*names, "radius", "far_centre", "far_radius", "far_rank"):
            setattr(new, name, getattr(self, name).index_select(0, index))
        if self.values is not None:
            new.values = self.values.index_select(0, index)
            new.feature_radius = self.feature_radius.index_select(0, index)
        new.within_target = self.within_target.index_select(1, index)
        new.floor = self.floor.index_select(1, index)
        if self.start_floor is not None:
            new.start_floor = self.start_floor.index_select(1, index)
            new.start_known = self.start_known.index_select(0, index)
        return new

    def statistics(self, y):
        """Statistics (4 + B, K) between each flow's particle subsample and target subsample.

        The energy distance, the B Gaussian MMDs, the share of particles farther from every
        target row than the stray radius, less the share expected for a fresh sample, the
        same share in each feature, averaged over the features, and the ``far_rank``-th
        farthest particle's distance from the target's centre over the farthest target
        row's (``_far``).
        """
        particles = self._particles(y)
        values, distances = _statistics(
            particles, self.mask_y, self.target, self.mask_x, self.bandwidth, self.within_target
        )
        nearest = distances.masked_fill(self.mask_x[:, None, :] == 0, math.inf).min(2).values
        strays = _stray_share(nearest, self.mask_y, self.radius) - STRAY_SHARE
        return torch.cat(
            [values, strays[None], self._feature_strays(particles)[None], self._far(particles)]
        )

    def _far(self, particles):
        """(1, K): each flow's ``far_rank``-th farthest particle from the target's centre,
        over the target rows' farthest."""
        norms = (particles - self.far_centre[:, None]).norm(dim=-1)
        norms = norms.masked_fill(self.mask_y == 0, -math.inf).sort(1, descending=True).values
        rank = (self.far_rank.long() - 1).clamp_max(norms.shape[1] - 1)
        ratio = norms.gather(1, rank[:, None]).squeeze(1) / self.far_radius
        # No spread to measure against (one distinct target row): the statistic is 0.
        ratio = torch.where(self.far_radius > 0, ratio, torch.zeros_like(ratio))
        return ratio.clamp_min(0.0)[None]

    def _particles(self, y):
        """Each flow's particle subsample (K, m, d), centred as the target rows are."""
        return _gather(y, self.index_y).to(self.dtype) - self.center

    def _feature_strays(self, particles):
        """Per flow (K,): the share of particles farther in a feature from every target
        row's value than the feature's radius, less ``STRAY_SHARE``, averaged over the
        features of more than one value (0 where the strays do not count)."""
        if self.values is None:
            return particles.new_zeros(len(particles))
        beyond = _value_distances(self.values, particles) > self.feature_radius[:, None]
        share = (beyond * self.mask_y[..., None]).sum(1) / self.mask_y.sum(
            1, keepdim=True
        ).clamp_min(1.0)
        counted = torch.isfinite(self.feature_radius)
        excess = torch.where(counted, share - STRAY_SHARE, torch.zeros_like(share))
        return excess.sum(1) / counted.sum(1).clamp_min(1)

    def check(self, y, first=False):
        """(statistics (4 + B, K), score (K,), converged (K,)) for particles ``y``.

        The score is the largest ratio of a statistic to its floor; a flow has converged
        when its score is at most ``factor`` (``start_factor`` at the ``first`` check, where
        a flow that moves only on evidence also stays with fewer than ``START_MIN_ROWS``
        distinct target rows, and its score counts against the larger floors of
        ``_start_floor``, the far particles not counted).  The score returned is always
        against the target's floors, so that the run's record of the checks is on one
        scale (its best check is ranked by ``ranking``).
        """
        values = self.statistics(y)
        score = (values / self.floor).max(0).values
        if not (first and self.on_evidence):
            return values, score, score <= (self.start_factor if first else self.factor)
        # Too few distinct target rows to tell a move from noise: the flow stays.  Nor do a
        # few far rows set a flow moving: far particles keep a moving flow going.
        stays = (self.mask_x > 0).sum(1) < START_MIN_ROWS
        decisive = self.ranking(values)
        if START_POOLED:
            moves = (decisive > self.start_factor) & ~stays
            decisive = (values[:-1] / self._start_floor(y, moves)[:-1]).max(0).values
        return values, score, (decisive <= self.start_factor) | stays

    def ranking(self, values):
        """(K,) the score of ``values`` (as ``check`` returns them) without the far
        particles' statistic: the run's best check is the lowest.  A far particle or two
        kept the score of a flow that swung past its target and back at their level, above
        half its score at the end, and the flow no longer went back to its best check."""
        return (values[:-1] / self.floor[:-1]).max(0).values

    def _start_floor(self, y, moves):
        """The floors (4 + B, K) of a flow's first check that moves only on evidence.

        The target's halves are a fresh sample's floor only where the target holds the rows
        a fresh sample would: a source with rows of its own far out in a heavy tail (KEEL
        shuttle: a feature's values 1 000 robust spreads out, in a few rows a side) scored 11
        as two halves of one table, against its target's halves, and its flow ran all its
        steps.  So a flow whose score clears the bar against the target's floors clears it
        against the floors of the pooled rows too, particles and target rows split at
        random (a permutation test of "the particles are a fresh sample of the target"):
        each kernel statistic's floor is the larger of the two.  Computed once per flow,
        for the flows that ``moves`` (K,) would set moving against the target's floors.
        """
        if self.start_floor is None:
            self.start_floor = self.floor.clone()
            self.start_known = torch.zeros_like(moves)
        needed = moves & ~self.start_known
        if not needed.any():
            return self.start_floor
        particles = self._particles(y)
        n_particles = _effective_size(self.mask_y)
        first = slice(START_POOL_ROWS)  # the subsamples' order is random: a subsample
        for k in torch.nonzero(needed).flatten().tolist():
            rows = torch.cat([particles[k, first], self.target[k, first]])[None]
            mask = torch.cat([self.mask_y[k, first], self.mask_x[k, first]])[None]
            kernel = _kernels(_distances(rows, rows), self.bandwidth[k : k + 1])
            generator = torch.Generator().manual_seed(self.start_seed)
            pooled = self._floor(
                kernel, mask, n_particles[k : k + 1], generator, self.n_target[k : k + 1]
            )[:, 0]
            kernels = len(pooled)
            self.start_floor[:kernels, k] = torch.maximum(self.floor[:kernels, k], pooled)
        self.start_known |= needed
        return self.start_floor
