"""BAST: the Binaural Audio Spectrogram Transformer (Kuang et al.; docs/train.md).

Read it like the paper's figure 1::

    left ear  (1, 129, 61) -> pad -> patch embedding -> [+cls] -> + position -> dropout -> TE-L --.
                                                                                                  +-> integrate -> TE-C -> mean over tokens -> LayerNorm -> Linear -> (x, y)
    right ear (1, 129, 61) -> pad -> patch embedding -> [+cls] -> + position -> dropout -> TE-R --'
                              `------------- shared by both ears, in SP and NSP alike -------'

TE-L, TE-R and TE-C are stacks of `depth` pre-norm transformer blocks. In BAST-SP
(`shared=True`) TE-L processes both ears (`encoder_right is encoder_left`); in BAST-NSP
the two ears have their own encoder. Integration works on the token sequences: ADD = L + R,
SUB = L - R (as the reference code computes it), CONCAT joins them on the feature axis so TE-C
and the head work at width 2D.

The encoder is the `backbone` (docs/train.md): "vit", the paper's blocks below (the
default; every count below is its), "swin" (shifted-window attention over the patch grid,
bast/model/nets/swin.py) or "mamba" (bidirectional selective state spaces over the patch
sequence, bast/model/nets/mamba.py). Embedding, integration, SP/NSP and head do not change.

Two configurations matter:

* the paper's (the `BASTConfig` defaults): fixed sinusoidal 1-D position embedding, no
  class token, zero padding;
* the reference code's (`reference_config`): a learned 1-D position embedding over the
  180 patches + 1 class token, one class token (shared by both ears, prepended to each ear
  before the position embedding, so it is averaged into the mean over tokens), reflection
  padding, and dropout also after the attention output projection.

Padding placement. The patch grid must cover the input: rows and columns are padded with the
fewest values that make ``(n + pad - patch) % stride == 0`` (129 x 61, patch 16, stride 6:
1 row and 3 columns -> 20 x 9 = 180 patches; stride 12: 7 rows, 3 columns -> 11 x 5 = 55).
The reference code pads with ``nn.ReflectionPad2d((0, pad_w, pad_h, 0))``: the extra rows go
*before* row 0 (the DC end of scipy's frequency axis, the "top" of the array) and the extra
columns *after* the last frame (the "right"). The paper says "zero-padded on the top and
right". We use that placement for both modes, so the two differ only in the values padded.

Parameter count, reference configuration (D = 1024, 16 heads x 64 = 1024 attention width,
MLP 1024, depth 3, patch 16, 180 patches). Every number below is checked by the tests.

====================================  ====================================  ===========
part                                  arithmetic                             parameters
====================================  ====================================  ===========
patch embedding Conv2d(1, D, 16, 6)   16*16*1024 + 1024                          263,168
learned position embedding            (180 + 1) * 1024                           185,344
class token                           1024                                         1,024
block at width w = D = 1024           LN 2w + qkv w*3*1024 (no bias)
                                      + proj 1024*w + w + LN 2w
                                      + fc1 w*1024 + 1024 + fc2 1024*w + w     6,298,624
block at width w = 2D = 2048          same formula, w = 2048                  12,596,224
encoder (3 blocks) at D / at 2D                                  18,895,872 / 37,788,672
head LayerNorm(w) + Linear(w, 2)      2w + 2w + 2 (D / 2D)                  4,098 / 8,194
====================================  ====================================  ===========

* NSP ADD/SUB:  449,536 + 3 * 18,895,872 + 4,098                      = 57,141,250
* NSP CONCAT:   449,536 + 2 * 18,895,872 + 37,788,672 + 8,194         = 76,038,146
* SP ADD/SUB:   449,536 + 2 * 18,895,872 + 4,098                      = 38,245,378
* SP CONCAT:    449,536 + 18,895,872 + 37,788,672 + 8,194             = 57,142,274

(449,536 = patch embedding + position embedding + class token.) These are the counts of
the reference code exactly (docs/train.md), and they pin the architecture down: a qkv bias would add 3 * 1024 per block
at width D (27,648 for NSP ADD), a final LayerNorm in each encoder 2w each; in CONCAT, TE-C
keeps the attention width at heads * head_dim = 1024 (head_dim = D / heads, from the ear
width; qkv maps 2048 -> 3072, the projection 1024 -> 2048) and the MLP hidden width at
`mlp_dim` = 1024, and the class token is a single D-vector prepended to each ear (one of 2D
prepended after integration would add 1,024 to CONCAT). Only the split between position
embedding and class tokens is not pinned by the counts ((180 + 1) + 1 and 180 + 2 rows of
1024 are equal); the reference code has the former. The paper configuration drops the
learned position embedding and the class token: 186,368 fewer parameters
(NSP SUB 56,954,882).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from bast.errors import ConfigError
from bast.model.nets.encoders import check_backbone, make_encoder
from bast.pipeline.features import kinds as featurekinds

INTEGRATIONS = ("add", "sub", "concat")
POS_EMBEDDINGS = ("sinusoidal", "learned")
PADDINGS = ("zero", "reflect")


@dataclass
class BASTConfig:
    """Hyper-parameters of BAST. The defaults are the paper's model (section 4.4)."""

    n_freq: int = 129  # spectrogram rows per ear (0-8000 Hz)
    n_time: int = 61  # spectrogram frames per ear (500 ms)
    patch: int = 16  # square patches, patch x patch
    stride: int = 6  # 16 - 6 = 10 rows/columns overlap between neighbouring patches
    dim: int = 1024  # token width D of TE-L and TE-R (TE-C works at 2D with CONCAT)
    heads: int = 16  # attention heads; head width = dim // heads, in TE-C too
    mlp_dim: int = 1024  # hidden width of every MLP, TE-C included
    depth: int = 3  # layers in each of TE-L, TE-R and TE-C
    dropout: float = 0.2  # in the embeddings and MLPs (paper)
    shared: bool = False  # True = BAST-SP (TE-L serves both ears), False = NSP
    integration: str = "sub"  # "add" | "sub" (L - R) | "concat"
    pos_embedding: str = "sinusoidal"  # "sinusoidal" (paper, fixed) | "learned" (reference code, 1-D)
    cls_token: bool = False  # reference code: a class token, included in the mean over tokens
    padding: str = "zero"  # "zero" (paper) | "reflect" (reference code)
    proj_dropout: float = 0.0  # after the attention output projection (reference code: 0.2)
    # The feature kinds read (bast/pipeline/features/kinds.py; featurize --features): each
    # ear's patch embedding sees the channels its kinds declare for that ear, e.g. its log
    # power plus the cos and sin of the phase as that ear hears it (the right ear's sine
    # negated), so a left-right mirror of the scene is a swap of the ears.
    features: tuple = ()
    # The interaural phase as input (--phase; configs of before feature kinds): adds "phase"
    # to `features`, and is set whenever `features` holds it.
    phase: bool = False
    # With phase (any kind declared frame_average), average its cos and sin over the clip's frames first (the interaural phase
    # spectrum of the whole clip, the cue the mlp baseline reads): per-frame phase is noisy,
    # and the tiny BAST did not learn to average it (demo data, test AD: 22.9 deg averaged,
    # 27.4 per frame, 26.3 without phase; docs/performance.md).
    phase_average: bool = True
    # Output size: 2 for the azimuth target; the target sets it (bast/model/targets/core.py).
    outputs: int = 2
    # The encoder of TE-L, TE-R and TE-C: "vit" (the paper's transformer blocks), "swin"
    # (shifted-window attention over the patch grid, bast/model/nets/swin.py) or "mamba"
    # (bidirectional selective state spaces over the patch sequence, bast/model/nets/mamba.py).
    # Embedding, integration and head are the same for all three.
    backbone: str = "vit"
    window: int = 7  # swin: window side in patches (the fork's and Swin's 7)
    # mamba: each scan's width = expand * token width; 0.5 is MambaVision's mixer (as the fork
    # uses it): a D-wide input projection split into x and z halves, out_proj D/2 -> D
    expand: float = 0.5
    d_state: int = 8  # mamba: state size N per channel (MambaVision: 8)
    d_conv: int = 3  # mamba: causal depthwise convolution width (MambaVision: 3)
    # Output tokens (M2M-AST): 0 = the paper's head over the mean of all tokens; n > 0 = n
    # learned tokens put before TE-C's tokens, each read out by the head as one output
    # frame (--target seld: one per 100 ms label frame), `outputs` split evenly among them.
    out_tokens: int = 0

    def __post_init__(self):
        self.features = featurekinds.model_features(self.features, self.phase)
        self.phase = "phase" in self.features
        self.backbone = self.backbone.lower()
        check_backbone(self)
        self.integration = self.integration.lower()
        self.pos_embedding = self.pos_embedding.lower()
        self.padding = self.padding.lower()
        if self.integration not in INTEGRATIONS:
            raise ConfigError(f"integration must be one of {INTEGRATIONS}, not {self.integration!r}")
        if self.pos_embedding not in POS_EMBEDDINGS:
            raise ConfigError(f"pos_embedding must be one of {POS_EMBEDDINGS}, not {self.pos_embedding!r}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {PADDINGS}, not {self.padding!r}")
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.pos_embedding == "sinusoidal" and self.dim % 2:
            raise ConfigError("the sinusoidal position embedding needs an even dim")
        if min(self.n_freq, self.n_time, self.patch, self.stride, self.depth, self.mlp_dim) < 1:
            raise ConfigError("sizes must be positive")
        if self.padding == "reflect":
            ph, pw = padding_amounts(self)
            if ph >= self.n_freq or pw >= self.n_time:
                raise ConfigError("reflection padding must be smaller than the input")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def center_dim(self) -> int:
        """Token width of TE-C and the head: 2D with CONCAT, else D."""
        return 2 * self.dim if self.integration == "concat" else self.dim

    def to_dict(self) -> dict:
        """Plain JSON types, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BASTConfig":
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown BASTConfig keys: {sorted(unknown)}")
        return cls(**d)


def reference_config(shared: bool = False, integration: str = "sub") -> BASTConfig:
    """The reference code's model (github.com/ShengKuangCN/BAST, conf.py + network/BAST.py)."""
    return BASTConfig(shared=shared, integration=integration, pos_embedding="learned",
                      cls_token=True, padding="reflect", dropout=0.2, proj_dropout=0.2)


def _pad_amount(n: int, patch: int, stride: int) -> int:
    """Fewest values to add so that patches of `patch` at `stride` cover n exactly."""
    if n <= patch:
        return patch - n
    return -(n - patch) % stride


def padding_amounts(cfg: BASTConfig) -> tuple[int, int]:
    """(rows, columns) of padding per ear."""
    return _pad_amount(cfg.n_freq, cfg.patch, cfg.stride), _pad_amount(cfg.n_time, cfg.patch, cfg.stride)


def token_grid(cfg: BASTConfig) -> tuple[int, int]:
    """(rows, cols) of the patch grid; rows * cols patch tokens per ear (class token not counted)."""
    ph, pw = padding_amounts(cfg)
    return ((cfg.n_freq + ph - cfg.patch) // cfg.stride + 1,
            (cfg.n_time + pw - cfg.patch) // cfg.stride + 1)


@torch.no_grad()
def reset_special_parameters(model: nn.Module) -> None:
    """After the generic initialisation: the parameters a backbone initialises its own way
    (swin's relative position bias, mamba's step sizes, A and D). The ViT has none, so its
    initial weights, and the random numbers drawn, are what they were before backbones."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_special_parameters"):
            m.reset_special_parameters()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters; a module shared by two paths (SP's TE-L) is counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def sinusoidal_embedding(n_tokens: int, dim: int) -> torch.Tensor:
    """The fixed 1-D sin/cos position embedding of Vaswani et al.: (n_tokens, dim)."""
    pos = torch.arange(n_tokens, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(n_tokens, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.float()


# ----------------------------------------------------------------------------- embedding


class PatchEmbed(nn.Module):
    """Pad one ear, cut overlapping patches, project each to D: (B, 1, F, T) -> (B, N, D).

    Conv2d(1, D, patch, stride) is the reference code's Unfold + Linear(patch*patch, D) with
    the Linear's weight reshaped to (D, 1, patch, patch); tokens run row-major over the grid
    (frequency-major), as the reference code's Rearrange orders them.
    """

    def __init__(self, cfg: BASTConfig):
        super().__init__()
        ph, pw = padding_amounts(cfg)
        pad = (0, pw, ph, 0)  # (left, right, top, bottom): rows before row 0, columns after the last
        self.pad = nn.ReflectionPad2d(pad) if cfg.padding == "reflect" else nn.ZeroPad2d(pad)
        self.proj = nn.Conv2d(featurekinds.ear_channels(cfg.features), cfg.dim, kernel_size=cfg.patch,
                              stride=cfg.stride)
        self.grid = token_grid(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pad(x)).flatten(2).transpose(1, 2)


def ears(x: torch.Tensor, features=featurekinds.DEFAULT, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked feature kinds `features` (B, C, F, T) -> what each ear's stream sees, the
    channels each kind declares for that ear (`left`, `right`: channel and sign). The log
    power alone: (B, 2, F, T) -> each ear (B, 1, F, T); with the phase, (B, 4, F, T) =
    (power L, power R, cos, sin) -> left (power L, cos, sin) and right (power R, cos, -sin),
    (B, 3, F, T) each; `average`: the channels of kinds declared `frame_average` (cos and
    sin) averaged over the frames, the same in every frame."""
    if tuple(features) == featurekinds.DEFAULT:
        return x[:, 0:1], x[:, 1:2]
    left, right, at = [], [], 0
    for kind in featurekinds.kinds(features):
        part = x[:, at:at + kind.channels]
        if average and kind.frame_average:
            part = part.mean(dim=-1, keepdim=True).expand_as(part)
        for side, out in ((kind.left, left), (kind.right, right)):
            out.extend(part[:, c:c + 1] if sign > 0 else -part[:, c:c + 1] for c, sign in side)
        at += kind.channels
    return torch.cat(left, dim=1), torch.cat(right, dim=1)


class ClassToken(nn.Module):
    """Prepends one learned token (shared by both ears) to the sequence."""

    def __init__(self, dim: int):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.token.expand(x.shape[0], -1, -1), x), dim=1)


class OutputTokens(nn.Module):
    """M2M-AST's output tokens: n learned tokens, one per output frame, put before the
    tokens of the last encoder; the head reads each as its frame's output."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(1, n, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.tokens.expand(x.shape[0], -1, -1), x), dim=1)


def read_out(head: nn.Module, norm: nn.Module, tokens: torch.Tensor, out_tokens: int) -> torch.Tensor:
    """The head over the mean of all tokens, or (out_tokens > 0) over each output token,
    the frames' outputs side by side: (B, outputs)."""
    if out_tokens:
        return head(norm(tokens[:, :out_tokens])).flatten(1)
    return head(norm(tokens.mean(dim=1)))


class LearnedPosEmbed(nn.Module):
    def __init__(self, n_tokens: int, dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos


class SinusoidalPosEmbed(nn.Module):
    """Fixed: a buffer, not a parameter, and left out of the state dict (it is a function of the config)."""

    def __init__(self, n_tokens: int, dim: int):
        super().__init__()
        self.register_buffer("pos", sinusoidal_embedding(n_tokens, dim)[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos


# ----------------------------------------------------------------------------- integration


class Add(nn.Module):
    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return left + right


class Sub(nn.Module):
    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return left - right


class Concat(nn.Module):
    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.cat((left, right), dim=-1)


_INTEGRATION = {"add": Add, "sub": Sub, "concat": Concat}


# ----------------------------------------------------------------------------- model


class BAST(nn.Module):
    """(B, 2, n_freq, n_time) standardised spectrograms (channel 0 = left ear) -> (B, 2) = (x, y).

    The output has no activation; the predicted azimuth is atan2(y, x) (docs/conventions.md).
    """

    def __init__(self, cfg: BASTConfig | None = None):
        super().__init__()
        cfg = cfg or BASTConfig()
        self.cfg = cfg
        rows, cols = token_grid(cfg)
        self.n_patches = rows * cols
        self.n_tokens = self.n_patches + int(cfg.cls_token)

        # Shared by both ears, in SP and NSP alike (as the reference code).
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = ClassToken(cfg.dim) if cfg.cls_token else nn.Identity()
        pos = LearnedPosEmbed if cfg.pos_embedding == "learned" else SinusoidalPosEmbed
        self.pos_embed = pos(self.n_tokens, cfg.dim)
        self.pos_drop = nn.Dropout(cfg.dropout)

        def encoder(width: int, first_shifted: bool = False) -> nn.Module:
            return make_encoder(cfg.backbone, width, depth=cfg.depth, heads=cfg.heads, head_dim=cfg.head_dim,
                                mlp_dim=cfg.mlp_dim, drop=cfg.dropout, proj_drop=cfg.proj_dropout, grid=(rows, cols),
                                window=cfg.window, expand=cfg.expand, d_state=cfg.d_state, d_conv=cfg.d_conv,
                                first_shifted=first_shifted)

        self.encoder_left = encoder(cfg.dim)
        # SP: the same module object under both names (state_dict lists it twice, storage once).
        self.encoder_right = self.encoder_left if cfg.shared else encoder(cfg.dim)
        self.integrate = _INTEGRATION[cfg.integration]()
        # swin: windows shift every second block along a token's path, TE-L then TE-C
        self.encoder_center = encoder(cfg.center_dim, first_shifted=cfg.depth % 2 == 1)

        self.norm = nn.LayerNorm(cfg.center_dim)
        self.out_tokens = OutputTokens(cfg.out_tokens, cfg.center_dim) if cfg.out_tokens else nn.Identity()
        self.head = nn.Linear(cfg.center_dim, cfg.outputs // max(1, cfg.out_tokens))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """timm style: Linear weights trunc_normal(0.02), biases 0, LayerNorm 1/0; the learned
        position embedding and class token trunc_normal(0.02). The patch Conv2d keeps PyTorch's
        default (as timm's PatchEmbed). Deterministic under torch.manual_seed."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (LearnedPosEmbed, ClassToken, OutputTokens)):
                nn.init.trunc_normal_(next(iter(m.parameters())), std=0.02)
        reset_special_parameters(self)

    def embed(self, ear: torch.Tensor) -> torch.Tensor:
        """One ear (B, 1, n_freq, n_time) -> tokens (B, n_tokens, D)."""
        return self.pos_drop(self.pos_embed(self.cls_token(self.patch_embed(ear))))

    def forward_features(self, x: torch.Tensor, attn_maps: dict | None = None) -> torch.Tensor:
        """Embedding, TE-L / TE-R, integration, TE-C: (B, 2, F, T) -> (B, n_tokens, width).

        With `attn_maps` (a dict), each encoder's per-layer softmax weights are appended
        to attn_maps["left"], ["right"] and ["center"].
        """
        maps = attn_maps if attn_maps is not None else {}
        left_ear, right_ear = ears(x, self.cfg.features, self.cfg.phase_average)
        left = self.encoder_left(self.embed(left_ear), maps.get("left"))
        right = self.encoder_right(self.embed(right_ear), maps.get("right"))
        return self.encoder_center(self.out_tokens(self.integrate(left, right)), maps.get("center"))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean over all tokens (the class token included when there is one), LayerNorm,
        Linear; with output tokens, LayerNorm and Linear of each (`read_out`)."""
        return read_out(self.head, self.norm, tokens, self.cfg.out_tokens)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(B, 2, F, T) -> (B, 2); with return_attention, (pred, {"left", "right", "center":
        [per layer (B, heads, T, T)]}). In SP, "left" and "right" both come from TE-L."""
        if return_attention and self.cfg.backbone != "vit":
            raise ConfigError(f"attention maps need the vit backbone, not {self.cfg.backbone}")
        maps = {"left": [], "right": [], "center": []} if return_attention else None
        pred = self.forward_head(self.forward_features(x, maps))
        return (pred, maps) if return_attention else pred
