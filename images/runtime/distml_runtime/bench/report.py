"""Bandwidth arithmetic and the nccl-tests style table. Pure: numbers in, numbers and text out.

algbw is bytes / time in decimal GB/s. busbw = algbw x 2(n-1)/n: the traffic each rank's link
carries in a bandwidth-optimal all-reduce, so it can be compared with the link's peak whatever n is.
For the parameter server the same formula is used, which makes it comparable with the all-reduce
algorithms; its servers' links in fact carry (n-1)/K of the message each way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


def message_sizes(minbytes: int, maxbytes: int, stepfactor: int) -> list[int]:
    if minbytes < 1 or maxbytes < minbytes:
        raise ValueError(f"need 1 <= minbytes <= maxbytes, got {minbytes} and {maxbytes}")
    if stepfactor < 2:
        raise ValueError(f"stepfactor must be >= 2, got {stepfactor}")
    sizes, size = [], minbytes
    while size <= maxbytes:
        sizes.append(size)
        size *= stepfactor
    return sizes


def alg_bandwidth_gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def bus_bandwidth_gbps(algbw_gbps: float, world_size: int) -> float:
    return algbw_gbps * 2 * (world_size - 1) / world_size if world_size > 0 else 0.0


@dataclass(frozen=True)
class Result:
    algo: str
    bytes: int
    count: int
    dtype: str
    world_size: int
    time_us: float
    algbw_gbps: float
    busbw_gbps: float
    wrong: int
    redop: str = "sum"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def make_result(
    algo: str, count: int, dtype: str, elem_size: int, world_size: int, seconds: float, wrong: int
) -> Result:
    nbytes = count * elem_size
    algbw = alg_bandwidth_gbps(nbytes, seconds)
    return Result(
        algo=algo,
        bytes=nbytes,
        count=count,
        dtype=dtype,
        world_size=world_size,
        time_us=seconds * 1e6,
        algbw_gbps=algbw,
        busbw_gbps=bus_bandwidth_gbps(algbw, world_size),
        wrong=wrong,
    )


HEADER = (
    f"{'size':>12} {'count':>12} {'type':>8} {'redop':>6} {'time':>10} {'algbw':>8} "
    f"{'busbw':>8} {'#wrong':>7}"
)
UNITS = (
    f"{'(B)':>12} {'(elements)':>12} {'':>8} {'':>6} {'(us)':>10} {'(GB/s)':>8} "
    f"{'(GB/s)':>8} {'':>7}"
)


def format_row(r: Result) -> str:
    return (
        f"{r.bytes:>12} {r.count:>12} {r.dtype:>8} {r.redop:>6} {r.time_us:>10.1f} "
        f"{r.algbw_gbps:>8.3f} {r.busbw_gbps:>8.3f} {r.wrong:>7}"
    )


def format_table(results: list[Result]) -> str:
    lines = []
    for algo in dict.fromkeys(r.algo for r in results):
        rows = [r for r in results if r.algo == algo]
        lines += [f"# algo: {algo}  world size: {rows[0].world_size}", HEADER, UNITS]
        lines += [format_row(r) for r in rows]
        avg = sum(r.busbw_gbps for r in rows) / len(rows)
        lines += [
            f"# {algo}: out of bounds values: {sum(r.wrong for r in rows)} "
            f"{'OK' if not any(r.wrong for r in rows) else 'FAILED'}",
            f"# {algo}: avg bus bandwidth: {avg:.3f} GB/s",
            "",
        ]
    return "\n".join(lines)
