# Forward-step throughput in inference: I = 16 so the input projection is negligible;
# prints GFLOP/s of the recurrent part (8*T*B*H^2) for H = 64..1024.
# Usage: python bench/step_rate.py [threads=1] [batch=64]   (see bench/NOTES.md, entry 13)
import numpy as np, fastlstm, time, sys
fastlstm.set_num_threads(int(sys.argv[1]) if len(sys.argv)>1 else 1)
B=int(sys.argv[2]) if len(sys.argv)>2 else 64
for H in (64,128,256,512,1024):
    T=max(10, int(2e9/(8*B*H*H))); I=16
    rng=np.random.default_rng(0); s=1/np.sqrt(I+H)
    x=rng.standard_normal((T,B,I),dtype=np.float32); k=(rng.standard_normal((I,4*H))*s).astype(np.float32)
    r=(rng.standard_normal((H,4*H))*s).astype(np.float32)
    ts=[]
    for i in range(7):
        t0=time.perf_counter(); fastlstm.ops.lstm_forward(x,k,r,training=False); ts.append(time.perf_counter()-t0)
    t=np.median(ts); print(f"H={H:5d} T={T:4d} step GFLOP/s {8*T*B*H*H/t/1e9:6.1f}  (min-time {8*T*B*H*H/min(ts)/1e9:6.1f})")
