"""The torch engine of sklearn-gpa: no scikit-learn in here.

``run_gpa`` builds the batched critic for K flows and runs Algorithm 1; ``LearnedFlow``
holds what is needed to replay the flow on new particles.  ``estimate_divergence`` and
``cross_fit_divergence`` train critics to convergence on fixed samples (the divergence
estimates of ``sklearn_gpa.metrics``).  ``activation="groupsort"`` selects the tight
Lipschitz network (MaxMin activations, orthonormal weights) for both.
"""

from __future__ import annotations

import numpy as np
import torch

from .conv import ConvCritic, ConvLayout
from .critic import CONSTRAINTS, Critic
from .device import resolve_device, resolve_dtype, threads_context
from .divergences import DIVERGENCES, get_divergence
from .estimate import (
    CrossFitEstimate,
    DivergenceEstimate,
    cross_fit_divergence,
    estimate_divergence,
)
from .flow import (
    AUTO_BATCH_ROWS,
    FlowResult,
    LearnedFlow,
    pack_rows,
    replay_flow,
    resolve_batch_size,
    train_flow,
)
from .integrators import SOLVERS, get_tableau
from .networks import ACTIVATIONS, MLPLayout, make_activation
from .stopping import EnergyStopping, rows_compared
from .storage import STATE_ENCODINGS, StoredStates

__all__ = [
    "ACTIVATIONS",
    "AUTO_BATCH_ROWS",
    "CONSTRAINTS",
    "DIVERGENCES",
    "SOLVERS",
    "STATE_ENCODINGS",
    "CrossFitEstimate",
    "DivergenceEstimate",
    "STOPPING_RULES",
    "StoredStates",
    "FlowResult",
    "LearnedFlow",
    "cross_fit_divergence",
    "estimate_divergence",
    "pack_rows",
    "replay_flow",
    "resolve_batch_size",
    "resolve_device",
    "resolve_dtype",
    "run_gpa",
    "unpack_rows",
]


STOPPING_RULES = ("auto",)


def run_gpa(
    sources,
    targets,
    *,
    f="kl",
    alpha=None,
    L=1.0,
    constraint="hard",
    penalty=10.0,
    dt=0.1,
    n_steps=500,
    solver="euler",
    hidden_layer_sizes=(32, 32, 32),
    image_shape=None,
    conv_channels=(16, 32, 64),
    activation="relu",
    activation_eps=0.5,
    n_critic=5,
    learning_rate=5e-3,
    tol=None,
    store_every=1,
    store_encoding="float32",
    batch_size=None,
    log_every=50,
    seed=0,
    device="cpu",
    dtype="float32",
    callback=None,
    critic_state=None,
    stop=None,
    frozen=None,
):
    """Run Algorithm 1 for K flows at once.

    ``sources`` and ``targets`` are lists of K NumPy arrays (rows of flow k).  Returns the
    ``FlowResult`` and the ``LearnedFlow`` (NumPy) that replays it.  ``critic_state`` (a
    previous ``FlowResult.critic_state``) continues a run: weights, Adam moments and power-
    iteration vectors carry on as if the run had never stopped.  With ``image_shape``
    (channels, height, width) the critics are CNNs (``conv.ConvLayout``) with convolutions
    of ``conv_channels`` channels and a dense head of ``hidden_layer_sizes``.

    ``batch_size`` is the critic's rows per flow and side (None: every row; "auto": every
    row up to ``AUTO_BATCH_ROWS``, that many above, see ``flow.resolve_batch_size``).

    ``store_encoding`` (``storage.STATE_ENCODINGS``) is how the ``LearnedFlow`` keeps the
    critic states: replay uses the decoded states, the same before and after pickling.

    ``stop="auto"`` stops each flow when its particles are as close to its target as a fresh
    sample of the target would be (``stopping.EnergyStopping``); None runs ``n_steps``.
    ``frozen`` (K,) marks flows that do not move (those a continued run had stopped).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    n_features, hidden = sources[0].shape[1], tuple(hidden_layer_sizes)
    if image_shape is None:
        layout, critic_class = MLPLayout(n_features, hidden, len(sources)), Critic
    else:
        layout = ConvLayout(
            n_features, tuple(image_shape), tuple(conv_channels), hidden, len(sources)
        )
        critic_class = ConvCritic
    batch_size = resolve_batch_size(
        batch_size, max(len(s) for s in sources), max(len(t) for t in targets)
    )
    rows = max(len(s) for s in sources) + max(len(t) for t in targets)
    if batch_size is not None:
        rows = min(rows, 2 * batch_size)
    with threads_context(torch_device, rows * len(sources), layout.macs_per_row):
        generator = torch.Generator(device=torch_device).manual_seed(int(seed))
        critic = critic_class(
            layout,
            make_activation(activation, activation_eps),
            get_divergence(f, alpha),
            lipschitz=L,
            constraint=constraint,
            penalty=penalty,
            learning_rate=learning_rate,
            generator=generator,
            dtype=torch_dtype,
            device=torch_device,
        )
        if critic_state is not None:
            critic.load_state(critic_state)
        y, w_y = pack_rows(sources, torch_dtype, torch_device)
        x, w_x = pack_rows(targets, torch_dtype, torch_device)
        stopping = None
        if stop is not None:
            stopping = EnergyStopping(
                w_y,
                x,
                w_x,
                max_rows=rows_compared(n_features),
                factor=1.0,
                # Its own stream: the particles' path does not depend on the rule.
                generator=torch.Generator().manual_seed(int(seed) + 1),
            )
        result = train_flow(
            y,
            w_y,
            x,
            w_x,
            critic,
            get_tableau(solver),
            dt=dt,
            n_steps=n_steps,
            n_critic=n_critic,
            tol=tol,
            store_every=store_every,
            log_every=log_every,
            batch_size=batch_size,
            generator=generator,
            callback=callback,
            stopping=stopping,
            frozen=frozen,
        )
        result.critic_state = critic.state()
    flow = LearnedFlow(
        layout=layout,
        activation=activation,
        activation_eps=activation_eps,
        solver=solver,
        dt=dt,
        store_every=store_every,
        stored=StoredStates.encode(result.states.cpu().numpy(), store_encoding),
        alive=result.alive.cpu().numpy(),
    )
    return result, flow


def unpack_rows(packed: np.ndarray, counts) -> list:
    """Inverse of ``pack_rows``: the first ``counts[k]`` rows of each flow k."""
    return [packed[k, :n] for k, n in enumerate(counts)]
