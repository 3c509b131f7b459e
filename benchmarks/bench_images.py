"""The image path on the CPU: the CNN critic and the Autoencoder, old implementation against new.

What is measured
----------------
Per-step wall-clock time of the previous implementation (kept in this script, below) and of
the current one, in one process, interleaved repeat by repeat so a busy spell of a shared
machine hits both alike; the table gives the medians and old / new.

* **CNN critic update**: one ``ConvCritic.train_step`` (forward with dropout, autograd
  backward, Adam, spectral normalisation of the dense head and one block power iteration per
  convolution) for K = 10 flows of 80 particles and 80 target images of 28 x 28, with the
  constraint's steady state (after the 30 first updates, which both implementations run
  alike with more iterations).  Two settings: the library's default CNN (``conv_channels``
  (16, 32, 64), dense head (32, 32, 32), ReLU) and the one of ``bench_mnist.py`` ((8, 16,
  32), head (64,), leaky ReLU).  Images are uniform noise in [0, 1]: dense convolutions cost
  the same on any values.
* **CNN velocity**: ``ConvCritic.gradient`` on the 80 particles of each flow (the particle
  step's other cost).
* **bfloat16 drift** (``--drift``, alone): the velocity of the CNN critic trained with
  bfloat16 training passes against the float32-trained one after 1, 5 and 20 updates on
  MNIST digits, beside the float32 critic trained on other dropout draws as a yardstick.
* **Autoencoder step**: one Adam step of ``Autoencoder(image_shape=(28, 28))`` with its
  defaults (``conv_channels`` (32, 64), dense (256, 128), 16 codes, batch 128).

Both implementations start from the same weights and draw the same dropout masks; the
script checks that their outputs agree (``max |diff|`` column) after the timed steps.

With ``--bf16`` each part gets one more row, the current implementation with its bfloat16
option against the same old runs: the CNN critic with ``ConvCritic.train_dtype =
torch.bfloat16`` (training passes in bfloat16; velocity and norms float32) and the
Autoencoder step under bfloat16 autocast (``Autoencoder(train_dtype="bfloat16")``); their
``max |diff|`` is the bfloat16 drift from float32 (weights after the timed updates), not a
check of equality.

With ``--mnist`` it also fits end to end on MNIST-200 (20 training images per digit x 10
digits = 200 images, as ``bench_mnist.py``): ``GPATransporter`` with ``bench_mnist``'s CNN
settings (one flow per digit, 10 x ``--n-generated`` particles, ``stop=None``: a run of
fixed length) and the 16-code
``Autoencoder`` of ``bench_mnist`` (300 epochs), each once with the old implementation
patched in and once as it is now; ``--mnist-steps``, ``--n-generated`` and ``--ae-epochs``
shorten them (the row names say what ran).

How to run (from the repository root)
-------------------------------------
::

    python benchmarks/bench_images.py --quick          # fewer repeats
    python benchmarks/bench_images.py --threads 1      # per-step rows on one torch thread
    python benchmarks/bench_images.py --mnist          # and MNIST-200 end to end
    python benchmarks/bench_images.py --mnist-only --n-generated 8 --mnist-steps 10 --ae-epochs 30
    python benchmarks/bench_images.py --threads 1 --bf16   # and the bfloat16 options
    python benchmarks/bench_images.py --threads 1 --drift  # bfloat16 training's drift

Results go to ``benchmarks/results/bench_images{_quick}{_mnist}{_only}{_Nthread}{_bf16}.{json,md}``
(``--name``: another stem).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from unittest import mock

import _common
import numpy as np
import torch
import torch.nn.functional as F

import sklearn_gpa._engine as engine
from sklearn_gpa import autoencoder as autoencoder_module
from sklearn_gpa._engine.conv import ConvCritic, ConvLayout
from sklearn_gpa._engine.divergences import get_divergence
from sklearn_gpa._engine.networks import forward, make_activation
from sklearn_gpa._engine.optim import adam_step
from sklearn_gpa.autoencoder import Autoencoder, _Adam, _initialize, _train_step

K, ROWS = 10, 80
# Whether to add rows for the bfloat16 options (``--bf16``).
BF16 = False
CRITIC_SETTINGS = {
    "default CNN": {"channels": (16, 32, 64), "hidden": (32, 32, 32), "activation": "relu"},
    "bench_mnist CNN": {"channels": (8, 16, 32), "hidden": (64,), "activation": "leaky_relu"},
}


# ------------------------------------------------------------- the previous implementation
class OldConvLayout(ConvLayout):
    """``ConvLayout`` as it was: contiguous (NCHW) maps, dropout mask as a bool product, the
    norm of a convolution from an SVD of its power-iteration block."""

    def forward(self, flat, activation, z, dropout_generator=None):
        k, t, _ = z.shape
        x = z.transpose(0, 1).reshape(t, k * self.image_shape[0], *self.image_shape[1:])
        for weight, bias in self.convolutions(flat):
            x = F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding, groups=k)
            x, _ = activation.forward(x)
            if dropout_generator is not None and self.dropout > 0:
                keep = torch.rand(
                    x.shape, generator=dropout_generator, dtype=x.dtype, device=x.device
                )
                x = x * (keep >= self.dropout) / (1.0 - self.dropout)
        x = x.reshape(t, k, math.prod(self.map_shapes[-1])).transpose(0, 1)
        phi, _, _ = forward(self.head.layers(self.head_params(flat)), activation, x)
        return phi

    def conv_norm(self, index, weight, u):
        from sklearn_gpa._engine.conv import _orthonormalize

        k, r = self.n_flows, u.shape[0]
        v = F.conv2d(u, weight, stride=self.stride, padding=self.padding, groups=k)
        sigma = torch.linalg.matrix_norm(v.reshape(r, k, -1).transpose(0, 1), ord=2)
        height, width = self.map_shapes[index][1:]
        extra = [
            size - ((n - 1) * self.stride - 2 * self.padding + self.kernel_size)
            for size, n in zip((height, width), v.shape[2:])
        ]
        back = F.conv_transpose2d(
            v, weight, stride=self.stride, padding=self.padding, output_padding=extra, groups=k
        )
        u.copy_(_orthonormalize(back, k))
        return sigma[:, None]


class OldConvCritic(ConvCritic):
    """``ConvCritic`` as it was: autograd with respect to the whole flat parameter vector."""

    def _write_gradient(self, z, n_particles, w_y, w_x, with_value):
        params = self.params.detach().requires_grad_(True)
        with torch.enable_grad():
            phi = self.layout.forward(params, self.activation, z, self._dropout_generator())
            value, grad_phi = self._objective_gradient(
                phi.detach(), n_particles, w_y, w_x, with_value
            )
            (grad,) = torch.autograd.grad(phi, params, grad_phi)
        self.grad[: self.layout.n_weights].copy_(grad[: self.layout.n_weights])
        return value


class OldAdam(_Adam):
    """The Autoencoder's Adam as it was: gradients zeroed after each step."""

    def step(self):
        grads = [p.grad for p in self.parameters]
        adam_step(
            self.parameters,
            grads,
            self.exp_avg,
            self.exp_avg_sq,
            self.steps,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
        )
        torch._foreach_zero_(grads)


def old_train_step(encoder, decoder, optimizer, rows, dtype=None):
    """The Autoencoder's training step as it was (loss as mean of squares; float32)."""
    loss = torch.mean((decoder(encoder(rows)) - rows) ** 2)
    loss.backward()
    optimizer.step()
    return loss.detach()


@contextlib.contextmanager
def _contiguous_layout(*modules):
    """The Autoencoder's previous training layout: the modules as they are (NCHW)."""
    yield


# ------------------------------------------------------------------------ per step
def interleaved(candidates, repeats):
    """Medians of wall-clock and CPU seconds (this process) of each candidate, in turn.

    On a shared machine the CPU time is the steadier measure: waiting for a core does not
    count in it (with several torch threads it counts their spinning at barriers).
    """
    wall = {name: [] for name in candidates}
    cpu = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(repeats):
        for name in names[::-1] if repeat % 2 else names:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            candidates[name]()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return _common.medians(wall), _common.medians(cpu)


def make_critic(layout_class, critic_class, setting):
    layout = layout_class(784, (1, 28, 28), setting["channels"], setting["hidden"], K)
    critic = critic_class(
        layout,
        make_activation(setting["activation"]),
        get_divergence("kl", None),
        lipschitz=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    critic._exact_left = 0  # the steady state: one power iteration per update
    return critic


def critic_rows(name, setting, repeats):
    data = torch.rand(K, 2 * ROWS, 784, generator=torch.Generator().manual_seed(1))
    w = torch.full((K, ROWS), 1.0 / ROWS)
    critics = {
        "old": make_critic(OldConvLayout, OldConvCritic, setting),
        "new": make_critic(ConvLayout, ConvCritic, setting),
    }
    if BF16:
        critics["bf16"] = make_critic(ConvLayout, ConvCritic, setting)
        critics["bf16"].train_dtype = torch.bfloat16
    for critic in critics.values():  # warm-up (oneDNN primitive creation)
        critic.train_step(data, ROWS, w, w)
    update = interleaved(
        {n: (lambda c=c: c.train_step(data, ROWS, w, w)) for n, c in critics.items()}, repeats
    )
    velocity = interleaved(
        {n: (lambda c=c: c.gradient(data[:, :ROWS])) for n, c in critics.items()}, repeats
    )
    # Both took 1 + repeats updates from the same start with the same dropout draws.
    params = {n: float((critics["old"].params - c.params).abs().max()) for n, c in critics.items()}
    grads = {n: c.gradient(data[:, :ROWS]) for n, c in critics.items()}
    rows = [
        row(f"CNN critic update ({name})", update, params["new"]),
        row(f"CNN velocity ({name})", velocity, float((grads["old"] - grads["new"]).abs().max())),
    ]
    if BF16:
        # The velocity is float32 in both; it differs by the weights' drift in training.
        rows.append(
            row(f"CNN critic update ({name}), bfloat16 training", update, params["bf16"], "bf16")
        )
    return rows


def autoencoder_row(repeats):
    estimator = Autoencoder(image_shape=(28, 28))
    estimator.output_activation_ = "sigmoid"
    rows = torch.rand(128, 784, generator=torch.Generator().manual_seed(1))
    models = {}
    for name in ("old", "new"):
        encoder, decoder = estimator._build(784, (256, 128))
        generator = torch.Generator().manual_seed(0)
        _initialize(encoder, generator)
        _initialize(decoder, generator)
        models[name] = (encoder, decoder)
    stack = contextlib.ExitStack()
    new = (autoencoder_module._training_layout, _Adam, _train_step)
    implementations = {"old": (_contiguous_layout, OldAdam, old_train_step), "new": new}
    if BF16:
        models["bf16"] = copy.deepcopy(models["new"])
        implementations["bf16"] = (
            *new[:2],
            lambda *args: _train_step(*args, dtype=torch.bfloat16),
        )
    steps = {}
    with stack:
        for name, (encoder, decoder) in models.items():
            layout, adam, train_step = implementations[name]
            stack.enter_context(layout(encoder, decoder))
            optimizer = adam([*encoder.parameters(), *decoder.parameters()], 1e-3, 0.0)
            steps[name] = lambda e=encoder, d=decoder, o=optimizer, t=train_step: t(e, d, o, rows)
            steps[name]()
        times = interleaved(steps, repeats)
        losses = {name: float(step()) for name, step in steps.items()}
    rows = [row("Autoencoder training step", times, abs(losses["old"] - losses["new"]))]
    if BF16:
        rows.append(
            row(
                "Autoencoder training step, bfloat16 autocast",
                times,
                abs(losses["old"] - losses["bf16"]),
                "bf16",
            )
        )
    return rows


def row(name, times, difference, new="new"):
    """A result row from ``(wall, cpu)`` medians (or wall only) and the old - new difference;
    ``new``: the candidate that stands as "new" (``"bf16"``: the bfloat16 option)."""
    wall, cpu = times if isinstance(times, tuple) else (times, None)
    out = {
        "step": name,
        "old_s": wall["old"],
        "new_s": wall[new],
        "ratio": wall["old"] / wall[new],
        "max_abs_diff": difference,
    }
    if cpu is not None:
        out.update(old_cpu_s=cpu["old"], new_cpu_s=cpu[new], cpu_ratio=cpu["old"] / cpu[new])
    return out


# ------------------------------------------------------------------- bfloat16 drift
def drift_rows(updates=(1, 5, 20)):
    """How far bfloat16 training moves the critic: the velocity (float32 in both) of the
    critic trained with ``train_dtype=torch.bfloat16`` against the float32-trained one, and as
    a yardstick the float32 critic trained on other dropout draws, after each number of
    ``updates`` from the same start; relative norms of the differences.  MNIST digits as
    targets (flow k: 80 images of digit k), faint noise as particles."""
    from sklearn_gpa.datasets import fetch_mnist

    X, y = fetch_mnist(subset="train", return_X_y=True)
    X, y = np.asarray(X[:20000], dtype=np.float32), np.asarray(y[:20000])
    X /= X.max()
    rng = np.random.RandomState(0)
    out = []
    for name, setting in CRITIC_SETTINGS.items():
        targets = torch.stack(
            [
                torch.as_tensor(X[rng.choice(np.flatnonzero(y == d), ROWS, replace=False)])
                for d in range(K)
            ]
        )
        particles = 0.3 * torch.rand(K, ROWS, 784, generator=torch.Generator().manual_seed(3))
        data, w = torch.cat([particles, targets], 1), torch.full((K, ROWS), 1.0 / ROWS)
        critics = {n: make_critic(ConvLayout, ConvCritic, setting) for n in ("f32", "seed", "bf16")}
        critics["seed"].generator.manual_seed(123)
        critics["bf16"].train_dtype = torch.bfloat16
        done = 0
        for n in updates:
            for _ in range(n - done):
                for critic in critics.values():
                    critic.train_step(data, ROWS, w, w)
            done = n
            v = {k: c.gradient(particles) for k, c in critics.items()}
            scale = float(v["f32"].norm())
            out.append(
                {
                    "critic": name,
                    "updates": n,
                    "bf16_vs_f32": float((v["bf16"] - v["f32"]).norm()) / scale,
                    "other_dropout_vs_f32": float((v["seed"] - v["f32"]).norm()) / scale,
                }
            )
            print(out[-1], flush=True)
    return out


# ----------------------------------------------------------------------- end to end
def mnist_rows(n_generated, n_steps, ae_epochs):
    from bench_mnist import CNN_SETTINGS, GPA_SETTINGS, IMAGE_SHAPE, N_PER_DIGIT, SEED

    from sklearn_gpa import GPATransporter
    from sklearn_gpa.datasets import fetch_mnist

    X_all, y_all = fetch_mnist(subset="train", return_X_y=True)
    rng = np.random.RandomState(SEED)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y_all == d), N_PER_DIGIT, replace=False) for d in range(10)]
    )
    X, y = X_all[train].astype(np.float64), y_all[train]
    settings = {
        **GPA_SETTINGS,
        **CNN_SETTINGS,
        "n_particles": 10 * n_generated,
        "random_state": SEED,
        # A fixed-length run: the stopping rule's first check (before step 1) would freeze
        # flows and time nothing of the flow.
        "stop": None,
    }
    if n_steps is not None:
        settings["n_steps"] = n_steps
    old_engine = mock.patch.multiple(engine, ConvLayout=OldConvLayout, ConvCritic=OldConvCritic)
    old_ae = mock.patch.multiple(
        autoencoder_module,
        _training_layout=_contiguous_layout,
        _Adam=OldAdam,
        _train_step=old_train_step,
    )
    out, results = [], {}
    fits = [("old", old_engine), ("new", contextlib.nullcontext())]
    if BF16:
        fits.append(("bf16", mock.patch.object(ConvCritic, "train_dtype", torch.bfloat16)))
    for name, patch in fits:
        with patch:
            start, start_cpu = time.perf_counter(), time.process_time()
            model = GPATransporter(**settings).fit(X, y)
            results[name] = (
                time.perf_counter() - start,
                time.process_time() - start_cpu,
                model.particles_,
            )
    times = ({n: r[0] for n, r in results.items()}, {n: r[1] for n, r in results.items()})
    label = (
        f"MNIST-200 GPATransporter CNN fit ({settings['n_steps']} steps, "
        f"{settings['n_particles']} particles per digit)"
    )
    for name in results:
        if name != "old":
            difference = float(np.abs(results["old"][2] - results[name][2]).max())
            suffix = ", bfloat16 training" if name == "bf16" else ""
            out.append(row(f"{label}{suffix}, s", times, difference, name))
    codes = {}
    fits = [("old", old_ae, "float32"), ("new", contextlib.nullcontext(), "float32")]
    if BF16:
        fits.append(("bf16", contextlib.nullcontext(), "bfloat16"))
    for name, patch, train_dtype in fits:
        with patch:
            start, start_cpu = time.perf_counter(), time.process_time()
            ae = Autoencoder(
                16,
                image_shape=IMAGE_SHAPE,
                max_iter=ae_epochs,
                random_state=SEED,
                train_dtype=train_dtype,
            )
            fitted = ae.fit_transform(X)
            codes[name] = (
                time.perf_counter() - start,
                time.process_time() - start_cpu,
                fitted,
                ae.loss_curve_[-1],
            )
    times = ({n: c[0] for n, c in codes.items()}, {n: c[1] for n, c in codes.items()})
    for name in codes:
        if name != "old":
            suffix = ", bfloat16 autocast" if name == "bf16" else ""
            difference = float(np.abs(codes["old"][2] - codes[name][2]).max())
            label = f"MNIST-200 Autoencoder fit ({ae_epochs} epochs){suffix}, s"
            out.append(row(label, times, difference, name))
            out[-1]["final_loss"] = {"old": codes["old"][3], name: codes[name][3]}
    return out


def main():
    parser = _common.parser(__doc__, quick="3 repeats instead of 7")
    parser.add_argument("--mnist", action="store_true", help="also fit MNIST-200 end to end")
    parser.add_argument(
        "--mnist-only", action="store_true", help="only the MNIST-200 fits (implies --mnist)"
    )
    parser.add_argument("--n-generated", type=int, default=60, help="images per digit (60)")
    parser.add_argument(
        "--mnist-steps", type=int, default=None, help="flow steps (bench_mnist's 150)"
    )
    parser.add_argument(
        "--ae-epochs", type=int, default=300, help="Autoencoder epochs (bench_mnist's 300)"
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also the bfloat16 options: ConvCritic.train_dtype, Autoencoder(train_dtype=)",
    )
    parser.add_argument(
        "--drift", action="store_true", help="only the bfloat16 drift of the critic (MNIST)"
    )
    parser.add_argument("--name", default=None, help="result file stem (default: from flags)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the per-step rows (default: torch's); fits choose their own",
    )
    args = parser.parse_args()
    global BF16
    BF16 = args.bf16
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    record = _common.run_record()
    if args.drift:
        drift = drift_rows()
        table = _common.markdown_table(
            ["critic", "updates", "bfloat16 vs float32", "other dropout draws vs float32"],
            [
                [r["critic"], r["updates"], f"{r['bf16_vs_f32']:.3f}"]
                + [f"{r['other_dropout_vs_f32']:.3f}"]
                for r in drift
            ],
        )
        markdown = (
            f"# bfloat16 training drift of the CNN critic\n\n`{record['command']}` "
            f"({record['date']}, {_common.machine_line()}); relative norm of the velocity "
            f"difference (velocities in float32) after the given updates from one start.\n\n"
            f"{table}\n"
        )
        print(markdown)
        stem = args.name or "bench_images_bf16_drift"
        _common.write_results(stem, {**record, "drift": drift}, markdown, machine=False)
        return
    repeats = 3 if args.quick else 7
    rows = []
    args.mnist = args.mnist or args.mnist_only
    if not args.mnist_only:
        for name, setting in CRITIC_SETTINGS.items():
            rows += critic_rows(name, setting, repeats)
            print(*rows[-3:], sep="\n", flush=True)
        rows += autoencoder_row(5 * repeats)
        print(*rows[-2:], sep="\n", flush=True)
    if args.mnist:
        rows += mnist_rows(args.n_generated, args.mnist_steps, args.ae_epochs)
        print(*rows[-4:], sep="\n", flush=True)
    table = _common.markdown_table(
        ["step", "old s", "new s", "old / new", "old CPU s", "new CPU s", "CPU old / new"]
        + ["max abs diff"],
        [
            [r["step"], f"{r['old_s']:.4f}", f"{r['new_s']:.4f}", f"{r['ratio']:.2f}"]
            + [f"{r['old_cpu_s']:.4f}", f"{r['new_cpu_s']:.4f}", f"{r['cpu_ratio']:.2f}"]
            + [f"{r['max_abs_diff']:.1e}"]
            for r in rows
        ],
    )
    markdown = (
        f"# The image path, old implementation against new\n\n`{record['command']}` "
        f"({record['date']}, {_common.machine_line()}, {torch.get_num_threads()} torch "
        f"threads, load average {record['machine']['load_average']}); medians of "
        f"{repeats} interleaved repeats (Autoencoder: {5 * repeats}); wall-clock and CPU "
        f"seconds of this process; max abs diff: largest difference of the two "
        f"implementations' results (weights after the timed updates, velocities, last loss, "
        f"particles, codes).\n\n{table}\n"
    )
    print(markdown)
    suffix = (
        ("_mnist" if args.mnist else "")
        + ("_only" if args.mnist_only else "")
        + (f"_{args.threads}thread" if args.threads else "")
    )
    suffix += "_bf16" if args.bf16 else ""
    stem = args.name or _common.result_stem("bench_images", args.quick, suffix)
    _common.write_results(stem, {**record, "rows": rows}, markdown, machine=False)


if __name__ == "__main__":
    main()
