"""fastlstm.torch.LSTM inside a plain PyTorch loop, against torch.nn.LSTM (bench/NOTES.md 48).

`python -m fastlstm.bench` times each library alone and lets the machine settle between them.
A user who swaps torch.nn.LSTM for fastlstm.torch.LSTM runs it between PyTorch's own
operations instead: a read-out layer, a loss, an optimizer step. PyTorch's OpenMP worker
threads keep spinning for some milliseconds after each of those, so fastlstm's kernels start
while they hold the cores. This script times that loop: per step, an LSTM (batch_first) and a
Linear read-out of the last hidden state, cross-entropy, backward and an Adam step
("train"), or the forward of the two under torch.no_grad() ("infer"), with

    torch       torch.nn.LSTM
    fl-own      fastlstm.torch.LSTM on fastlstm's own thread pool (FASTLSTM_POOL=own)
    fl-auto     fastlstm.torch.LSTM with the default pool: the OpenMP runtime PyTorch loaded
    fl-cached   (inference only) fl-auto with lstm.cache_weights(): converted, packed weights kept

all three from the same initial weights, in one process, in blocks of steps that rotate
their order every round (no pause between blocks: the loop is what is measured). Reports
the median step time with min and max over all steps but each block's first two, and
torch/contender, the ratio of medians (above 1: faster than torch.nn.LSTM).

    python bench/torch_loop.py                       # the default configurations
    python bench/torch_loop.py --config 100,16,256,256 --rounds 5 --steps 20
    python bench/torch_loop.py --json out.json --markdown out.md
    python bench/torch_loop.py --layout     # fl-auto against itself fed time-major (NOTES 58)

With --layout the contenders are torch, "fl-tm" (fastlstm.torch.LSTM(batch_first=False) fed
x.transpose(0, 1), the path batch_first input took before NOTES 58) and fl-auto.
"""

import argparse
import json
import platform
import time

import numpy as np

from fastlstm.bench import parse_config, positive_int as positive   # (the same checks)

DEFAULT_CONFIGS = [(30, 32, 64, 64), (30, 32, 64, 128), (100, 1, 256, 256),
                   (100, 16, 256, 256), (50, 64, 128, 128), (100, 64, 512, 512)]
SKIP = 2   # steps at the start of each block left out (the previous contender's wake)


def build(torch, lstm_class, state, I, H, batch_first=True):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm_class(I, H, batch_first=batch_first)
            self.head = torch.nn.Linear(H, 10)

        def forward(self, x):   # x (B, T, I)
            _, (h_n, _) = self.lstm(x if batch_first else x.transpose(0, 1))
            return self.head(h_n[-1])

    net = Net()
    net.load_state_dict(state)
    return net


def measure(config, mode, rounds, steps, seed, layout=False):
    import torch
    import fastlstm
    import fastlstm.torch as ft
    from fastlstm import _core

    T, B, I, H = config
    torch.manual_seed(seed)
    base = torch.nn.Module()
    base.lstm = torch.nn.LSTM(I, H, batch_first=True)
    base.head = torch.nn.Linear(H, 10)
    state = base.state_dict()
    nets = {"torch": build(torch, torch.nn.LSTM, state, I, H)}
    if layout:
        nets["fl-tm"] = build(torch, ft.LSTM, state, I, H, batch_first=False)
    else:
        nets["fl-own"] = build(torch, ft.LSTM, state, I, H)
    nets["fl-auto"] = build(torch, ft.LSTM, state, I, H)
    if mode == "infer" and not layout:   # inference with the converted, packed weights kept (cache_weights)
        nets["fl-cached"] = build(torch, ft.LSTM, state, I, H)
        nets["fl-cached"].lstm.cache_weights()
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=1e-3) for name, net in nets.items()}
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((B, T, I), generator=generator)
    y = torch.randint(0, 10, (B,), generator=generator)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(name):
        net = nets[name]
        if mode == "infer":
            with torch.no_grad():
                net(x)
            return
        optimizer = optimizers[name]
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()

    def select(name):
        if name != "torch":
            fastlstm.set_cpu_pool("own" if name == "fl-own" else "auto")   # (fl-cached: auto)
        # each block starts as a process of its own would: without a back-off to one thread
        # that the previous contender's calls started (fastlstm's back-off is process-wide)
        _core.set_backoff(True)

    contenders = tuple(nets)
    times = {name: [] for name in contenders}
    for name in contenders:            # warm-up: first-use costs of each shape
        select(name)
        for _ in range(2):
            step(name)
    for r in range(rounds):
        k = r % len(contenders)
        order = contenders[k:] + contenders[:k]
        for name in order:
            select(name)
            block = []
            for _ in range(steps + SKIP):
                t0 = time.perf_counter()
                step(name)
                block.append(time.perf_counter() - t0)
            times[name].extend(block[SKIP:])
    fastlstm.set_cpu_pool("auto")
    pools = fastlstm.cpu_info()
    return times, pools


def summarize(times):
    out = {}
    torch_median = float(np.median(times["torch"]))
    for name, values in times.items():
        values = np.asarray(values)
        median = float(np.median(values))
        out[name] = {"median_ms": median * 1e3, "min_ms": float(values.min()) * 1e3,
                     "max_ms": float(values.max()) * 1e3, "torch_over": torch_median / median}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=parse_config, action="append",
                        help="T,B,I,H (repeatable; default: a set of six)")
    parser.add_argument("--modes", choices=("train", "infer", "both"), default="both")
    parser.add_argument("--rounds", type=positive, default=6)
    parser.add_argument("--steps", type=positive, default=15, help="timed steps per block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every step time here")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--layout", action="store_true",
                        help="fl-auto against fl-tm (time-major input) instead of the pools")
    args = parser.parse_args(argv)

    import torch
    import fastlstm
    configs = args.config or DEFAULT_CONFIGS
    modes = ("train", "infer") if args.modes == "both" else (args.modes,)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows, raw = [], []
    header = ("| T, B, I, H | mode | torch.nn.LSTM ms | fastlstm own pool ms | torch/own "
              "| fastlstm default (OpenMP) ms | torch/default | default + cache_weights() ms "
              "| torch/cached |")
    if args.layout:
        header = ("| T, B, I, H | mode | torch.nn.LSTM ms | fastlstm fed time-major ms | torch/tm "
                  "| fastlstm batch_first ms | torch/batch_first | tm/batch_first |")
    lines = [header, "|" + "---|" * (header.count(" | ") + 1)]
    print(header)
    print(lines[1])
    for config in configs:
        for mode in modes:
            times, info = measure(config, mode, args.rounds, args.steps, args.seed, args.layout)
            s = summarize(times)

            def cell(name):
                v = s[name]
                return f"{v['median_ms']:.3f} ({v['min_ms']:.3f}-{v['max_ms']:.3f})"

            if args.layout:
                line = (f"| {', '.join(map(str, config))} | {mode} | {cell('torch')} "
                        f"| {cell('fl-tm')} | {s['fl-tm']['torch_over']:.2f} | {cell('fl-auto')} "
                        f"| {s['fl-auto']['torch_over']:.2f} "
                        f"| {s['fl-tm']['median_ms'] / s['fl-auto']['median_ms']:.2f} |")
                print(line, flush=True)
                lines.append(line)
                rows.append({"config": config, "mode": mode, "summary": s})
                raw.append({"config": config, "mode": mode,
                            "times_s": {k: [float(t) for t in v] for k, v in times.items()}})
                continue
            cached = (f" {cell('fl-cached')} | {s['fl-cached']['torch_over']:.2f} |"
                      if "fl-cached" in s else " - | - |")
            line = (f"| {', '.join(map(str, config))} | {mode} | {cell('torch')} | {cell('fl-own')} "
                    f"| {s['fl-own']['torch_over']:.2f} | {cell('fl-auto')} "
                    f"| {s['fl-auto']['torch_over']:.2f} |" + cached)
            print(line, flush=True)
            lines.append(line)
            rows.append({"config": config, "mode": mode, "summary": s})
            raw.append({"config": config, "mode": mode,
                        "times_s": {k: [float(t) for t in v] for k, v in times.items()},
                        "pool": info.get("pool"), "openmp_runtime": info.get("openmp_runtime")})
    meta = {"started": started, "machine": platform.node(), "processor": platform.processor(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "fastlstm_threads": fastlstm.get_num_threads(), "isa": fastlstm.cpu_info()["isa"],
            "rounds": args.rounds, "steps": args.steps, "skip": SKIP}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "raw": raw}, f)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"fastlstm.torch in a PyTorch loop ({started}; torch {meta['torch']}, "
                    f"{meta['torch_threads']} torch threads, {meta['fastlstm_threads']} fastlstm "
                    f"threads, {meta['isa']}; {args.rounds} rounds x {args.steps} steps; median "
                    "(min-max) per step)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
