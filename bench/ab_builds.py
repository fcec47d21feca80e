"""One side of a two-build A/B (bench/ab_builds.sh): times fastlstm.ops at one size and prints
the medians as JSON. Inference (training=False), then a training forward and its backward, n
calls after 2 warm-up ones; float32, fastlstm's default threads.

    python bench/ab_builds.py T,B,I,H [n]
"""
import sys, time, json, numpy as np, fastlstm
T,B,I,H = map(int, sys.argv[1].split(','))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
rng = np.random.default_rng(0); s = 1/np.sqrt(I+H)
x = rng.standard_normal((T,B,I), dtype=np.float32)
k = (rng.standard_normal((I,4*H))*s).astype(np.float32); r = (rng.standard_normal((H,4*H))*s).astype(np.float32)
b = (rng.standard_normal(4*H)*0.1).astype(np.float32); dy = rng.standard_normal((T,B,H), dtype=np.float32)
inf, fw, bw = [], [], []
for i in range(n + 2):
    t0 = time.perf_counter(); fastlstm.ops.lstm_forward(x,k,r,b,training=False); t1 = time.perf_counter()
    y,hn,cn,sv = fastlstm.ops.lstm_forward(x,k,r,b); t2 = time.perf_counter()
    fastlstm.ops.lstm_backward(sv, dy); t3 = time.perf_counter()
    if i >= 2: inf.append(t1-t0); fw.append(t2-t1); bw.append(t3-t2)
print(json.dumps({"inf": float(np.median(inf)*1e3), "fwd": float(np.median(fw)*1e3), "bwd": float(np.median(bw)*1e3), "isa": fastlstm.cpu_info()["isa"]}))
