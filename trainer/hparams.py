"""Hyperparameters of every registered model: one frozen dataclass per model, with defaults.

These live apart from the model code for one reason: ``python -m trainer.task``
validates a whole config (unknown keys, wrongly typed values) before TensorFlow
is imported, so a bad flag is answered in well under a second. The model
modules (``trainer/models/<name>.py``, which import TensorFlow) re-export their
class as ``Config`` and build from it; the registry (``trainer.models``) names
which class belongs to which model.

Field types are enforced by ``trainer.config`` (``int`` fields take ``16`` and
``16.0`` — Vertex AI sends discrete values as doubles — but not ``16.5`` or
``"abc"``); ``__post_init__`` checks what types cannot say.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MF:
    """Biased matrix factorization trained by SGD (``trainer.models.mf``).

    Attributes:
      embedding_dim: latent factors per user and item.
      l2_embedding: per-occurrence L2 on p_u and q_i.
      l2_bias: per-occurrence L2 on b_u and b_i.
      init_stddev: stddev of the initial factors.
      clip_predictions: clip predictions to the train rating range outside training.
      seed: initialisation seed.
      frequency_exponent: weighted trace norm (Salakhutdinov & Srebro 2010): each
        row's total L2 is proportional to (its train count)^exponent; 1.0 is plain
        per-occurrence L2, smaller values regularize frequent users/items less.
    """

    embedding_dim: int = 64
    l2_embedding: float = 0.05
    l2_bias: float = 0.001
    init_stddev: float = 0.01
    clip_predictions: bool = True
    seed: int = 0
    frequency_exponent: float = 1.0

    def __post_init__(self):
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")


@dataclasses.dataclass(frozen=True)
class BayesianMF:
    """Bayesian MF by Gibbs sampling (``trainer.models.bayesian_mf``).

    Attributes:
      embedding_dim: latent factors K per sample.
      sweeps: Gibbs sweeps in all (burn-in included).
      burn_in: sweeps discarded before predictions are averaged.
      kept_samples: post-burn-in samples kept (evenly spaced) for the exported
        predictor; its embedding size is ``embedding_dim * kept_samples``.
      prior_shape, prior_rate: Gamma hyperprior of each dimension's precision
        and of the noise precision alpha.
      prior_mean_strength: beta_0, the pseudo-count of the hyper-mean's prior at 0.
      init_stddev: stddev of the initial factors.
      chunk_rows: ratings per chunk when accumulating the posterior precisions
        (bounds memory at ``chunk_rows * (K+1)^2`` floats).
      seed: sampler seed.
      log_every: sweeps between progress lines.
    """

    embedding_dim: int = 6
    sweeps: int = 300
    burn_in: int = 50
    kept_samples: int = 50
    prior_shape: float = 1.0
    prior_rate: float = 1.0
    prior_mean_strength: float = 1.0
    init_stddev: float = 0.1
    chunk_rows: int = 2_000_000
    seed: int = 0
    log_every: int = 25

    def __post_init__(self):
        if self.embedding_dim < 1 or self.sweeps < 1 or self.kept_samples < 1:
            raise ValueError("embedding_dim, sweeps and kept_samples must be >= 1")
        if not 0 <= self.burn_in < self.sweeps:
            raise ValueError(f"burn_in must be in [0, sweeps), got {self.burn_in} with sweeps {self.sweeps}")
        if self.kept_samples > self.sweeps - self.burn_in:
            raise ValueError(f"kept_samples ({self.kept_samples}) exceeds the post-burn-in sweeps "
                             f"({self.sweeps - self.burn_in})")


def _check_negatives(config) -> None:
    if config.num_negatives < 1:
        raise ValueError("num_negatives must be >= 1")


@dataclasses.dataclass(frozen=True)
class _ImplicitRanking:
    """What every implicit-feedback ranking model shares.

    Attributes:
      num_negatives: sampled negatives per positive, drawn afresh each batch.
      l2_embedding: per-occurrence L2 on the embedding rows a batch touches.
      init_stddev: stddev of the initial embeddings.
      seed: initialisation seed.
      recency_half_life: 0 (off) or > 0: a positive with ``n`` of the user's train
        interactions after it weighs ``recency_floor + (1 - recency_floor) * 0.5 **
        (n / recency_half_life)`` in the loss (``trainer.ranking``).
      recency_floor: in [0, 1], the weight of a user's oldest interactions.
    """

    num_negatives: int = 4
    l2_embedding: float = 0.0
    init_stddev: float = 0.01
    seed: int = 0
    recency_half_life: float = 0.0
    recency_floor: float = 0.0

    def __post_init__(self):
        _check_negatives(self)
        if self.recency_half_life < 0:
            raise ValueError("recency_half_life must be >= 0 (0: every positive weighs 1)")
        if not 0.0 <= self.recency_floor <= 1.0:
            raise ValueError("recency_floor must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class GMF(_ImplicitRanking):
    """NCF's generalized matrix factorization (``trainer.models.gmf``).

    Attributes:
      embedding_dim: "predictive factors" in the paper.
    """

    embedding_dim: int = 16


@dataclasses.dataclass(frozen=True)
class MLP(_ImplicitRanking):
    """NCF's MLP tower (``trainer.models.mlp``).

    Attributes:
      layers: tower widths; ``layers[0]`` is the concatenated embedding width.
    """

    layers: tuple[int, ...] = (64, 32, 16, 8)

    def __post_init__(self):
        super().__post_init__()
        if len(self.layers) < 2 or self.layers[0] % 2:
            raise ValueError("layers must have at least 2 entries and layers[0] even (half user, half item embedding)")


@dataclasses.dataclass(frozen=True)
class NeuMF(_ImplicitRanking):
    """NCF's NeuMF: GMF + MLP branches (``trainer.models.neumf``).

    Attributes:
      embedding_dim: GMF branch factors.
      layers: MLP branch widths.
      pretrained_gmf_dir: a finished GMF job dir (its checkpoints/ and config.resolved.yaml).
      pretrained_mlp_dir: a finished MLP job dir.
      alpha: weight of the GMF branch in the pre-trained logit layer (paper eq. 13).
      history_length: 0 (off) or the number of each user's latest train items pooled
        into both user vectors (``ranking_base.UserHistory``).
      history_half_life: 0 (every pooled item weighs 1) or > 0: an item with ``n`` of
        the user's train interactions after it weighs ``0.5 ** (n / history_half_life)``.
    """

    embedding_dim: int = 16
    layers: tuple[int, ...] = (64, 32, 16, 8)
    pretrained_gmf_dir: str = ""
    pretrained_mlp_dir: str = ""
    alpha: float = 0.5
    history_length: int = 0
    history_half_life: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.history_length < 0 or self.history_half_life < 0:
            raise ValueError("history_length and history_half_life must be >= 0 (0: off, and equal weights)")
        if bool(self.pretrained_gmf_dir) != bool(self.pretrained_mlp_dir):
            raise ValueError("set both pretrained_gmf_dir and pretrained_mlp_dir, or neither")


@dataclasses.dataclass(frozen=True)
class BPR(_ImplicitRanking):
    """BPR-MF, pairwise ranking (``trainer.models.bpr``).

    Attributes:
      embedding_dim: latent factors.
      use_item_bias: learn an item bias.
    """

    embedding_dim: int = 128
    use_item_bias: bool = True


LASTFM_EDGE_SETS = ("follows", "likes", "liked_by")  # schemas.lastfm.EDGE_SETS (checked in tests)


@dataclasses.dataclass(frozen=True)
class HeteroGNN:
    """The LastFM heterogeneous GNN (``trainer.models.hetero_gnn``).

    Attributes:
      hidden_dim: node state size in every round.
      embedding_dim: id embedding size.
      user_hash_buckets: hash buckets for user ids (ids are hashed, not looked up).
      artist_hash_buckets: hash buckets for artist ids.
      use_ids: learn id embeddings (False: the only inputs are label hints / structure).
      use_label_hints: embed ``label_hint`` when the data has it.
      num_rounds: GraphUpdate rounds.
      conv: ``simple`` (SimpleConv, mean) or ``gatv2`` (GATv2Conv).
      num_heads: GATv2 heads (hidden_dim must divide by it).
      edge_sets: edge sets the model uses (the ablation switch); ``a+b`` also works.
      dropout: dropout on states and messages.
      l2: L2 regularization of dense kernels and embeddings.
      correct_and_smooth: post-process the GNN's predictions with Correct and Smooth over
        the whole friendship graph (``trainer.correct_and_smooth``; train labels only),
        in every evaluation, so the epoch, the metrics and tuning all see the final predictions.
      cs_correct_alpha: neighbour weight of the error propagation (0: smooth only).
      cs_smooth_alpha: neighbour weight of the label smoothing (0: correct only).
      cs_iterations: power iterations of each propagation.
      prior_correction: ``tau`` of a post-hoc logit adjustment (Menon et al. 2021): the final
        class distribution is divided by the train class frequencies to the power ``tau``
        before the argmax (0: off). Rare countries weigh more: macro-F1 over accuracy.
    """

    hidden_dim: int = 64
    embedding_dim: int = 32
    user_hash_buckets: int = 1 << 15
    artist_hash_buckets: int = 1 << 16
    use_ids: bool = True
    use_label_hints: bool = True
    num_rounds: int = 2
    conv: str = "simple"
    num_heads: int = 4
    edge_sets: tuple[str, ...] = LASTFM_EDGE_SETS
    dropout: float = 0.2
    l2: float = 1e-5
    correct_and_smooth: bool = False
    cs_correct_alpha: float = 0.8
    cs_smooth_alpha: float = 0.8
    cs_iterations: int = 50
    prior_correction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.prior_correction <= 2.0:
            raise ValueError(f"prior_correction must be in [0, 2], got {self.prior_correction}")
        for name in ("cs_correct_alpha", "cs_smooth_alpha"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.cs_iterations < 1:
            raise ValueError(f"cs_iterations must be >= 1, got {self.cs_iterations}")
        if isinstance(self.edge_sets, str):
            object.__setattr__(self, "edge_sets", tuple(self.edge_sets.split("+")))
        unknown = sorted(set(self.edge_sets) - set(LASTFM_EDGE_SETS))
        if unknown:
            raise ValueError(f"unknown edge set(s) {unknown}; valid: {list(LASTFM_EDGE_SETS)}")
        if self.conv not in ("simple", "gatv2"):
            raise ValueError(f"conv must be 'simple' or 'gatv2', got {self.conv!r}")
        if self.conv == "gatv2" and self.hidden_dim % self.num_heads:
            raise ValueError("hidden_dim must be a multiple of num_heads for gatv2")
        if self.num_rounds < 1:
            raise ValueError("num_rounds must be >= 1")


@dataclasses.dataclass(frozen=True)
class PlaylistBPR:
    """The users' current playlist ranker: id-only BPR (``trainer.models.playlist_bpr``).

    ``s(u, p) = e_u . e_p`` (no bias), the pairwise loss ``-log sigmoid(s(u, p) - s(u, n))``
    with ``num_negatives`` fresh negatives per positive. A playlist with no train
    interaction keeps the embedding that negative sampling gave it.

    Attributes:
      embedding_dim: user and playlist embedding size.
      num_negatives: sampled negatives per positive.
      l2_embedding: per-occurrence L2 on the embedding rows a batch touches.
      init_stddev, seed: initialisation.
    """

    embedding_dim: int = 128
    num_negatives: int = 4
    l2_embedding: float = 0.0
    init_stddev: float = 0.01
    seed: int = 0

    def __post_init__(self):
        _check_negatives(self)
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")


PLAYLIST_POOLINGS = ("mean", "sqrt")


@dataclasses.dataclass(frozen=True)
class PlaylistTracksBPR:
    """BPR whose playlist vector is built from its tracks (``trainer.models.playlist_tracks_bpr``).

    Playlist vector: the pooled embeddings of its tracks (``playlist_tracks/``,
    known for every playlist, held-out ones included), plus a playlist id
    embedding when ``use_playlist_ids``. User vector: a user id embedding, plus
    the pooled embeddings of the tracks of the user's train collection when
    ``use_user_tracks`` (the same track table as the playlists). Score: the dot
    product; loss and negatives as ``PlaylistBPR``.

    Attributes:
      embedding_dim: size of every embedding.
      num_negatives: sampled negatives per positive.
      use_playlist_ids: add a playlist id embedding to the track pool.
      use_user_tracks: add the user's pooled liked tracks to the user id embedding.
      pooling: ``mean`` (sum / n) or ``sqrt`` (sum / sqrt(n)) over a playlist's or user's tracks.
      l2_embedding: per-occurrence L2 on the id embedding rows and pooled vectors a batch touches.
      init_stddev, seed: initialisation.
    """

    embedding_dim: int = 128
    num_negatives: int = 4
    use_playlist_ids: bool = False
    use_user_tracks: bool = True
    pooling: str = "mean"
    l2_embedding: float = 0.0
    init_stddev: float = 0.01
    seed: int = 0

    def __post_init__(self):
        _check_negatives(self)
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")
        if self.pooling not in PLAYLIST_POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(PLAYLIST_POOLINGS)}, got {self.pooling!r}")


GCMC_ACCUMULATIONS = ("stack", "sum")
GCMC_NORMALIZATIONS = ("left", "symmetric")
GCMC_ACTIVATIONS = ("relu", "leaky_relu", "linear", "tanh", "sigmoid")


@dataclasses.dataclass(frozen=True)
class GCMC:
    """Graph convolutional matrix completion (Berg, Kipf & Welling 2017; ``trainer.models.gcmc``).

    Defaults are the paper's ML-100K settings (the authors' ``run_experiments.sh``:
    stack, dropout 0.7, left normalisation, 2 basis matrices, 500 / 75 units,
    side-feature layer of 10).

    Attributes:
      hidden_dim: width of the convolution output, all levels together (``stack``:
        ``hidden_dim / levels`` per level, so it must divide by the number of levels).
      out_dim: width of the dense layer: the user and item embeddings the decoder reads.
      accumulation: ``stack`` (concatenate the levels) or ``sum``.
      ordinal_sharing: level r's weight is ``T_1 + ... + T_r`` (ordinal weight sharing).
      num_basis: basis matrices of the bilinear decoder.
      dropout: node dropout on the messages and dropout on the convolution output.
      normalization: ``left`` (1/deg of the receiver) or ``symmetric`` (1/sqrt(deg_i deg_j)).
      activation: after the convolution.
      dense_activation: after the dense layer.
      side_features: add the side-feature path (the graph must have side features).
      side_hidden_dim: width of the side-feature layer.
      sampled: train on sampled subgraphs around each batch's (user, item) pairs
        (graphs too large for full-graph training); otherwise every step encodes the whole graph.
      fanout: sampled: edges sampled per node and rating level (up to; all when fewer).
      eval_batch_pairs: sampled: (user, item) pairs per subgraph of the exact evaluation
        (every neighbour of their nodes, no sampling).
      ema_decay: evaluate and export an exponential moving average of the weights with
        this decay (the authors' code: 0.995, warmed up over the first steps); 0 turns it off.
      seed: initialisation and dropout seed.
    """

    hidden_dim: int = 500
    out_dim: int = 75
    accumulation: str = "stack"
    ordinal_sharing: bool = True
    num_basis: int = 2
    dropout: float = 0.7
    normalization: str = "left"
    activation: str = "relu"
    dense_activation: str = "linear"
    side_features: bool = False
    side_hidden_dim: int = 10
    sampled: bool = False
    fanout: int = 20
    eval_batch_pairs: int = 4096
    ema_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name, value, choices in (("accumulation", self.accumulation, GCMC_ACCUMULATIONS),
                                     ("normalization", self.normalization, GCMC_NORMALIZATIONS),
                                     ("activation", self.activation, GCMC_ACTIVATIONS),
                                     ("dense_activation", self.dense_activation, GCMC_ACTIVATIONS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        for name in ("hidden_dim", "out_dim", "num_basis", "side_hidden_dim", "fanout", "eval_batch_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
