"""PyTorch definitions of the networks the ONNX benchmarks and tests export.

torchvision from the package index is a CUDA build that does not import next to the CPU
torch used here, so ResNet-18 and MobileNetV2 are written out (the same layers, shapes and
parameter counts as torchvision's `resnet18()` and `mobilenet_v2()`), with a 2-layer d=256
transformer encoder and a causal (decoder-only) counterpart. `export(name)` returns the ONNX
bytes of a seeded, eval-mode instance with non-trivial batch-norm statistics, the module and
an input. Needs torch (and onnx to export).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch
from torch import nn


def _bn_stats(model: nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters: a fresh BatchNorm is the identity,
    which would hide a wrong folding or axis."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, first stride), as in the paper and torchvision.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(h, 1))


class TransformerEncoder(nn.Module):
    """2 post-norm layers, d=256, 4 heads, feed-forward 1024, GELU-free (ReLU) as torch's
    default layer; `causal` masks attention to earlier positions (a decoder-only stack)."""

    def __init__(self, causal: bool = False, d: int = 256, layers: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=causal)
        self.stack = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            return self.stack(x)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.stack(x, mask=mask, is_causal=True)


NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (ResNet18, (1, 3, 224, 224)),
    "mobilenet_v2": (MobileNetV2, (1, 3, 224, 224)),
    "encoder": (TransformerEncoder, (1, 128, 256)),
    "decoder": (lambda: TransformerEncoder(causal=True), (1, 128, 256)),
}


def build(name: str, shape: tuple[int, ...] | None = None, seed: int = 0
          ) -> tuple[nn.Module, torch.Tensor]:
    """A seeded eval-mode instance of NETS[name] and an input of `shape` (default: NETS')."""
    cls, default = NETS[name]
    torch.manual_seed(seed)
    model = cls().eval()
    _bn_stats(model, seed)
    x = torch.randn(*(shape or default))
    return model, x


def export(name: str, shape: tuple[int, ...] | None = None, seed: int = 0,
           dynamo: bool = False) -> tuple[bytes, nn.Module, torch.Tensor]:
    """ONNX bytes of `build(name, shape, seed)` (input "x", output "y"; opset 17), the
    module and the input."""
    model, x = build(name, shape, seed)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"],
                                     output_names=["y"])
            assert prog is not None
            return prog.model_proto.SerializeToString(), model, x
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
    return buf.getvalue(), model, x


# --- the transformer benchmarks' GPT (benchmarks/workloads_gpt.py) ---------------------------

class TorchGPT(nn.Module):
    """Token and learned position embeddings, `layers` pre-norm GELU encoder layers (torch's
    own `nn.TransformerEncoderLayer`, dropout 0), final LayerNorm and vocabulary projection;
    `causal` masks attention to earlier positions (a decoder-only GPT). `load(params)` takes
    the benchmarks' canonical weights (`workloads_gpt.gpt_params`: kernels (in, out))."""

    def __init__(self, vocab: int, d: int, heads: int, ffn: int, layers: int, max_len: int,
                 causal: bool = True) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.causal = causal

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        steps = ids.shape[1]
        x = self.wte(ids) + self.wpe.weight[:steps]
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(steps, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=self.causal)
        return self.head(self.ln_f(x))

    def load(self, params: dict) -> TorchGPT:
        """Copy the canonical numpy weights in (kernels transposed to torch's (out, in))."""

        def put(param: torch.Tensor, array: object, transpose: bool = False) -> None:
            value = torch.from_numpy(array.T.copy() if transpose else array.copy())
            with torch.no_grad():
                param.copy_(value)

        put(self.wte.weight, params["wte"])
        put(self.wpe.weight, params["wpe"])
        for i, block in enumerate(self.blocks):
            pre = f"h{i}."
            put(block.norm1.weight, params[pre + "ln1_g"])
            put(block.norm1.bias, params[pre + "ln1_b"])
            put(block.self_attn.in_proj_weight, params[pre + "qkv_w"], transpose=True)
            put(block.self_attn.in_proj_bias, params[pre + "qkv_b"])
            put(block.self_attn.out_proj.weight, params[pre + "out_w"], transpose=True)
            put(block.self_attn.out_proj.bias, params[pre + "out_b"])
            put(block.norm2.weight, params[pre + "ln2_g"])
            put(block.norm2.bias, params[pre + "ln2_b"])
            put(block.linear1.weight, params[pre + "fc1_w"], transpose=True)
            put(block.linear1.bias, params[pre + "fc1_b"])
            put(block.linear2.weight, params[pre + "fc2_w"], transpose=True)
            put(block.linear2.bias, params[pre + "fc2_b"])
        put(self.ln_f.weight, params["lnf_g"])
        put(self.ln_f.bias, params["lnf_b"])
        put(self.head.weight, params["head_w"], transpose=True)
        put(self.head.bias, params["head_b"])
        return self


def export_gpt(model: nn.Module, ids: torch.Tensor, opset: int = 17) -> bytes:
    """ONNX bytes of an eval-mode `TorchGPT` on int64 ids (input "ids", output "logits"), with
    torch's TorchScript exporter like `export`. Not under no_grad: that would trace
    the layers' inference fast path (`_transformer_encoder_layer_fwd`), which has no ONNX
    symbolic."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (ids,), buf, dynamo=False, input_names=["ids"],
                          output_names=["logits"], opset_version=opset)
    return buf.getvalue()
