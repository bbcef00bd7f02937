import json, os, statistics, sys, time
root = sys.argv[1]; sys.path.insert(0, root); os.chdir(root)
os.environ["HF_HUB_OFFLINE"] = "1"
from playground.manager import ModelManager
from playground.variants import VariantOptions
out = {}
mm = ModelManager(device="cpu", budget_bytes=1 << 40)
for variant, kernel in [("bf16", None), ("int8", None), ("nf4", None), ("gptq", "tinygemm"), ("gptq", None), ("awq", "tinygemm")]:
    ts = []
    for i in range(4):
        t0 = time.perf_counter()
        lm = mm.get("smollm2-135m-instruct", variant, options=VariantOptions(kernel=kernel))
        ts.append(time.perf_counter() - t0)
        del lm
        mm.unload_all()
    out[f"{variant}/{kernel}"] = round(statistics.median(ts[1:]), 3)
print(json.dumps(out))
