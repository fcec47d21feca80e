"""Paired in-process A/B timing of two kernel variants (bench/NOTES.md, entry 14).

On this shared VM, timings of separate processes drift by up to 2x, too much to see a 5%
change. Instead, build the candidate with the change behind a temporary switch read once
per call in the C++ code, e.g.

    inline int g_exp = 0;                     // at namespace scope, experiment builds only
    { const char* e = getenv("FASTLSTM_EXP"); g_exp = e && e[0] == '1'; }   // in forward()
    if (g_exp) { ...new code... } else { ...old code... }

install it somewhere (`pip install --no-deps --no-build-isolation --target /tmp/E .`) and
run `PYTHONPATH=/tmp/E python bench/ab_inprocess.py [threads]`. The two variants alternate
call by call (ABBA order) and the ratio of each pair's times is reported (median and
quartiles; > 1: the switch made it faster). Never commit the switch.
"""
import numpy as np, fastlstm, time, os, sys
cfgs=[(100,1,256,256),(100,16,256,256),(100,64,512,512),(50,128,1024,1024),(100,64,256,256)]
if len(sys.argv) > 1:                     # (else fastlstm's default: every core)
    fastlstm.set_num_threads(int(sys.argv[1]))
for T,B,I,H in cfgs:
    rng=np.random.default_rng(0); s=1/np.sqrt(I+H)
    x=rng.standard_normal((T,B,I),dtype=np.float32); k=(rng.standard_normal((I,4*H))*s).astype(np.float32)
    r=(rng.standard_normal((H,4*H))*s).astype(np.float32); b=np.zeros(4*H,np.float32)
    res={'0':[], '1':[]}
    n = 30 if H<1024 else 8
    for i in range(n):
        for flag in ('0','1') if i%2==0 else ('1','0'):
            os.environ['FASTLSTM_EXP']=flag
            t0=time.perf_counter(); fastlstm.ops.lstm_forward(x,k,r,b,training=False); res[flag].append(time.perf_counter()-t0)
    a=np.array(res['0']); bb=np.array(res['1'])
    ratio=a/bb
    print(f"{(T,B,I,H)} off {np.median(a)*1e3:7.2f} on {np.median(bb)*1e3:7.2f} ms  paired off/on median {np.median(ratio):.3f} (q25 {np.quantile(ratio,.25):.3f} q75 {np.quantile(ratio,.75):.3f})")
