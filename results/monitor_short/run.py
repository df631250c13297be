import time, torch
torch.set_num_threads(1)
import landprobe as lp
t = time.perf_counter()
lp.recipes.reproduce("mix", preset="cpu", epochs=5, amp="bf16", out="results/monitor_short", progress=False,
                     monitor={"hessian": "model", "trace_matvecs": 4, "eig_tol": 1e-3, "capacity": ["norms", "spectral_complexity", "weight_sparsity", "activation_sparsity"], "interpolate_steps": 7})
h = lp.LandscapeMonitor.load("results/monitor_short/mix/monitor")
out = h.plot()
fig = getattr(out, "figure", None) or (out[0].figure if isinstance(out, (list, tuple)) else out.flat[0].figure)
fig.savefig("results/monitor_short/monitor.png", dpi=110, bbox_inches="tight")
print("records", len(h.records), "seconds", time.perf_counter() - t)
