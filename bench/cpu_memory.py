"""Peak CPU memory of a callable, from PyTorch's allocator events (shared by the CPU benchmarks)."""

from __future__ import annotations


def peak_bytes(fn) -> int:
    """Peak of (allocated - freed) by PyTorch's CPU allocator while `fn` runs."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak
