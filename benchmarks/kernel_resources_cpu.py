"""Registers, spills, shared memory and instruction mix of every Triton kernel config, compiled for an H100
(sm_90) on a CPU-only machine: the cases of tests/ops/test_compile_sm90.py (every config the tuners may pick),
each through Triton's front end and the triton wheel's ptxas, then read back with its cuobjdump and nvdisasm.

What it shows without a GPU: which configs spill to local memory (STACK > 0), how many warps fit an SM by
registers (65,536 registers an SM), and the instruction mix of the hot loops (exp2 = MUFU.EX2; SHFL and BAR are
the cross-thread traffic), and "hot loop": the instructions of one pass of the kernel's longest loop on its
common path (every forward branch inside it taken, which skips a rarely run block such as a checkpoint store;
per row and channel it is this / (rows a pass x channels a thread)), and the spill loads and stores (LDL/STL)
among them. What it cannot show: time. --aligned compiles as a launch on contiguous tensors is specialized
(pointers and sizes multiples of 16), which can change the code. Writes a markdown table with --out.

    python benchmarks/kernel_resources_cpu.py [--match scan] [--aligned] [--ssd-grid | --ssd-bwd-grid | --gemv-grid
                                              | --ssd-plan] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import triton  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402

from tests.ops.test_compile_sm90 import CASES, _kernel, compile_for_h100  # noqa: E402

REGS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
SMEM_PER_SM = 233472  # bytes of shared memory an H100 SM holds (a block may use 227 KiB of it, plus 1 KiB reserved)


def resources(cubin: bytes) -> dict:
    tools = os.path.dirname(get_ptxas(90).path)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([f"{tools}/cuobjdump", "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([f"{tools}/nvdisasm", "-c", f.name], capture_output=True, text=True, check=True).stdout
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M)
    hot = hot_loop(sass)
    return dict(regs=int(re.search(r"REG:(\d+)", usage).group(1)), stack=int(re.search(r"STACK:(\d+)", usage).group(1)),
                instructions=len(ops), mufu=ops.count("MUFU"), shfl=ops.count("SHFL"), bar=ops.count("BAR"),
                ldl_stl=ops.count("LDL") + ops.count("STL"), hot_loop=len(hot),
                hot_ldl_stl=hot.count("LDL") + hot.count("STL"))


def hot_loop(sass: str) -> list[str]:
    """The opcodes of one pass of the longest loop (a backward branch's span) on its common path: each forward
    branch inside it is taken. Empty without a loop (0 in the table)."""
    items, labels = [], {}
    for line in sass.splitlines():
        label = re.match(r"^(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(items)
            continue
        ins = re.match(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)\S*\s*(.*)$", line)
        if ins:
            target = re.search(r"\.L_x_\d+", ins.group(2)) if ins.group(1) == "BRA" else None
            items.append((ins.group(1), target.group(0) if target else None))
    # a backward branch spans a loop; the branch to itself after EXIT that ends every kernel is not one
    loops = [(labels[t], i) for i, (op, t) in enumerate(items) if t is not None and labels[t] < i]
    if not loops:
        return []
    start, stop = max(loops, key=lambda span: span[1] - span[0])
    path, i = [], start
    while i <= stop:
        op, target = items[i]
        path.append(op)
        i = labels[target] if target is not None and i != stop and labels[target] > i else i + 1
    return path


def ssd_grid() -> list:
    """(module, kernel, constexprs, warps, stages, label) for the SSD kernels over a grid wider than the tables:
    the forward's segment pre-pass and main walk, the backward's two walks."""
    from ssmkit.ops.ssd.triton.plan import FWD_SUB_N, block_n

    cases = []
    for dstate in (64, 128, 256):
        kernels = (("fwd", "_segment_state_kernel", dict(SPLIT=True)),
                   ("fwd", "_ssd_fwd_kernel", dict(D_PER_P=False, PTX=True, SUB_N=min(FWD_SUB_N, block_n(dstate)))),
                   ("bwd", "_bwd_dc_kernel", dict(D_PER_P=False, SPLIT=True, PTX=True, ATOMIC=True)),
                   ("bwd", "_bwd_dx_kernel", dict(D_PER_P=True, SPLIT=True, PTX=True, ATOMIC=True)))
        base = dict(SOFTPLUS=True, Q=64, BLOCK_N=block_n(dstate), PREC="tf32", cu_ptr=None)
        for module, name, extra in kernels:
            for bp in (16, 32, 64):
                for warps in (4, 8):
                    for stages in (2, 3):
                        cases.append((f"ssmkit.ops.ssd.triton.{module}", name, dict(base, BLOCK_P=bp, **extra), warps,
                                      stages, f"{name}-n{dstate}-p{bp}-w{warps}-s{stages}"))
    return cases


def ssd_bwd_grid() -> list:
    """The SSD backward's kernels as benchmarks/ssd_gpu.py launches them (no gate, no initial state, no final-state
    gradient; D one per head, dt_bias): headdim 64, chunk 64, dstate 64 and 128, BLOCK_P 16/32/64, 4/8 warps,
    2 stages."""
    from ssmkit.ops.ssd.triton.plan import block_n

    ungated = dict(z_ptr=None, init_ptr=None, dfinal_ptr=None, cfinal_ptr=None, dz_ptr=None, dinit_ptr=None)
    kernels = (("_segment_adjoint_kernel", dict(SPLIT=True)),
               ("_bwd_dc_kernel", dict(D_PER_P=False, SPLIT=True, PTX=True, ATOMIC=True)),
               ("_bwd_dx_kernel", dict(D_PER_P=False, SPLIT=True, PTX=True, ATOMIC=True)))
    cases = []
    for dstate in (64, 128):
        base = dict(SOFTPLUS=True, Q=64, BLOCK_N=block_n(dstate), PREC="tf32", cu_ptr=None)
        for name, extra in kernels:
            for bp in (16, 32, 64):
                for warps in (4, 8):
                    consts = dict(base, BLOCK_P=bp, **extra, **ungated)
                    cases.append(("ssmkit.ops.ssd.triton.bwd", name, consts, warps, 2,
                                  f"{name}-ungated-n{dstate}-p{bp}-w{warps}-s2"))
    return cases


def gemv_grid() -> list:
    """The one-row norm_linear / linear GEMV at the decode projections of benchmarks/norm_linear_gpu.py plus two
    wider-row ones (a 2.8B-class Mamba-2 out_proj and a 7B-class gate projection): pick_config's shape (label
    marked "pick") and its neighbours (2 or 4 output features a block, 4 or 8 warps, persistent grid or not)."""
    from benchmarks.norm_linear_gpu import SHAPES
    from ssmkit.ops.norm.triton.linear import pick_config

    forms = {"gated": dict(NORM_ROUND=0, NG=1, res_ptr=None, res_out_ptr=None),
             "residual": dict(NORM_ROUND=1, NG=1, z_ptr=None),
             "plain": dict(NORM_ROUND=0, NG=1, res_ptr=None, res_out_ptr=None, z_ptr=None, nw_ptr=None)}
    cases = []
    for name, k, n, form in SHAPES + [("2.8b-class out_proj", 5120, 2560, "gated"), ("7b-class gate", 4096, 11008,
                                                                                       "plain")]:
        pick = pick_config(1, k, n, form != "plain")
        shapes = {(pick.block_n, pick.num_warps, True), (2, 4, True), (4, 4, True), (2, 8, True), (4, 8, True),
                  (pick.block_n, pick.num_warps, False)}
        for bn, warps, persistent in sorted(shapes):
            consts = dict(NORMED_ROUND=1, BLOCK_M=1, BLOCK_N=bn, BLOCK_K=triton.next_power_of_2(k),
                          PERSISTENT=persistent, PDL=True, **forms[form])
            mark = "-pick" if (bn, warps, persistent) == (pick.block_n, pick.num_warps, True) else ""
            cases.append(("ssmkit.ops.norm.triton.linear", "_norm_gemv_kernel", consts, warps, 1,
                          f"{name.replace(' ', '-')}-k{k}-n{n}-bn{bn}{'-persistent' if persistent else ''}{mark}"))
    return cases


def ssd_plan_table(headdim: int = 64, dstate: int = 64, nheads: int = 32, tokens: int = 65536, sms: int = 132,
                   aligned: bool = True) -> str:
    """The forward's segment plans at the benchmark shapes (tokens split into batch x L, H100: 132 SMs), for several
    programs-an-SM targets of plan.segment_count (plan.PROGRAMS_PER_SM, marked *, is make_plan's). Per plan: the
    segments, the programs, the chunk walks of the pre-pass beside the main walk's, waves (programs / resident
    programs, residency from the registers and shared memory of the compiled default config), chunks in series
    (waves x seg_chunks, pre-pass + main: a latency proxy), warp-instructions (chunk walks x hot loop x warps: a
    throughput proxy) and the segment-state traffic (written by the pre-pass, read back by the main walk's
    combine). No timing: which proxy rules must be measured."""
    from ssmkit.ops.ssd.triton.plan import PROGRAMS_PER_SM, block_n, configs, segment_count, triton_cdiv

    cfg = configs(headdim, dstate, "fwd")[0]
    base = dict(SOFTPLUS=True, Q=64, BLOCK_N=block_n(dstate), PREC="tf32", cu_ptr=None, BLOCK_P=cfg["BLOCK_P"])
    kern = {}
    for name, extra in (("_segment_state_kernel", dict(SPLIT=True)),
                        ("_ssd_fwd_kernel", dict(D_PER_P=False, PTX=True, SUB_N=cfg["SUB_N"]))):
        compiled = compile_for_h100(_kernel("ssmkit.ops.ssd.triton.fwd", name), dict(base, **extra), cfg["num_warps"],
                                    cfg["num_stages"], aligned=aligned)
        r = resources(compiled.asm["cubin"])
        by_regs = REGS_PER_SM // (max(r["regs"], 1) * 32 * cfg["num_warps"])
        by_smem = SMEM_PER_SM // (compiled.metadata.shared + 1024)
        kern[name] = (r["hot_loop"], max(1, min(by_regs, by_smem, MAX_WARPS_PER_SM // cfg["num_warps"])))
    (pre_hot, pre_res), (main_hot, main_res) = kern["_segment_state_kernel"], kern["_ssd_fwd_kernel"]
    npb = triton_cdiv(headdim, cfg["BLOCK_P"])
    state_mb = headdim * dstate * 4 / 1e6
    lines = [f"- shapes: {tokens} tokens as batch x L, {nheads} heads, headdim {headdim}, dstate {dstate}, chunk 64, "
             f"{sms} SMs; config {cfg} (plan.configs' first); resident programs an SM: pre-pass {pre_res}, main "
             f"{main_res}; hot loop: pre-pass {pre_hot}, main {main_hot} instructions a thread",
             "", "| L | batch | programs an SM target | segments x chunks | programs a launch | pre-pass programs "
             "walking | pre-pass chunk walks / main's | waves pre + main | chunks in series pre + main | "
             "warp-instructions pre + main (M) | segment states written + read (MB) |", "|---" * 11 + "|"]
    for L in (512, 1024, 2048, 4096, 8192, 16384):
        batch, nchunks = tokens // L, triton_cdiv(L, 64)
        plans = {}
        for target in sorted({2, 4, PROGRAMS_PER_SM, 8, 12, 16}):
            nseg = segment_count(nchunks, batch, nheads, sms, target)
            seg_chunks = triton_cdiv(nchunks, nseg)
            key = (triton_cdiv(nchunks, seg_chunks), seg_chunks)
            plans.setdefault(key, []).append(f"{target}*" if target == PROGRAMS_PER_SM else str(target))
        for (nseg, seg_chunks), targets in plans.items():
            streams = batch * nheads * npb
            walking = streams * (nseg - 1)
            pre_walks, main_walks = walking * seg_chunks, streams * nchunks
            pre_waves = triton_cdiv(walking, sms * pre_res) if walking else 0
            main_waves = triton_cdiv(streams * nseg, sms * main_res)
            winstr = (pre_walks * pre_hot + main_walks * main_hot) * cfg["num_warps"] / 1e6
            pre_winstr = pre_walks * pre_hot * cfg["num_warps"] / 1e6
            written = batch * nheads * (nseg - 1) * state_mb
            read = batch * nheads * nseg * (nseg - 1) // 2 * state_mb
            lines.append(f"| {L} | {batch} | {', '.join(targets)} | {nseg} x {seg_chunks} | {streams * nseg} | "
                         f"{walking} | {pre_walks / main_walks:.2f} | {pre_waves} + {main_waves} | "
                         f"{pre_waves * seg_chunks} + {main_waves * seg_chunks} | {pre_winstr:.0f} + "
                         f"{winstr - pre_winstr:.0f} | {written:.0f} + {read:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--match", default="", help="only cases whose label contains this text")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--aligned", action="store_true",
                   help="compile as a launch on contiguous tensors is specialized (pointers and sizes multiples of 16)")
    p.add_argument("--ssd-grid", action="store_true",
                   help="instead of the test's cases: the SSD forward (segment pre-pass, main walk) and backward "
                        "kernels at headdim 64 over dstate 64/128/256, BLOCK_P 16/32/64, 4/8 warps, 2/3 stages "
                        "(candidates for the tables)")
    p.add_argument("--ssd-bwd-grid", action="store_true",
                   help="instead of the test's cases: the SSD backward's kernels as benchmarks/ssd_gpu.py launches "
                        "them (no gate), dstate 64/128, BLOCK_P 16/32/64, 4/8 warps")
    p.add_argument("--ssd-plan", action="store_true",
                   help="instead of compiling a grid: the SSD forward's segment plans at the benchmark shapes (65,536 "
                        "tokens, L 512..16K, 132 SMs) for several programs-an-SM targets, with work and wave counts")
    p.add_argument("--gemv-grid", action="store_true",
                   help="instead of the test's cases: the one-row GEMV (norm_linear / ops.linear) at the decode "
                        "projections, pick_config's shape and its neighbours")
    a = p.parse_args()
    if a.ssd_plan:
        table = ssd_plan_table(aligned=a.aligned)
        if a.out:
            Path(a.out).write_text(table + "\n")
        print(table)
        return
    rows = []
    grid = ssd_grid() if a.ssd_grid else ssd_bwd_grid() if a.ssd_bwd_grid else gemv_grid() if a.gemv_grid else CASES
    for module, name, consts, warps, stages, label in grid:
        if a.match not in label:
            continue
        compiled = compile_for_h100(_kernel(module, name), consts, warps, stages, aligned=a.aligned)
        r = resources(compiled.asm["cubin"])
        regs = max(r["regs"], 1)
        fit = min(MAX_WARPS_PER_SM, REGS_PER_SM // (regs * 32) // warps * warps)
        rows.append((label, warps, stages, r["regs"], r["stack"], compiled.metadata.shared, fit, r["instructions"],
                     r["mufu"], r["shfl"], r["bar"], r["ldl_stl"], r["hot_loop"], r["hot_ldl_stl"]))
        print(" ".join(str(v) for v in rows[-1]), flush=True)
    head = ("| kernel config | warps | stages | registers | spill stack B | shared B | warps an SM (by registers) "
            "| instructions | MUFU | SHFL | BAR | LDL/STL | hot loop | hot-loop LDL/STL |\n" + "|---" * 14 + "|")
    table = head + "\n" + "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in rows)
    if a.out:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        cases = ("the SSD grid (--ssd-grid)" if a.ssd_grid else "the ungated SSD backward grid (--ssd-bwd-grid)"
                 if a.ssd_bwd_grid else "the one-row GEMV grid (--gemv-grid)" if a.gemv_grid
                 else "every config of tests/ops/test_compile_sm90.py")
        cmd = "python benchmarks/kernel_resources_cpu.py" + (f" --match {a.match}" if a.match else "") + \
            (" --aligned" if a.aligned else "") + \
            (" --ssd-grid" if a.ssd_grid else "") + (" --ssd-bwd-grid" if a.ssd_bwd_grid else "") + \
            (" --gemv-grid" if a.gemv_grid else "")
        Path(a.out).write_text(
            f"# Triton kernels compiled for sm_90 on a CPU machine: registers, spills, instruction mix\n\n"
            f"- date: {date}; triton {triton.__version__} (its ptxas, cuobjdump, nvdisasm); no GPU\n"
            f"- command: `{cmd} --out {a.out}`\n"
            f"- cases: {cases} (bf16 activations, float32 states)\n\n"
            f"{table}\n")
    print(table)


if __name__ == "__main__":
    main()
