"""Benchmark files as users download them, each with its official scorer beside ours.

`BENCHMARKS[name]` is a `Benchmark` (see `base.py`); `run_benchmark` answers its rows with any
adapter and scores them both ways; `write_report` writes `{name}.json` and `{name}.md`.
"""

from .base import Benchmark, BenchmarkResult, Loaded, load_checked, run_benchmark, write_report
from .longvideo_reason import BENCHMARK as LONGVIDEO_REASON
from .longvideobench import BENCHMARK as LONGVIDEOBENCH
from .mlvu import BENCHMARK as MLVU
from .videomme import BENCHMARK as VIDEOMME
from .vnbench import BENCHMARK as VNBENCH

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (VIDEOMME, MLVU, LONGVIDEOBENCH, VNBENCH, LONGVIDEO_REASON)}

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkResult", "Loaded", "load_checked", "run_benchmark", "write_report"]
