"""Train the shipped general-purpose Fashion-MNIST models and export them to ONNX.

Three 10-class networks of the paper's families (ResNet-18, MobileNet-V2, GoogLeNet), adapted to
28x28 grayscale input and built only from ops the velcro-ref engine runs. Each model is written as
<out-dir>/<model>.onnx plus <out-dir>/<model>.json (recipe, preprocessing, accuracy in torch and
onnxruntime). Needs the `train` extra (torch) and onnxruntime.

    PYTHONPATH=. python scripts/train_fashion.py --model all --out-dir weights/build
"""

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from velcro_ref.data import load_fashion_mnist, preprocess  # noqa: E402
from velcro_ref.zoo import INCEPTION, MOBILENET_V2_SETTINGS, make_divisible  # noqa: E402

# Fashion-MNIST training-set pixel mean and std (of x/255), measured on the 60000 train images.
PREPROCESSING = {"scale": 1 / 255, "mean": [0.2860], "std": [0.3530]}
N_CLASSES = 10
MAX_PARAM_BYTES = 10_000_000
OPSET = 17

# Per-model defaults chosen so all three train in about an hour on 2 CPU cores and reach >= 92%
# (measured with channels_last: about 70, 120 and 70 s of training per epoch).
DEFAULTS = {
    "resnet18": {"width": 0.25, "epochs": 8},
    "mobilenet_v2": {"width": 0.35, "epochs": 10},
    "googlenet": {"width": 0.25, "epochs": 8},
}


def conv_bn(c_in, c_out, kernel, stride=1, groups=1, act=nn.ReLU, eps=1e-5):
    """Conv (no bias: the BN shift replaces it) + BN + optional activation, 'same' padding for odd kernels."""
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=eps),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 conv-BN shortcut, add, ReLU."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, act=None)
        self.downsample = conv_bn(c_in, c_out, 1, stride, act=None) if stride != 1 or c_in != c_out else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 (BasicBlock, layers 2,2,2,2) with a CIFAR-style stem: 3x3/1 conv, no max pool.

    Stage widths are (64, 128, 256, 512) * width; a 28x28 input ends as a 4x4 map before the global pool.
    """

    def __init__(self, width=1.0, n_classes=N_CLASSES):
        super().__init__()
        widths = [max(8, round(w * width)) for w in (64, 128, 256, 512)]
        self.stem = conv_bn(1, widths[0], 3)
        layers, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), linear 1x1 project, skip if same shape."""

    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn(c_in, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, c_out, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_skip = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.block(x) if self.use_skip else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNet-V2 with width multiplier, adapted to 28x28: stem stride 1 and first stride-2 stage stride 1.

    The remaining three stride-2 stages take 28x28 to 4x4 before the global pool.
    """

    SETTINGS = MOBILENET_V2_SETTINGS  # (t, c, n, s), the paper's table

    def __init__(self, width=1.0, n_classes=N_CLASSES, dropout=0.2):
        super().__init__()
        c_in = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers = [conv_bn(1, c_in, 3, 1, act=nn.ReLU6)]
        first_stride2 = True
        for t, c, n, s in self.SETTINGS:
            if s == 2 and first_stride2:
                # 28x28 input: keep full resolution one stage longer than ImageNet's 224x224 would.
                s, first_stride2 = 1, False
            c_out = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        layers.append(conv_bn(c_in, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, n_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def basic_conv(c_in, c_out, kernel, stride=1):
    """GoogLeNet's BasicConv2d: conv + BN (eps 0.001, as torchvision) + ReLU."""
    return conv_bn(c_in, c_out, kernel, stride, eps=0.001)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | 3x3 max pool-1x1.

    The third branch uses a 3x3 conv where the paper has 5x5, as torchvision's GoogLeNet does.
    """

    def __init__(self, c_in, ch1, ch3_red, ch3, ch5_red, ch5, pool_proj):
        super().__init__()
        self.branch1 = basic_conv(c_in, ch1, 1)
        self.branch2 = nn.Sequential(basic_conv(c_in, ch3_red, 1), basic_conv(ch3_red, ch3, 3))
        self.branch3 = nn.Sequential(basic_conv(c_in, ch5_red, 1), basic_conv(ch5_red, ch5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), basic_conv(c_in, pool_proj, 1))
        self.c_out = ch1 + ch3 + ch5 + pool_proj

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """GoogLeNet (nine Inception modules, no auxiliary classifiers) with a 28x28 stem.

    Stem: 3x3/1 conv, 3x3/2 max pool (14x14), 1x1 conv, 3x3 conv; no second stem pool.
    Then 3a-3b at 14x14, max pool to 7x7, 4a-4e, max pool 2/2 to 4x4, 5a-5b, global pool, dropout, fc.
    """

    # ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj of torchvision's modules 3a .. 5b
    MODULES = INCEPTION

    def __init__(self, width=1.0, n_classes=N_CLASSES, dropout=0.2):
        super().__init__()

        def scaled(c):
            return max(4, round(c * width))

        c1, c3 = scaled(64), scaled(192)
        layers = [
            basic_conv(1, c1, 3),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            basic_conv(c1, c1, 1),
            basic_conv(c1, c3, 3),
        ]
        c_in = c3
        for name, chans in self.MODULES.items():
            if name == "4a":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            if name == "5a":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            module = Inception(c_in, *(scaled(c) for c in chans))
            layers.append(module)
            c_in = module.c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


MODELS = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2, "googlenet": GoogLeNet}


def augment(x, pad=2):
    """Random crop after padding each side by `pad` black pixels, and random horizontal flip.

    x: float32 normalised (N, 1, H, W); the padding is the normalised value of black, i.e. background.
    """
    n, _, h, w = x.shape
    fill = -PREPROCESSING["mean"][0] / PREPROCESSING["std"][0]
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    oy = torch.randint(0, 2 * pad + 1, (n, 1, 1))
    ox = torch.randint(0, 2 * pad + 1, (n, 1, 1))
    rows = oy + torch.arange(h).view(1, h, 1)
    cols = ox + torch.arange(w).view(1, 1, w)
    flip = torch.rand(n, 1, 1) < 0.5
    cols = torch.where(flip, cols.flip(2), cols)
    return padded[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)


def fast_layout(x):
    """channels_last memory layout: about 1.3-2x faster CPU training here (oneDNN), same values."""
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model, x, y, batch=1000):
    """Top-1 accuracy of `model` (eval mode) on float32 NCHW x and int64 labels y."""
    model.eval()
    correct = sum(
        int((model(fast_layout(x[i : i + batch])).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / len(x)


def train(model, data, args, log):
    """SGD (Nesterov) with a one-cycle schedule.

    Returns per-epoch records and the wall time in seconds, including each epoch's test evaluation.
    """
    x_train, y_train, x_test, y_test = data
    n_train = len(x_train) if args.subset is None else args.subset
    steps_per_epoch = math.ceil(n_train / args.batch)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    history, start = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        epoch_start, total_loss = time.perf_counter(), 0.0
        order = torch.randperm(len(x_train))[:n_train]
        for step in range(steps_per_epoch):
            idx = order[step * args.batch : (step + 1) * args.batch]
            loss = loss_fn(model(fast_layout(augment(x_train[idx]))), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
        train_s = time.perf_counter() - epoch_start
        test_acc = accuracy(model, x_test, y_test)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / n_train,
            "test_acc": test_acc,
            "train_s": train_s,
            "epoch_s": time.perf_counter() - epoch_start,
        }
        history.append(record)
        log(
            f"  epoch {epoch}/{args.epochs}: loss {record['train_loss']:.4f}  test acc {test_acc:.4f}  "
            f"train {train_s:.0f} s  total {record['epoch_s']:.0f} s"
        )
    return history, time.perf_counter() - start


def export_onnx(model, path):
    """Export in eval mode (input 'input', output 'logits', dynamic batch), written to a temp name then renamed."""
    model.eval().to(memory_format=torch.contiguous_format)
    tmp = path.with_name(path.name + ".tmp")
    # The TorchScript exporter (dynamo=False) needs no onnxscript package and folds BN into conv in eval mode.
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(tmp),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    os.replace(tmp, path)


def onnx_check(path, x_test, y_test, batch=1000):
    """Return (onnxruntime accuracy, ONNX float32 parameter count) of an exported model on the test split."""
    import onnx
    import onnxruntime as ort

    initializers = onnx.load(str(path)).graph.initializer
    n_params = sum(int(np.prod(t.dims)) for t in initializers if t.data_type == onnx.TensorProto.FLOAT)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x, y = x_test.numpy(), y_test.numpy()
    correct = sum(
        int((session.run(["logits"], {"input": x[i : i + batch]})[0].argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    return correct / len(x), n_params


def write_json(path, record):
    """Write `record` as indented JSON to a temp name, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def run(name, data, args, log):
    """Build, train, export and verify one model; returns its JSON record."""
    width = args.width if args.width is not None else DEFAULTS[name]["width"]
    epochs = args.epochs if args.epochs is not None else DEFAULTS[name]["epochs"]
    run_args = argparse.Namespace(**{**vars(args), "width": width, "epochs": epochs})
    torch.manual_seed(args.seed)
    model = MODELS[name](width=width).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{name}: width {width}, {n_params} torch parameters, {epochs} epochs")
    if args.param_count:
        return None
    history, wall_s = train(model, data, run_args, log)
    torch_acc = history[-1]["test_acc"]
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    export_onnx(model, onnx_path)
    ort_acc, onnx_params = onnx_check(onnx_path, data[2], data[3])
    log(
        f"{name}: test accuracy torch {torch_acc:.4f}  onnxruntime {ort_acc:.4f}  "
        f"({onnx_params} ONNX params = {4 * onnx_params / 1e6:.2f} MB float32), trained in {wall_s:.0f} s"
    )
    if 4 * onnx_params > MAX_PARAM_BYTES:
        log(f"{name}: WARNING: {4 * onnx_params} parameter bytes exceed the {MAX_PARAM_BYTES} byte limit")
    record = {
        "model": name,
        "n_classes": N_CLASSES,
        "input_shape": [1, 28, 28],
        "dataset": "fashion-mnist",
        "preprocessing": PREPROCESSING,
        "recipe": {
            "width": width,
            "epochs": epochs,
            "batch": args.batch,
            "optimizer": "SGD nesterov momentum 0.9",
            "max_lr": args.lr,
            "schedule": "OneCycleLR (cosine)",
            "weight_decay": args.weight_decay,
            "label_smoothing": args.label_smoothing,
            "augmentation": "random crop, 2-pixel pad; horizontal flip",
            "seed": args.seed,
            "torch_threads": torch.get_num_threads(),
            "train_subset": args.subset,
            "torch_version": torch.__version__,
            "onnx_opset": OPSET,
        },
        "accuracy_kept": "final epoch (no selection on the test split)",
        "test_accuracy_torch": torch_acc,
        "test_accuracy_onnxruntime": ort_acc,
        "history": history,
        "train_wall_s": wall_s,
        "n_params_torch": n_params,
        "n_params_onnx": onnx_params,
    }
    write_json(out_dir / f"{name}.json", record)
    return record


def load_data(log):
    """Full train and test splits as preprocessed float32 NCHW tensors and int64 labels."""
    tensors = []
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split)
        tensors += [torch.from_numpy(preprocess(images, PREPROCESSING)), torch.from_numpy(labels.copy())]
    log(f"data: {len(tensors[0])} train, {len(tensors[2])} test images")
    return tensors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    epochs = ", ".join(f"{k} {v['epochs']}" for k, v in DEFAULTS.items())
    widths = ", ".join(f"{k} {v['width']}" for k, v in DEFAULTS.items())
    parser.add_argument("--epochs", type=int, help=f"epochs for every chosen model; default {epochs}")
    parser.add_argument("--width", type=float, help=f"width multiplier for every chosen model; default {widths}")
    parser.add_argument("--out-dir", default="weights/build")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subset", type=int, help="train on this many random images per epoch (for timing runs)")
    parser.add_argument("--param-count", action="store_true", help="print parameter counts and exit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(message):
        print(message, flush=True)

    names = list(MODELS) if args.model == "all" else [args.model]
    data = None if args.param_count else load_data(log)
    for name in names:
        run(name, data, args, log)


if __name__ == "__main__":
    main()
