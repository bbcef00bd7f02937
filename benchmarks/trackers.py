"""Latency and memory trackers: context managers whose results are plain dataclasses.

``MemoryTracker`` reuses ``playground.memory.PeakMemory`` (the CUDA allocator peak on GPUs, sampled RSS on CPU)
and adds what a benchmark also wants: the process RSS peak on GPUs too, the CUDA allocator's *reserved* peak,
and NVML's view (the memory the driver charges to this process, CUDA context included; where the driver does not
list our process, e.g. in a PID namespace, the device's used memory above what it was when the tracker started).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, field

from playground.memory import GB, PeakMemory, rss_bytes


# ---- NVML through ctypes (no pynvml needed; nothing here creates a CUDA context) -------------------------------
class _MemInfo(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _ProcInfo(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class Nvml:
    """Tiny NVML reader; ``Nvml.get()`` is None when there is no NVIDIA driver."""
    _instance: "Nvml | None | bool" = False

    def __init__(self, lib):
        self.lib = lib
        count = ctypes.c_uint()
        lib.nvmlDeviceGetCount_v2(ctypes.byref(count))
        self.handles = []
        for i in range(count.value):
            h = ctypes.c_void_p()
            lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h))
            self.handles.append(h)

    @classmethod
    def get(cls) -> "Nvml | None":
        if cls._instance is False:
            try:
                lib = ctypes.CDLL("libnvidia-ml.so.1")
                cls._instance = cls(lib) if lib.nvmlInit_v2() == 0 else None
            except (OSError, AttributeError):
                cls._instance = None
        return cls._instance  # type: ignore[return-value]

    def _text(self, fn, *args) -> str:
        buf = ctypes.create_string_buffer(96)
        return buf.value.decode() if fn(*args, buf, 96) == 0 else ""

    def names(self) -> list[str]:
        return [self._text(self.lib.nvmlDeviceGetName, h) for h in self.handles]

    def driver(self) -> str:
        return self._text(self.lib.nvmlSystemGetDriverVersion)

    def device_used(self, indices: list[int]) -> int:
        total = 0
        for i in indices:
            info = _MemInfo()
            if i < len(self.handles) and self.lib.nvmlDeviceGetMemoryInfo(self.handles[i], ctypes.byref(info)) == 0:
                total += info.used
        return total

    def process_used(self, pid: int) -> int | None:
        """Bytes NVML charges to ``pid`` over all GPUs; None if the driver does not list it."""
        found, total = False, 0
        for h in self.handles:
            n = ctypes.c_uint(64)
            arr = (_ProcInfo * 64)()
            if self.lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(n), arr) != 0:
                continue
            for p in arr[: n.value]:
                if p.pid == pid:
                    found = True
                    total += p.usedGpuMemory
        return total if found else None


_BASELINE: dict[str, int] = {}


def capture_nvml_baseline() -> None:
    """Remember the GPUs' used memory now (call before this process touches CUDA): trackers that cannot see
    this process in NVML's list report the growth above it ("device delta")."""
    nvml = Nvml.get()
    if nvml is not None:
        import torch
        _BASELINE["used"] = nvml.device_used(visible_nvml_indices(torch.cuda.device_count()))


def visible_nvml_indices(n_torch: int) -> list[int]:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in vis.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts):
        return [int(p) for p in parts][:n_torch]
    return list(range(n_torch))


# ---- memory ---------------------------------------------------------------------------------------------------
NVML_EVERY = 10   # NVML sampled every 10th RSS sample (every 0.1 s by default)

@dataclass
class MemoryStats:
    peak_rss_gb: float
    peak_gpu_mem_gb: float | None = None       # torch allocator, max_memory_allocated
    peak_gpu_reserved_gb: float | None = None  # torch allocator, max_memory_reserved (what it took from the GPU)
    peak_gpu_nvml_gb: float | None = None      # NVML: process (or device delta) incl. CUDA context
    nvml_scope: str | None = None              # "process" or "device delta"
    gpu_mem_by_device: dict | None = None      # several GPUs: the allocator peak of each, {"cuda:0": GB, …}


class MemoryTracker:
    """``with MemoryTracker("cuda") as m: ...`` then ``m.result`` (a ``MemoryStats``)."""

    def __init__(self, device: str, interval: float = 0.01, nvml_baseline: int | None = None):
        self.device = device
        self.interval = interval
        self.cuda = device.startswith("cuda") or device == "auto"
        self._peak = PeakMemory(device, interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss = 0
        self._nvml_peak = 0
        self._nvml_scope: str | None = None
        self._nvml = None
        self._nvml_baseline = nvml_baseline
        self.result: MemoryStats | None = None

    def _cuda_ok(self) -> bool:
        if not self.cuda:
            return False
        import torch
        return torch.cuda.is_available()

    def _nvml_now(self) -> int:
        used = self._nvml.process_used(os.getpid())
        if used is not None:
            self._nvml_scope = "process"
            return used
        self._nvml_scope = "device delta"
        return max(0, self._nvml.device_used(self._indices) - (self._nvml_baseline or 0))

    def _sample(self) -> None:
        # NVML's process query is a driver call that can delay kernel launches: ask it 10x less often than RSS
        # (the allocator grows in large blocks, and a last reading is taken on exit).
        n = 0
        while not self._stop.wait(self.interval):
            self._rss = max(self._rss, rss_bytes())
            n += 1
            if self._nvml is not None and n % NVML_EVERY == 0:
                self._nvml_peak = max(self._nvml_peak, self._nvml_now())

    def __enter__(self) -> "MemoryTracker":
        cuda = self._cuda_ok()
        if cuda:
            import torch
            torch.cuda.init()   # reset_peak_memory_stats raises "Invalid device argument" before CUDA's lazy init
        self._peak.__enter__()
        if cuda:
            import torch
            self._nvml = Nvml.get()
            self._indices = visible_nvml_indices(torch.cuda.device_count())
            if self._nvml is not None and self._nvml_baseline is None:
                self._nvml_baseline = _BASELINE.get("used", self._nvml.device_used(self._indices))
            self._rss = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._peak.__exit__(*exc)
        if self._thread is None:
            self.result = MemoryStats(peak_rss_gb=self._peak.peak_gb)
            return
        self._stop.set()
        self._thread.join()
        self._rss = max(self._rss, rss_bytes())
        if self._nvml is not None:
            self._nvml_peak = max(self._nvml_peak, self._nvml_now())
        reserved = self._peak.peak_reserved_bytes
        self.result = MemoryStats(
            peak_rss_gb=self._rss / GB, peak_gpu_mem_gb=self._peak.peak_gb, peak_gpu_reserved_gb=reserved / GB,
            peak_gpu_nvml_gb=(self._nvml_peak / GB) if self._nvml is not None else None,
            nvml_scope=self._nvml_scope,
            gpu_mem_by_device=({d: b / GB for d, b in by_device.items()}
                               if len(by_device := self._peak.peak_by_device) > 1 else None))


# ---- latency --------------------------------------------------------------------------------------------------
@dataclass
class LatencyStats:
    batch_size: int
    ttft_s: float = 0.0                                  # start → first new token (prefill + first step)
    itl_s: list[float] = field(default_factory=list)     # gaps between later tokens
    total_s: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.itl_s) + (1 if self.ttft_s else 0)

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second after the first, summed over the batch."""
        t = sum(self.itl_s)
        return self.batch_size * len(self.itl_s) / t if t > 0 else 0.0


class LatencyTracker:
    """``with LatencyTracker(device, batch_size) as lat: ... lat.token() per step ...`` then ``lat.result``.

    On CUDA each mark synchronizes the device so a time is the time the token really exists (unless the caller
    waited for the tokens itself: ``token(synced=True)``)."""

    def __init__(self, device: str, batch_size: int = 1):
        self.cuda = device.startswith("cuda") or device == "auto"
        self.result = LatencyStats(batch_size=batch_size)
        self._t0 = self._last = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch
            if torch.cuda.is_available():
                torch.cuda.synchronize()

    def __enter__(self) -> "LatencyTracker":
        self._sync()
        self._t0 = self._last = time.perf_counter()
        return self

    def token(self, synced: bool = False) -> None:
        """Mark one step's tokens as made; ``synced``: the caller has already waited for them (an event), so
        the device is not synchronized (a step queued after them may still be running)."""
        if not synced:
            self._sync()
        now = time.perf_counter()
        if self.result.ttft_s == 0.0:
            self.result.ttft_s = now - self._t0
        else:
            self.result.itl_s.append(now - self._last)
        self._last = now

    def __exit__(self, *exc) -> None:
        self._sync()
        self.result.total_s = time.perf_counter() - self._t0
