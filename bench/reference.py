"""PyTorch reference of our ResNet, for ./build.sh bench.

1. Builds the same architecture (torchvision's ResNet with BasicBlocks, a 1-channel stem and the
   widths in model.json), loads the weights `trainer bench interop` wrote (model.safetensors,
   torchvision names) and checks that its logits for the same preprocessed input (input.bin)
   equal ours (reference.json): this is the numerical-parity check with PyTorch.
2. Exports it to ONNX (batch 1, 1x256x256 → 2 logits) for onnxruntime and onnxruntime-web, and
   checks onnxruntime's logits too.
3. Times, with the same thread count: PyTorch CPU and onnxruntime single-image inference, and a
   PyTorch training step (forward, class-weighted cross-entropy, backward, AdamW) at the widths
   asked for, on random input as our `trainer bench train` does.

Prints one JSON object. Usage: reference.py INTEROP_DIR OUT_DIR --threads N --train-widths 0.25,1.0
"""

import argparse
import json
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

PARITY_TOLERANCE = 1e-4  # max |logit difference|, f32 on both sides


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", meta
        a, b = meta["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(body[a:b], dtype="<f4").reshape(meta["shape"]).copy())
    return out


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """src/model.rs in PyTorch: 7x7/2 stem, BN, ReLU, 3x3/2 max-pool, stages, mean pool, linear."""

    def __init__(self, in_channels, stem_width, widths, depths, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem_width
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = []
            for b in range(d):
                blocks.append(BasicBlock(cin, w, (1 if i == 0 else 2) if b == 0 else 1))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.stages = len(widths)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def resnet18_width(width):
    scale = lambda w: max(int(round(w * width)), 4)
    return dict(in_channels=1, stem_width=scale(64), widths=[scale(w) for w in (64, 128, 256, 512)],
                depths=[2, 2, 2, 2], num_classes=2)


def median_ms(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("interop")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--train-widths", default="0.25")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    arch = json.load(open(os.path.join(args.interop, "model.json")))
    a = arch["architecture"]
    size = arch["input_size"]
    model = ResNet(a["in_channels"], a["stem_width"], a["widths"], a["depths"], a["num_classes"]).eval()
    state = read_safetensors(os.path.join(args.interop, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"weights do not match the architecture: missing {missing}, unexpected {unexpected}")
    x = torch.from_numpy(np.fromfile(os.path.join(args.interop, "input.bin"), dtype="<f4").reshape(1, 1, size, size).copy())
    ours = json.load(open(os.path.join(args.interop, "reference.json")))["logits"]
    with torch.inference_mode():
        theirs = model(x)[0].tolist()
    diff = max(abs(u - v) for u, v in zip(ours, theirs))
    if diff > PARITY_TOLERANCE:
        sys.exit(f"PARITY FAILED: our logits {ours}, PyTorch {theirs} (max difference {diff:.2e})")

    onnx_path = os.path.join(args.out, "model.onnx")
    torch.onnx.export(model, (x,), onnx_path, input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamo=False)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    ort_logits = session.run(None, {"input": x.numpy()})[0][0].tolist()
    ort_diff = max(abs(u - v) for u, v in zip(ours, ort_logits))
    if ort_diff > PARITY_TOLERANCE:
        sys.exit(f"PARITY FAILED (onnxruntime): ours {ours}, onnxruntime {ort_logits}")

    with torch.inference_mode():
        torch_ms, torch_times = median_ms(lambda: model(x), args.runs)
    ort_ms, ort_times = median_ms(lambda: session.run(None, {"input": x.numpy()}), args.runs)

    training = []
    for width in [float(w) for w in args.train_widths.split(",") if w]:
        net = ResNet(**resnet18_width(width)).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        labels = torch.arange(args.batch_size) % 2
        class_weights = torch.tensor([1.0, 3.0])

        def step():
            xb = torch.rand(args.batch_size, 1, size, size)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), labels, weight=class_weights)
            loss.backward()
            opt.step()
            return loss.item()

        ms, times = median_ms(step, args.train_steps, warmup=2)
        training.append({"width": width, "batch": args.batch_size, "size": size, "step_ms": times, "median_ms": ms,
                         "img_per_s": args.batch_size / (ms / 1e3)})

    print(json.dumps({
        "torch": torch.__version__, "onnxruntime": ort.__version__, "threads": args.threads,
        "parity": {"ours": ours, "pytorch": theirs, "onnxruntime": ort_logits, "max_diff": diff, "ort_max_diff": ort_diff,
                   "tolerance": PARITY_TOLERANCE},
        "onnx": onnx_path, "onnx_bytes": os.path.getsize(onnx_path),
        "infer": {"pytorch_ms": torch_ms, "pytorch_times": torch_times, "onnxruntime_ms": ort_ms, "onnxruntime_times": ort_times},
        "train": training,
    }))


if __name__ == "__main__":
    main()
