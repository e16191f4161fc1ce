"""``charlm-transformer``: a byte-level GPT trained on the Python standard library's own sources.

The corpus is every ``.py`` file under ``sysconfig.get_paths()["stdlib"]``, except what differs from
machine to machine with the same Python version: installed packages (anything under ``site-packages``
or ``dist-packages``), the test suites (folders named ``test``, ``tests`` or ``idle_test``), the
platform-generated ``_sysconfigdata*`` modules and the build-configuration folder ``config-*`` (whose
``python-config.py`` starts with the install prefix). Nothing is downloaded: every machine with Python
has the data, and `CharLMTransformer.data_facts` records the Python version, the split sizes and a
sha256 of the corpus, so a run says exactly which bytes it saw.

Files are listed as sorted relative POSIX paths. Whole files are held out for evaluation by a rule on
the path alone (``zlib.crc32(path) % 10 == 0``), so a file missing on one machine does not move any
other file between the splits. Each file's bytes are followed by a NUL byte (which never occurs in
source) as an end-of-document marker, and the files of each split are concatenated into one stream.

The model is a pre-LayerNorm, decoder-only transformer over the 256 byte values (see `ByteGPT`).
Training batches are seeded random windows of ``context + 1`` bytes from the training stream; the
evaluation set is a fixed sample of windows from the held-out files, the same for every seed.
``loss`` is the mean next-byte cross-entropy in nats; ``eval_loss`` reports the same quantity on the
evaluation set in bits per byte (nats / ln 2), so an untrained model scores about log2(256) = 8.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from koopsweep._params import require
from koopsweep.errors import UsageError
from koopsweep.tasks._common import CachedTask, count_parameters, generator, is_int

#: Byte values: the vocabulary.
VOCAB = 256

#: Appended to every file: an end-of-document marker (NUL never occurs in the sources).
END_OF_FILE = b"\0"

#: Folders left out wherever they occur under the standard library.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})

#: One file in this many goes to evaluation (by the crc32 of its relative path).
EVAL_MODULUS = 10

#: Steps of batch windows drawn and shipped to the device at once.
_CHUNK_STEPS = 256

#: Seeds the evaluation windows: one fixed sample for every run seed.
_EVAL_SEED = 0

#: Model shapes by ``size``. "cpu": 0.14M parameters, a 3,000-step run in about 70 s on one CPU thread
#: (measured, see `CharLMTransformer`); "gpu": 25.6M parameters, for an accelerator.
SIZES: dict[str, dict[str, int]] = {
    "cpu": {"d_model": 64, "n_layers": 2, "n_heads": 4, "context": 64, "batch_size": 16},
    "gpu": {"d_model": 512, "n_layers": 8, "n_heads": 8, "context": 256, "batch_size": 64},
}

#: The knobs a size preset sets; an explicit (non-None) parameter overrides the preset.
KNOBS = ("d_model", "n_layers", "n_heads", "context", "batch_size")


# --------------------------------------------------------------------------------------------------
# Corpus


def stdlib_root() -> Path:
    """This interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_corpus_file(relative: str) -> bool:
    """True for a ``.py`` file (relative POSIX path) that belongs to the corpus."""
    *folders, name = relative.split("/")
    if not name.endswith(".py") or name.startswith("_sysconfigdata"):
        return False
    if folders and folders[0].startswith("config-"):
        return False
    return not any(folder in EXCLUDED_DIRS for folder in folders)


def list_corpus_files(root: str | os.PathLike[str]) -> list[str]:
    """The corpus files under ``root`` as sorted relative POSIX paths.

    Walks without following symbolic links to folders (a link could pull in a tree outside the
    standard library) and prunes excluded folders before descending into them.
    """
    root = Path(root)
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        rel_folder = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]
        for name in files:
            relative = prefix + name
            if is_corpus_file(relative) and (Path(folder) / name).is_file():
                found.append(relative)
    return sorted(found)


def is_eval_file(relative: str) -> bool:
    """The split rule: a file is held out iff ``crc32(path) % 10 == 0``; it depends on the path alone."""
    return zlib.crc32(relative.encode()) % EVAL_MODULUS == 0


@dataclass(frozen=True)
class Corpus:
    """The two splits of the corpus: file lists and their concatenated bytes (NUL after each file)."""

    root: str
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    train_bytes: bytes = field(repr=False)
    eval_bytes: bytes = field(repr=False)
    sha256: str

    def facts(self) -> dict[str, str]:
        return {
            "corpus": "python-stdlib",
            "python_implementation": platform.python_implementation(),
            "python_version": platform.python_version(),
            "corpus_sha256": self.sha256,
            "train_files": str(len(self.train_files)),
            "train_bytes": str(len(self.train_bytes)),
            "eval_files": str(len(self.eval_files)),
            "eval_bytes": str(len(self.eval_bytes)),
        }


@functools.lru_cache(maxsize=4)
def load_corpus(root: str | None = None) -> Corpus:
    """Read the corpus under ``root`` (default: this interpreter's standard library), once per process.

    The sha256 covers every file's relative path, length and bytes in sorted order, so it changes with
    any added, removed, renamed or edited file, and with the split (which follows from the paths).
    """
    root_path = Path(root) if root is not None else stdlib_root()
    digest = hashlib.sha256()
    train: list[str] = []
    held_out: list[str] = []
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    for relative in list_corpus_files(root_path):
        data = (root_path / relative).read_bytes()
        digest.update(relative.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        held = is_eval_file(relative)
        (held_out if held else train).append(relative)
        parts[held].append(data + END_OF_FILE)
    if not train or not held_out:
        raise UsageError(
            f"the Python sources under {root_path} give an empty split "
            f"({len(train)} training, {len(held_out)} evaluation files)"
        )
    return Corpus(
        root=str(root_path),
        train_files=tuple(train),
        eval_files=tuple(held_out),
        train_bytes=b"".join(parts[False]),
        eval_bytes=b"".join(parts[True]),
        sha256=digest.hexdigest(),
    )


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _windows(stream: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``stream[start : start + length]`` for every start (any shape), as int64: shape ``(*starts.shape, length)``."""
    offsets = torch.arange(length, device=starts.device)
    return stream[starts.unsqueeze(-1) + offsets].long()


# --------------------------------------------------------------------------------------------------
# Model


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))`` with a 4x GELU MLP."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ByteGPT(nn.Module):
    """``bytes (b, t) int64 -> logits (b, t, 256)``: a decoder-only, pre-LayerNorm GPT.

    Token embedding plus a learned position embedding, ``n_layers`` blocks, a final LayerNorm and a
    linear head. The head is NOT tied to the token embedding: with 256 tokens it holds only
    ``256 * d_model`` parameters, so tying saves little, and untied every parameter has one role, which
    keeps the weight trajectory that Koopman jumps extrapolate free of a tensor pulled two ways.
    No dropout: the task is deterministic given its batches.
    """

    def __init__(self, d_model: int, n_layers: int, n_heads: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[-1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def init_gpt2(model: ByteGPT, gen: torch.Generator) -> None:
    """GPT-2's initialisation, drawn from ``gen``: N(0, 0.02) for linear and embedding weights, with the
    residual projections (attention ``proj``, the MLP's second layer) scaled by 1/sqrt(2 n_layers) so
    the residual stream's variance does not grow with depth; zero biases; LayerNorm ones and zeros."""
    residual_std = 0.02 / math.sqrt(2 * len(model.blocks))
    residual = {id(block.attn.proj.weight) for block in model.blocks}
    residual |= {id(block.mlp[2].weight) for block in model.blocks}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if id(module.weight) in residual else 0.02
                module.weight.normal_(0.0, std, generator=gen)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def build_gpt(d_model: int, n_layers: int, n_heads: int, context: int, gen: torch.Generator) -> ByteGPT:
    """A `ByteGPT` initialised from ``gen`` alone.

    Built on the meta device (the modules' own initialisers run there, drawing nothing from the global
    generator and allocating nothing), then given CPU storage and initialised by `init_gpt2`, which
    sets every parameter.
    """
    with torch.device("meta"):
        model = ByteGPT(d_model, n_layers, n_heads, context)
    model = model.to_empty(device="cpu")
    init_gpt2(model, gen)
    return model


# --------------------------------------------------------------------------------------------------
# Task


class CharLMTransformer(CachedTask):
    """A byte-level GPT on the Python standard library's sources; cross-entropy, evaluated in bits per byte.

    Parameters:
        size: ``"cpu"`` (default) = d_model 64, 2 layers, 4 heads, context 64, batch 16 (137K
            parameters); ``"gpu"`` = d_model 512, 8 layers, 8 heads, context 256, batch 64 (25.6M).
        d_model, n_layers, n_heads, context, batch_size: None (default) = from the size preset; a value
            overrides it. ``d_model`` must be divisible by ``n_heads``.
        eval_windows: windows of ``context + 1`` bytes in the fixed evaluation set (default 128, i.e.
            8,192 predicted bytes at the cpu size), drawn with a fixed seed from the held-out files.

    Why the cpu preset and the budget (measured through `koopsweep.training.train` on this project's
    2-core machine, torch 2.13, ``torch.set_num_threads(1)``, AdamW at lr 3e-3, cosine with 150 warm-up
    steps, seed 0): one step takes 20-26 ms (the upper figure with other jobs on the machine), so the
    default budget of 3,000 steps runs in 61-77 s of clocked time, and the evaluation loss falls from
    7.97 to 2.10 bits per byte (3.7 after 120 steps, 2.5 after 1,200). Of the shapes tried at about the
    same run time, this one ended lowest: twice the batch (1,700 steps) reached 2.20, d_model 128 (1,500
    steps) 2.28, three layers of 96 (1,500 steps) 2.38; context 128 doubles the step time. A step costs
    little, so the budget buys many steps, which is where a jump that saves steps has room to show.
    The gpu preset's step time has not been measured.
    """

    default_budget: ClassVar[int] = 3000
    # Tuned by benchmarks/tune_baselines.py (half-decade grids, the default budget and schedule, one seed;
    # docs/tasks.md has the table): the lowest final evaluation bits per byte of each optimizer's grid.
    baseline_lrs: ClassVar[dict[str, float]] = {
        "adam": 3e-3, "adamw": 1e-2, "nadam": 3e-3, "rmsprop": 3e-3, "adagrad": 0.03, "adadelta": 3.0, "sgd": 0.3,
        "muon": 1e-2, "lookahead-adam": 1e-2, "snoo-adam": 3e-3, "ema-adam": 3e-3, "schedulefree-adamw": 1e-2,
    }  # fmt: skip
    default_optimizer: ClassVar[str] = "adamw"
    schedule: ClassVar[str] = "cosine"
    warmup: ClassVar[int] = 150  # 5% of the budget
    defaults: ClassVar[dict[str, Any]] = {
        "size": "cpu",
        "d_model": None,
        "n_layers": None,
        "n_heads": None,
        "context": None,
        "batch_size": None,
        "eval_windows": 128,
    }

    def validate_params(self) -> None:
        p = self.params
        require(p["size"] in SIZES, self, "size", p["size"], f"one of {', '.join(map(repr, SIZES))}")
        for name in KNOBS:
            value = p[name]
            require(value is None or (is_int(value) and value >= 1), self, name, value, "None or a positive int")
        require(
            is_int(p["eval_windows"]) and p["eval_windows"] >= 1,
            self,
            "eval_windows",
            p["eval_windows"],
            "a positive int",
        )
        shape = self.shape
        require(
            shape["d_model"] % shape["n_heads"] == 0,
            self,
            "d_model",
            shape["d_model"],
            f"a multiple of n_heads={shape['n_heads']}",
        )

    @property
    def shape(self) -> dict[str, int]:
        """The effective d_model, n_layers, n_heads, context and batch_size: the preset, then overrides."""
        preset = SIZES[self.params["size"]]
        return {name: preset[name] if self.params[name] is None else self.params[name] for name in KNOBS}

    # -- data -------------------------------------------------------------------------------------

    def corpus(self) -> Corpus:
        """The corpus (read once per process and shared by every instance)."""
        return load_corpus()

    def data_facts(self) -> dict[str, str]:
        return self.corpus().facts()

    def _make_data(self) -> dict[str, torch.Tensor]:
        corpus = self.corpus()
        length = self.shape["context"] + 1
        train, held_out = _byte_tensor(corpus.train_bytes), _byte_tensor(corpus.eval_bytes)
        for split, stream in (("training", train), ("evaluation", held_out)):
            if stream.numel() < length:
                raise UsageError(f"the {split} corpus ({stream.numel()} bytes) is shorter than context + 1 = {length}")
        # A fixed seed, not the run's: every run is scored on the same windows.
        gen = generator(_EVAL_SEED, "eval-windows")
        starts = torch.randint(0, held_out.numel() - length + 1, (self.params["eval_windows"],), generator=gen)
        windows = _windows(held_out, starts, length)
        return {"train": train, "x_eval": windows[:, :-1].contiguous(), "y_eval": windows[:, 1:].contiguous()}

    # -- the contract -----------------------------------------------------------------------------

    def n_parameters(self) -> int:
        """Trainable parameters of the model at this size (builds it on the meta device: no memory)."""
        s = self.shape
        with torch.device("meta"):
            return count_parameters(ByteGPT(s["d_model"], s["n_layers"], s["n_heads"], s["context"]))

    def build_model(self, seed: int) -> nn.Module:
        s = self.shape
        return build_gpt(s["d_model"], s["n_layers"], s["n_heads"], s["context"], generator(seed, "init"))

    def batches(self, seed: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = torch.device(device)
        train = self._on(device)["train"]  # eager: the corpus moves to the device before any clock starts
        context, batch_size = self.shape["context"], self.shape["batch_size"]
        high = train.numel() - context  # starts in [0, high): every window of context + 1 bytes fits

        def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            gen = generator(seed, "batches")
            while True:
                # Starts are drawn on the CPU (the same on every device) and cut out on the device, a
                # chunk of steps at a time: one transfer per chunk, no host round trip inside a step.
                starts = torch.randint(0, high, (_CHUNK_STEPS, batch_size), generator=gen)
                windows = _windows(train, starts.to(device, non_blocking=True), context + 1)
                yield from zip(windows[..., :-1].unbind(0), windows[..., 1:].unbind(0), strict=True)

        return stream()

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))

    def _eval_nats(self, model: nn.Module, device: torch.device) -> float:
        data = self._on(device)
        with torch.no_grad():
            logits = model(data["x_eval"])
            return float(F.cross_entropy(logits.reshape(-1, VOCAB), data["y_eval"].reshape(-1)))

    def eval_loss(self, model: nn.Module, device: torch.device) -> float:
        """Mean next-byte cross-entropy on the fixed evaluation windows, in bits per byte."""
        return self._eval_nats(model, device) / math.log(2)

    def eval_metrics(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        bits = self.eval_loss(model, device)
        return {"bits_per_byte": bits, "eval_tokens": float(self._on(device)["y_eval"].numel())}


__all__ = [
    "SIZES",
    "ByteGPT",
    "CharLMTransformer",
    "Corpus",
    "build_gpt",
    "init_gpt2",
    "is_corpus_file",
    "is_eval_file",
    "list_corpus_files",
    "load_corpus",
]
