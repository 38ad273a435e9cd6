"""Graph-isomorphism data: seeded pairs of Erdős–Rényi graphs, cached under the storage root.

A pair is isomorphic (label ``y = 1``) or not; every non-isomorphic pair is told apart by the
Weisfeiler-Lehman (1-WL) test within ``max_wl_rounds`` rounds, and its *WL score* — the round
that first tells the two graphs apart — sets its difficulty. The dataset holds the requested
share of pairs told apart after 1 round, after 2, and after more, spread over the (size,
edge probability) cells as evenly as the cells allow.

Drawing two independent G(n, p) graphs almost always gives WL score 1 (different degree
sequences), so those pairs come from independent draws; pairs of score 2 and more come from a
graph and a copy rewired by degree-preserving edge swaps (on the complement for dense graphs),
kept for their measured score. Isomorphic pairs copy a graph of a non-isomorphic pair
(``copy_share``) or draw a fresh one; both graphs of every pair have their nodes shuffled.

The cache is ``<storage root>/datasets/graph_isomorphism/<name>-<key>/``: ``data.pt`` then
``meta.json`` naming its digest. A folder without a matching ``meta.json`` is never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from raytrainer import storage
from raytrainer.checkpoint.layout import bytes_digest
from raytrainer.errors import ConfigError
from raytrainer.params import ParamsModel

logger = logging.getLogger(__name__)

NAMED_DATASETS = {"er1000": 1000, "eru10000": 10000}
"""The original project's two dataset sizes (number of pairs), by name."""

CACHE_FOLDER = "datasets/graph_isomorphism"


class DatasetOptions(ParamsModel):
    """How the graph pairs are generated (``dataset_options``)."""

    num_pairs: PositiveInt | None = Field(
        None, description="Pairs in the dataset; default: from the dataset's name."
    )
    min_nodes: PositiveInt = Field(7, description="Smallest graph size.")
    max_nodes: PositiveInt = Field(11, description="Largest graph size.")
    edge_probabilities: list[float] = Field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8],
        description="Erdős–Rényi edge probabilities, one cell per (size, probability).",
    )
    isomorphic_share: float = Field(0.5, ge=0, le=1, description="Share of isomorphic pairs.")
    wl_round1_share: float = Field(
        0.1, ge=0, le=1, description="Share of non-isomorphic pairs WL tells apart in round 1."
    )
    wl_round2_share: float = Field(
        0.2, ge=0, le=1, description="Share told apart in round 2; the rest take longer."
    )
    max_wl_rounds: PositiveInt = Field(5, description="Non-isomorphic pairs: WL rounds at most.")
    copy_share: float = Field(
        0.5, ge=0, le=1, description="Share of isomorphic pairs copying a non-isomorphic graph."
    )
    seed: NonNegativeInt = Field(0, description="Seed of the generator (not the run's seed).")

    @model_validator(mode="after")
    def _consistent(self) -> DatasetOptions:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes={self.min_nodes} is above max_nodes={self.max_nodes}")
        if self.min_nodes < 4:
            raise ValueError("min_nodes must be at least 4 (edge swaps need two edges)")
        if not all(0 < p < 1 for p in self.edge_probabilities) or not self.edge_probabilities:
            raise ValueError("edge_probabilities must be a non-empty list in (0, 1)")
        if self.wl_round1_share + self.wl_round2_share > 1:
            raise ValueError("wl_round1_share + wl_round2_share must be at most 1")
        if self.max_wl_rounds < 3:
            raise ValueError("max_wl_rounds must be at least 3 (the 'rest' bucket)")
        return self


def resolve_options(name: str, options: DatasetOptions) -> DatasetOptions:
    """Fill ``num_pairs`` from the dataset's name; a custom name must give it."""
    if options.num_pairs is not None:
        return options
    if name not in NAMED_DATASETS:
        raise ConfigError(
            f"dataset={name!r} is not one of {sorted(NAMED_DATASETS)}; use one of them or set "
            "dataset_options.num_pairs to generate a dataset of that name."
        )
    return options.model_copy(update={"num_pairs": NAMED_DATASETS[name]})


@dataclass
class GraphPairs:
    """Pairs of graphs as tensors, padded to ``max_nodes``.

    Attributes
    ----------
    adjacency : Tensor [P, 2, N, N] uint8
    num_nodes : Tensor [P, 2] long
    y : Tensor [P] long
        1 for isomorphic pairs.
    wl_score : Tensor [P] long
        The first WL round that tells the graphs apart; 0 for isomorphic pairs.
    """

    adjacency: torch.Tensor
    num_nodes: torch.Tensor
    y: torch.Tensor
    wl_score: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: Any) -> GraphPairs:
        return GraphPairs(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> GraphPairs:
        """Return the pairs on ``device``."""
        return GraphPairs(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def node_mask(self) -> torch.Tensor:
        """``[P, 2, N]`` bool: which node slots hold a node."""
        slots = torch.arange(self.adjacency.shape[-1], device=self.num_nodes.device)
        return slots < self.num_nodes[..., None]

    def split(self, test_size: float, seed: int) -> tuple[GraphPairs, GraphPairs]:
        """Split into (train, test) with a permutation drawn from ``seed``."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        num_test = round(len(self) * test_size)
        return self[order[num_test:]], self[order[:num_test]]


# ------------------------------------------------------------------------------ WL test

_WL_WEIGHTS = np.random.default_rng(2**31 - 1).integers(1, 2**62, size=4096, dtype=np.int64)


def wl_score(
    a: np.ndarray, b: np.ndarray, max_rounds: int, marks: tuple[int, int] | None = None
) -> int:
    """Return the first 1-WL round (1-based) that tells graphs ``a`` and ``b`` apart, else 0.

    Colour refinement runs on the disjoint union, so colours are comparable across the two
    graphs; a node's new colour hashes its colour with the multiset of its neighbours'.
    ``marks`` gives node ``marks[0]`` of ``a`` and node ``marks[1]`` of ``b`` a starting colour
    of their own (as a message marks a node in the agents' inputs).
    """
    n = len(a)
    adj = np.zeros((n + len(b),) * 2, dtype=np.int64)
    adj[:n, :n], adj[n:, n:] = a, b
    colors = np.zeros(len(adj), dtype=np.int64)
    if marks is not None:
        colors[[marks[0], n + marks[1]]] = 1
    for round_id in range(1, max_rounds + 1):
        keys = colors * 1_000_003 + adj @ _WL_WEIGHTS[colors]  # wraps around: a hash
        _, colors = np.unique(keys, return_inverse=True)
        if not np.array_equal(np.sort(colors[:n]), np.sort(colors[n:])):
            return round_id
    return 0


# ------------------------------------------------------------------------------ generator


def _erdos_renyi(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    upper = np.triu(rng.random((n, n)) < p, 1)
    return (upper | upper.T).astype(np.int64)


def _rewired(rng: np.random.Generator, a: np.ndarray, num_swaps: int) -> np.ndarray:
    """A copy of ``a`` with ``num_swaps`` degree-preserving double-edge swaps."""
    n = len(a)
    dense = a.sum() > n * (n - 1) / 2
    out = 1 - a - np.eye(n, dtype=np.int64) if dense else a.copy()  # swap the sparser side
    done = 0
    for _ in range(20 * num_swaps):
        edges = np.argwhere(np.triu(out, 1))
        if done == num_swaps or len(edges) < 2:
            break
        i, j = rng.choice(len(edges), 2, replace=False)
        (u, v), (x, y) = edges[i], edges[j]
        if rng.random() < 0.5:
            x, y = y, x
        if len({u, v, x, y}) < 4 or out[u, x] or out[v, y]:
            continue
        out[u, v] = out[v, u] = out[x, y] = out[y, x] = 0
        out[u, x] = out[x, u] = out[v, y] = out[y, v] = 1
        done += 1
    return 1 - out - np.eye(n, dtype=np.int64) if dense else out


def _draw(
    rng: np.random.Generator, n: int, p: float, bucket: int, max_rounds: int, tries: int
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """A non-isomorphic pair in cell (n, p) whose WL score falls in ``bucket`` (3: 3 or more)."""
    for _ in range(tries):
        a = _erdos_renyi(rng, n, p)
        b = _erdos_renyi(rng, n, p) if bucket == 1 else _rewired(rng, a, int(rng.integers(1, 4)))
        score = wl_score(a, b, max_rounds)
        if score and min(score, 3) == bucket:
            return a, b, score
    return None


def generate(options: DatasetOptions) -> GraphPairs:
    """Generate the dataset ``options`` describe (``num_pairs`` resolved); same seed, same bytes.

    Raises
    ------
    ConfigError
        If no cell can supply pairs of a requested WL score.
    """
    assert options.num_pairs is not None, "resolve num_pairs first (resolve_options)"
    rng = np.random.default_rng(options.seed)
    cells = [
        (n, p)
        for n in range(options.min_nodes, options.max_nodes + 1)
        for p in options.edge_probabilities
    ]
    num_iso = round(options.num_pairs * options.isomorphic_share)
    num_non = options.num_pairs - num_iso
    first = round(num_non * options.wl_round1_share)
    second = round(num_non * options.wl_round2_share)
    pairs: list[tuple[np.ndarray, np.ndarray, int]] = []
    for bucket, count in ((1, first), (2, second), (3, num_non - first - second)):
        exhausted: set[int] = set()  # cells that failed this bucket once are skipped after
        for k in range(count):
            for offset in range(len(cells)):
                cell = (k + offset) % len(cells)
                if cell in exhausted:
                    continue
                pair = _draw(rng, *cells[cell], bucket, options.max_wl_rounds, tries=3000)
                if pair is not None:
                    pairs.append(pair)
                    break
                exhausted.add(cell)
            else:
                raise ConfigError(
                    f"no (size, edge probability) cell gives non-isomorphic pairs of WL score "
                    f"{bucket}{'+' if bucket == 3 else ''}; lower that share in dataset_options "
                    "or widen min_nodes/max_nodes."
                )
    for k in range(num_iso):
        if num_non and k < round(num_iso * options.copy_share):
            a = pairs[int(rng.integers(num_non))][0]
        else:
            a = _erdos_renyi(rng, *cells[k % len(cells)])
        pairs.append((a, a, 0))

    size = options.max_nodes
    adjacency = np.zeros((len(pairs), 2, size, size), dtype=np.uint8)
    num_nodes = np.zeros((len(pairs), 2), dtype=np.int64)
    for i, (a, b, _) in enumerate(pairs):
        for g, graph in enumerate((a, b)):
            order = rng.permutation(len(graph))
            adjacency[i, g, : len(graph), : len(graph)] = graph[np.ix_(order, order)]
            num_nodes[i, g] = len(graph)
    labels = np.array([int(score == 0) for *_, score in pairs])
    scores = np.array([score for *_, score in pairs])
    order = rng.permutation(len(pairs))
    return GraphPairs(
        adjacency=torch.from_numpy(adjacency[order]),
        num_nodes=torch.from_numpy(num_nodes[order]),
        y=torch.from_numpy(labels[order]),
        wl_score=torch.from_numpy(scores[order]),
    )


# ------------------------------------------------------------------------------ the cache


def cache_location(root: str, name: str, options: DatasetOptions) -> str:
    """Return the dataset's cache folder: keyed by its name and every generation option."""
    text = json.dumps(options.model_dump(mode="json"), sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    return storage.join(root, CACHE_FOLDER, f"{name}-{key}")


def _read_cached(location: str) -> GraphPairs | None:
    meta = storage.read_json(storage.join(location, "meta.json"))
    if meta is None:
        return None
    fs, path = storage.resolve(storage.join(location, "data.pt"))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    if bytes_digest(data) != meta.get("digest"):
        logger.warning("dataset cache %s does not match its digest; generating it again", location)
        return None
    tensors = torch.load(io.BytesIO(data), weights_only=True)
    return GraphPairs(**tensors)


def load_or_generate(name: str, options: DatasetOptions, root: str) -> GraphPairs:
    """Return the dataset from its cache under ``root``, generating and caching it if needed.

    Parameters
    ----------
    name : str
        The dataset's name (``er1000``, ``eru10000`` or a custom one with ``num_pairs``).
    options : DatasetOptions
        How to generate it.
    root : str
        The storage root (folder or URI).
    """
    options = resolve_options(name, options)
    location = cache_location(root, name, options)
    cached = _read_cached(location)
    if cached is not None:
        return cached
    logger.info("generating dataset %s (%d pairs) into %s", name, options.num_pairs, location)
    pairs = generate(options)
    buffer = io.BytesIO()
    torch.save({f.name: getattr(pairs, f.name) for f in fields(pairs)}, buffer)
    data = buffer.getvalue()
    fs, path = storage.resolve(storage.join(location, "data.pt"))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)
    meta = {"name": name, "options": options.model_dump(mode="json"), "digest": bytes_digest(data)}
    storage.write_json(storage.join(location, "meta.json"), meta)  # written last: the commit
    return pairs
