"""Per-modality streams: an input network ending in a hash head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.hashing import HashHead


class ImageTailStream(nn.Module):
    """Fine-tuned last backbone blocks + head over a cached feature map, then an MLP stream."""

    def __init__(self, tail: nn.Module, map_shape: tuple[int, int, int], mlp: nn.Module) -> None:
        super().__init__()
        self.map_shape = map_shape
        self.tail = tail
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.map_shape
        return self.mlp(self.tail(x.reshape(-1, c, h, w)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP's last hidden layer, which the hash head projects."""
        c, h, w = self.map_shape
        return self.mlp.features(self.tail(x.reshape(-1, c, h, w)))  # type: ignore[operator]


class MLPStream(nn.Module):
    """MLP over a vector input (cached CNN features, bag of words, precomputed features).

    Inputs are standardised with statistics of the training set, stored as buffers so the
    exported encoder carries them. `signed_sqrt` first maps x to sign(x)·sqrt(|x|) (the
    Hellinger map), which suits histogram features such as bags of visual words.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        bits: int,
        dropout: float,
        signed_sqrt: bool = False,
    ) -> None:
        super().__init__()
        self.signed_sqrt = signed_sqrt
        self.register_buffer("shift", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.body, width = mlp(in_dim, hidden, dropout)
        self.hash = HashHead(width, bits)

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with training-set statistics (constant columns are left alone)."""
        set_statistics(self, mean, std)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed input map applied before standardisation."""
        return torch.sign(x) * torch.sqrt(torch.abs(x)) if self.signed_sqrt else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer, which the hash head projects."""
        return self.body((self.transform(x) - self.shift) / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hash(self.features(x))


class VideoStream(nn.Module):
    """Per-frame feature maps of one or more clips -> temporal model -> MLP -> hash head.

    Input rows are flattened (clips, frames, C, h, w) maps. Each clip goes through the
    temporal model on its own; the clips' features are averaged before the MLP, so a video
    sampled as several clips still gets one code. Maps are standardised per channel with
    training-set statistics (buffers, so the exported encoder carries them).
    """

    def __init__(
        self,
        map_shape: tuple[int, int, int, int, int],
        temporal: nn.Module,
        hidden: Sequence[int],
        bits: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.map_shape = map_shape
        channels = map_shape[2]
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.temporal = temporal
        self.body, width = mlp(int(temporal.out_dim), hidden, dropout)  # type: ignore[arg-type]
        self.hash = HashHead(width, bits)

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel statistics of the training maps (constant channels are left alone)."""
        set_statistics(self, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clips, frames, c, h, w = self.map_shape
        maps = x.float().reshape(-1, frames, c, h, w)
        maps = (maps - self.shift.view(1, 1, c, 1, 1)) / self.scale.view(1, 1, c, 1, 1)
        features = self.temporal(maps.transpose(1, 2))  # (n * clips, C, T, h, w) in
        features = features.reshape(-1, clips, features.shape[1]).mean(dim=1)
        return self.hash(self.body(features))


class SentenceStream(nn.Module):
    """Word ids in order -> embeddings -> GRU or LSTM -> pooled state -> MLP -> hash head.

    Input rows are `bundle.inputs.TokenIds` batches: the length in words, then the ids,
    right-padded. The cell runs forward over the padded rows; a state is read only at the
    text's own positions (the mean over its words, or the state after its last word), so the
    padding never reaches a code. A text of no words gets the initial (zero) state's code.
    """

    def __init__(
        self,
        num_ids: int,
        embedding_dim: int,
        cell: str,
        rnn_hidden: int,
        pooling: str,
        hidden: Sequence[int],
        bits: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm") or pooling not in ("mean", "last"):
            raise ValueError(f"unknown cell {cell!r} or pooling {pooling!r}")
        self.pooling = pooling
        # Row 0 is padding: it stays zero and untrained.
        self.embedding = nn.Embedding(num_ids, embedding_dim, padding_idx=0)
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(embedding_dim, rnn_hidden, batch_first=True)
        self.body, width = mlp(rnn_hidden, hidden, dropout)
        self.hash = HashHead(width, bits)

    def embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, width, embedding_dim) word embeddings and (n,) lengths of a token batch."""
        ids = tokens[:, 1:]
        # A length beyond the row (a hand-made batch) reads no more than the row holds.
        # Widths from tensors, not Python ints: the traced encoder takes any batch width.
        lengths = torch.minimum(tokens[:, 0].clamp(min=0), torch.ones_like(ids).sum(1))
        return self.embedding(ids), lengths

    def codes(
        self, embedded: torch.Tensor, lengths: torch.Tensor, packed: bool = False
    ) -> torch.Tensor:
        """tanh codes of embedded words (`packed`: see `run_cell`)."""
        states = run_cell(self.rnn, embedded, lengths, packed)
        return self.hash(self.body(pool_states(states, lengths, self.pooling)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.codes(*self.embed(tokens))


def run_cell(
    rnn: nn.Module, embedded: torch.Tensor, lengths: torch.Tensor, packed: bool = False
) -> torch.Tensor:
    """A GRU's or LSTM's states (n, width, h) over right-padded rows.

    `packed` skips the padding (a packed sequence): the trainer's path, several times faster
    on short texts padded to the batch's longest. The traced encoder runs the cell over the
    padded rows instead; the states at each text's own positions are the same but for float
    rounding, and those are all `pool_states` reads.
    """
    if not packed:
        return rnn(embedded)[0]  # type: ignore[no-any-return]
    # A text of no words runs one padding step: pool_states reads none of it.
    sequence = nn.utils.rnn.pack_padded_sequence(
        embedded, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
    )
    states = rnn(sequence)[0]
    return nn.utils.rnn.pad_packed_sequence(
        states, batch_first=True, total_length=embedded.shape[1]
    )[0]


def pool_states(out: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """States (n, width, h) of right-padded rows pooled over each row's first `lengths`."""
    # The zero initial state in front: position `length` is then the state after the last
    # word, and a row of no words pools to zeros either way.
    states = torch.cat([torch.zeros_like(out[:, :1]), out], dim=1)
    if pooling == "last":
        at = lengths.view(-1, 1, 1).expand(-1, 1, states.shape[2])
        return states.gather(1, at).squeeze(1)
    steps = torch.ones_like(out[:, :, 0]).cumsum(1) - 1
    mask = (steps < lengths.view(-1, 1).to(out.dtype)).to(out.dtype).unsqueeze(2)
    return (out * mask).sum(1) / lengths.clamp(min=1).to(out.dtype).view(-1, 1)


def mlp(width: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear-ReLU-Dropout layers of the given widths; returns them and the output width."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers), width


def set_statistics(stream: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Copy standardisation statistics into a stream's shift/scale buffers (std ~0 -> 1)."""
    stream.shift.copy_(mean)  # type: ignore[operator]
    stream.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))  # type: ignore[operator]
