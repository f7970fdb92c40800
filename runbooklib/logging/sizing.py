"""How big the search engine must be for the logs it keeps: disk, heap and shards, from the daily
volume, the retention and the replicas (``logging.sizing``).

- stored per day = raw per day x ``index_ratio`` x (1 + replicas); kept = that x ``delete_after_days``;
- disk = kept / (1 - ``disk_headroom``): the engine stops allocating shards to a node past its low
  watermark (85 %) and a force merge needs room for a second copy of a shard while it runs;
- heap = half the node's memory (the rest is the file-system cache Lucene reads through), capped at
  31 GB, below the JVM's compressed-object-pointer limit (about 32 GB: above it every pointer doubles
  and a 40 GB heap holds less than a 31 GB one);
- primary shards per daily index = daily stored primary volume / ``max_shard_gb``, rounded up; the
  shards kept over the retention are checked against the usual ceiling of 20 per GB of heap per node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HEAP_CAP_GB = 31.0  # below the JVM's compressed oops limit
SHARDS_PER_HEAP_GB = 20


@dataclass(frozen=True)
class Size:
    daily_primary_gb: float
    daily_stored_gb: float
    kept_gb: float
    disk_gb: float
    disk_per_node_gb: float
    heap_gb: float
    primary_shards: int
    shards_kept: int
    shards_per_node: float
    shard_ceiling_per_node: int

    @property
    def heap_capped(self) -> bool:
        return self.heap_gb >= HEAP_CAP_GB


def size(lg) -> Size:
    s = lg.sizing
    primary = s.daily_gb * s.index_ratio
    stored = primary * (1 + lg.replicas)
    kept = stored * lg.delete_after_days
    disk = kept / (1 - s.disk_headroom)
    heap = min(s.container_memory_gb / 2, HEAP_CAP_GB)
    shards = max(1, math.ceil(primary / s.max_shard_gb))
    shards_kept = shards * (1 + lg.replicas) * lg.delete_after_days
    return Size(round(primary, 2), round(stored, 2), round(kept, 1), round(disk, 1), round(disk / s.nodes, 1), round(heap, 1), shards,
                shards_kept, round(shards_kept / s.nodes, 1), int(SHARDS_PER_HEAP_GB * heap))


def rows(lg) -> list[dict]:
    z, s = size(lg), lg.sizing
    over = z.shards_per_node > z.shard_ceiling_per_node
    return [
        {"quantity": "raw logs per day", "value": f"{s.daily_gb:g} GB", "how": "logging.sizing.daily_gb", "status": "ok"},
        {"quantity": "stored per day", "value": f"{z.daily_stored_gb:g} GB",
         "how": f"x {s.index_ratio:g} (index) x {1 + lg.replicas} (primary + {lg.replicas} replica(s))", "status": "ok"},
        {"quantity": "kept at steady state", "value": f"{z.kept_gb:g} GB", "how": f"x {lg.delete_after_days} days", "status": "ok"},
        {"quantity": "disk, whole cluster", "value": f"{z.disk_gb:g} GB", "how": f"{s.disk_headroom:.0%} kept free (watermark, merges)",
         "status": "ok"},
        {"quantity": "disk per data node", "value": f"{z.disk_per_node_gb:g} GB", "how": f"{s.nodes} data node(s)", "status": "ok"},
        {"quantity": "heap per node", "value": f"{z.heap_gb:g} GB (-Xms = -Xmx)",
         "how": f"half of {s.container_memory_gb:g} GB" + (f", capped at {HEAP_CAP_GB:g} GB (compressed pointers)" if z.heap_capped else ""),
         "status": "ok"},
        {"quantity": "primary shards per daily index", "value": str(z.primary_shards),
         "how": f"{z.daily_primary_gb:g} GB primary a day / {s.max_shard_gb:g} GB per shard", "status": "ok"},
        {"quantity": "shards per node, kept", "value": f"{z.shards_per_node:g}",
         "how": f"{z.shards_kept} in all; ceiling {z.shard_ceiling_per_node} ({SHARDS_PER_HEAP_GB} per GB of heap)",
         "status": "warn" if over else "ok"},
    ]


def warnings(lg) -> list[str]:
    """Rules of thumb the sizing breaks (said, not enforced: the engines' own limits are far higher)."""
    z = size(lg)
    if z.shards_per_node > z.shard_ceiling_per_node:
        return [f"{z.shards_per_node:g} shards per node over the retention, above the rule of thumb of {z.shard_ceiling_per_node} for a "
                f"{z.heap_gb:g} GB heap ({SHARDS_PER_HEAP_GB} per GB): fewer replicas, shorter retention, more nodes or memory, or weekly indices"]
    return []


def volume_curve(lg, days: int | None = None) -> tuple[list[int], list[float], list[float]]:
    """(day, stored GB, of which read-only GB) from the first day of shipping, past the retention: grows
    daily until ``delete_after_days``, then flat as the oldest index is deleted each day."""
    z = size(lg)
    days = days or lg.delete_after_days + max(10, lg.delete_after_days // 5)
    xs, total, warm = [], [], []
    for d in range(days + 1):
        kept = min(d, lg.delete_after_days)
        xs.append(d)
        total.append(round(kept * z.daily_stored_gb, 2))
        warm.append(round(max(0, kept - lg.warm_after_days) * z.daily_stored_gb, 2))
    return xs, total, warm


def figure(lg):
    """The stored volume over the retention period, with the disk it needs (shown under the cell by the inline backend)."""
    import matplotlib.pyplot as plt

    xs, total, warm = volume_curve(lg)
    z = size(lg)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.fill_between(xs, total, color="#9ecae1", label="hot (writable)")
    ax.fill_between(xs, warm, color="#3182bd", label=f"read-only after {lg.warm_after_days} d")
    ax.axhline(z.disk_gb, color="#d62728", linestyle="--", label=f"disk needed {z.disk_gb:g} GB")
    ax.axvline(lg.delete_after_days, color="#555", linestyle=":", label=f"deleted after {lg.delete_after_days} d")
    ax.set_xlabel("days since shipping began")
    ax.set_ylabel("stored GB (with replicas)")
    ax.set_title(f"Log indices {lg.index_prefix}-*: {lg.sizing.daily_gb:g} GB/day, {lg.replicas} replica(s)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
