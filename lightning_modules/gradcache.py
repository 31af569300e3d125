"""GradCache: the gradients of one large in-batch-negatives batch with the activation memory of a small chunk.

From Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(https://arxiv.org/abs/2101.06983); sentence-transformers' ``CachedMultipleNegativesRankingLoss``. The loss of a
contrastive batch couples every row with every other, but it depends on the encoder only through the embeddings::

    e_c = embed(chunk_c)        for each chunk of c rows, without grad       # (c, D) each, no activations kept
    L = loss(cat(e))                                                          # over all B rows: all negatives
    g = dL/de                                                                 # (B, D) gradient cache
    Σ_c (embed(chunk_c) · g_c).sum()  backpropagated chunk by chunk           # same dL/dθ as one big batch

Each chunk is re-embedded under the random state its first pass used, so dropout draws the same masks.

Lightning and DDP: the step runs inside ``training_step``, i.e. inside DDP's forward, where DDP's gradient hooks are not
armed yet, so the chunks backpropagated there accumulate gradients locally (the module zeroes gradients after each
optimizer step instead of between ``training_step`` and ``backward``, where Lightning would). The last chunk of every
tower (encoder) is re-embedded but not backpropagated: its term (and a learnable scale's) is returned inside the loss,
so Lightning's backward runs once through DDP's hooks, reaches every parameter, and each parameter's summed gradient is
all-reduced once, at the end.
"""

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


class RandomState:
    """The CPU (and CUDA device) random state, taken before a chunk's first pass, restored for its second."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def restored(self) -> Iterator[None]:
        # fork_rng puts the state back afterwards: the second passes leave the random stream where the first left it
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def split_features(features: dict[str, Tensor], chunk_size: int) -> list[dict[str, Tensor]]:
    """A column's features (tokens, masks, pixels) cut into chunks of ``chunk_size`` rows."""
    rows = next(iter(features.values())).shape[0]
    return [{k: v[start : start + chunk_size] for k, v in features.items()} for start in range(0, rows, chunk_size)]


def cached_step(
    embed: Callable[[dict[str, Tensor]], Tensor],
    columns: list[dict[str, Tensor]],
    loss_fn: Callable[..., Tensor],
    chunk_size: int,
    differentiable: dict[str, Tensor] | None = None,
    grad_factor: float = 1.0,
    towers: list[Hashable] | None = None,
) -> Tensor:
    """Run one GradCache step; returns the loss whose backward completes the parameters' gradients.

    Args:
        embed: the features of one chunk → its (c, D) embeddings.
        columns: one features dict per loss column (anchor, positive, hard negatives…), each of B rows.
        loss_fn: ``loss_fn(*embeddings, **differentiable)`` → scalar loss over all B rows.
        chunk_size: rows embedded at once.
        differentiable: extra loss inputs that depend on parameters (CLIP's learnable ``scale``).
        grad_factor: the factor Lightning applies to the returned loss before backward (1 / accumulate_grad_batches),
            applied here to the gradients backpropagated inside the step.
        towers: per column, which parameters embed it (columns with equal values share them; default: all share).
            Only the last chunk of each tower's last column is left to the returned loss: one chunk's activations
            held for a text encoder, one per tower for CLIP's image and text towers.

    Returns:
        A scalar equal to the loss whose gradient w.r.t. the parameters, once backpropagated with ``grad_factor``, adds
        what the step has not yet backpropagated: the last chunk of each tower and the extra inputs.
    """
    device = next(iter(columns[0].values())).device
    chunks = [split_features(features, chunk_size) for features in columns]
    states: list[list[RandomState]] = []
    embeddings = []
    with torch.no_grad():
        for column in chunks:
            states.append([])
            parts = []
            for chunk in column:
                states[-1].append(RandomState(device))
                parts.append(embed(chunk))
            embeddings.append(torch.cat(parts))  # (B, D)
    leaves = [e.detach().requires_grad_() for e in embeddings]
    extra = {name: t.detach().requires_grad_() for name, t in (differentiable or {}).items()}
    loss = loss_fn(*leaves, **extra)
    grads = torch.autograd.grad(loss, [*leaves, *extra.values()])
    cache, extra_grads = grads[: len(leaves)], grads[len(leaves) :]
    surrogate = sum((t * g).sum() for t, g in zip((differentiable or {}).values(), extra_grads))
    towers = towers or [None] * len(columns)
    last_of_tower = {tower: col for col, tower in enumerate(towers)}  # column index of each tower's last column
    for col, (column, column_states, grad) in enumerate(zip(chunks, states, cache)):
        start = 0
        for i, (chunk, state) in enumerate(zip(column, column_states)):
            with state.restored():
                part = embed(chunk)  # (c, D) with activations, for this chunk only
            part_grad = grad[start : start + part.shape[0]]  # (c, D)
            start += part.shape[0]
            if i < len(column) - 1 or last_of_tower[towers[col]] != col:
                part.backward(part_grad * grad_factor)
            else:  # left to Lightning's backward: it carries DDP's one all-reduce for every parameter this step
                surrogate = surrogate + (part * part_grad).sum()
    return loss.detach() + surrogate - surrogate.detach()
