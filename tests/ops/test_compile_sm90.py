"""Every Triton kernel of ssmkit compiles for an H100 (sm_90) on this CPU-only machine: Triton's front end, its
GPU passes and NVIDIA's ptxas (shipped in the triton wheel), for each block config the tuners may pick.

The interpreter tests check what the kernels compute; this checks what the interpreter cannot: that the code
lowers to a cubin (tl.dot shapes, layouts, register tiles), and that each kernel's shared memory fits the H100's
227 KiB per block, past which a launch fails with "out of resources". Kernels are compiled as a bf16 model
launches them: activations bf16, states, parameters read in float32 and gradient partials float32.
"""

from __future__ import annotations

import importlib
import subprocess

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def _ptxas_problem() -> str | None:
    """Why the triton wheel's ptxas cannot run on this machine, or None (it can)."""
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        subprocess.run([get_ptxas(90).path, "--version"], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


_PROBLEM = _ptxas_problem()
if _PROBLEM is not None:  # a missing tool, not a kernel that fails to compile: reported as skipped, not passed
    pytest.skip(f"ptxas from the triton wheel cannot run here ({_PROBLEM})", allow_module_level=True)

H100 = GPUTarget("cuda", 90, 32)
H100_MAX_SHARED = 227 * 1024  # bytes of shared memory one block may use (opt-in maximum)

# Pointers a bf16 model passes in float32; every other pointer is bf16, `cu_ptr` (packed sequences) int32.
FLOAT32_POINTERS = {
    "A_ptr", "D_ptr", "bias_ptr", "init_ptr", "segst_ptr", "seglog_ptr", "final_ptr", "segadj_ptr", "dfinal_ptr",
    "parts_ptr", "cfinal_ptr", "dD_ptr", "dinit_ptr", "dA_ptr", "dbias_ptr", "dC_ptr", "dB_ptr", "ckpt_ptr",
    "scratch_ptr", "dh0_ptr", "rstd_ptr", "dw_ptr", "db_ptr", "state_ptr", "ddt_ptr", "part_max_ptr",
    "part_sum_ptr", "part_acc_ptr", "res_ptr", "res_out_ptr", "segdt_ptr",
}
INT_POINTERS = {"cu_ptr", "seq_ptr", "idx_ptr"}
# decode positions, int64 as the KV cache keeps them; packed argmax keys and the greedy feedback's buffers
INT64_POINTERS = {"pos_ptr", "argmax_ptr", "keys_ptr", "tokens_ptr", "history_ptr", "index_ptr"}
BYTE_POINTERS = {"key_mask_ptr"}  # bool masks, passed as their uint8 view
FLOAT_SCALARS = {"dt_lo", "dt_hi", "eps", "qk_scale"}
# Kernels whose state tensor is the model's dtype (the conv state), not float32.
BF16_OVERRIDES = {("_conv_step_kernel", "state_ptr"), ("_conv_final_state_kernel", "final_ptr"),
                  ("_conv_fwd_kernel", "init_ptr"), ("_conv_bwd_kernel", "init_ptr"),
                  ("_conv_dinit_kernel", "init_ptr"), ("_conv_dinit_kernel", "dinit_ptr"),
                  ("_conv_final_state_kernel", "init_ptr"), ("_conv_fwd_kernel", "bias_ptr"),
                  ("_conv_bwd_kernel", "bias_ptr"), ("_conv_dinit_kernel", "bias_ptr"),
                  ("_conv_step_kernel", "bias_ptr"), ("_scan_fwd_kernel", "ddt_ptr"), ("_scan_bwd_kernel", "ddt_ptr")}


def signature(kernel, constexprs: dict) -> tuple[dict, dict]:
    sig, const = {}, {}
    for p in kernel.params:
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
            const[name] = constexprs[name]
        elif name in constexprs:  # a pointer passed as None: compiled away, as at a launch without it
            sig[name] = "constexpr"
            const[name] = constexprs[name]
        elif name.endswith("_ptr"):
            if name in INT_POINTERS:
                sig[name] = "*i32"
            elif name in INT64_POINTERS:
                sig[name] = "*i64"
            elif name in BYTE_POINTERS:
                sig[name] = "*u8"
            elif name in FLOAT32_POINTERS and (kernel.fn.__name__, name) not in BF16_OVERRIDES:
                sig[name] = "*fp32"
            else:
                sig[name] = "*bf16"
        else:
            sig[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return sig, const


def compile_for_h100(kernel, constexprs: dict, num_warps: int, num_stages: int = 2, aligned: bool = False):
    """constexprs may carry "maxnreg", a config's register cap: a compile option, not a kernel argument.
    aligned: every pointer and every integer argument the launcher specializes (not in do_not_specialize) is
    taken as a multiple of 16, as a launch on contiguous tensors with such strides and sizes sees them (Triton
    specializes on that); it can change the code (vectorized loads and stores, and the layouts they pick)."""
    constexprs = dict(constexprs)
    options = dict(num_warps=num_warps, num_stages=num_stages)
    if "maxnreg" in constexprs:
        options["maxnreg"] = constexprs.pop("maxnreg")
    sig, const = signature(kernel, constexprs)
    attrs = {}
    if aligned:
        skip = set(kernel.do_not_specialize or ())
        attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(kernel.params)
                 if sig[p.name] not in ("constexpr", "fp32") and i not in skip and p.name not in skip}
    return triton.compile(ASTSource(kernel, sig, const, attrs), target=H100, options=options)


def _kernel(module: str, name: str):
    kernel = getattr(importlib.import_module(module), name)
    if type(kernel).__name__ != "JITFunction":
        pytest.fail(f"{name} is a {type(kernel).__name__}: unset TRITON_INTERPRET to compile it")
    return kernel


def _cases() -> list:
    from ssmkit.ops.selective_scan.triton import plan as scan_plan
    from ssmkit.ops.ssd.triton import plan as ssd_plan

    cases = []
    ssd = "ssmkit.ops.ssd.triton."
    # SSD at headdim 64: every config of each kernel kind at dstate 128 (the Mamba-2 130M..2.7B shape), and the
    # forward's at dstate 256 (the largest state tile).
    for dstate, kinds in ((128, ("fwd", "bwd")), (256, ("fwd",))):
        base = dict(SOFTPLUS=True, Q=64, BLOCK_N=ssd_plan.block_n(dstate), PREC="tf32", cu_ptr=None)
        for kind in kinds:
            kernels = ((("fwd", "_segment_state_kernel", dict(SPLIT=True)),
                        ("fwd", "_ssd_fwd_kernel", dict(D_PER_P=False, PTX=True))) if kind == "fwd" else
                       (("bwd", "_segment_adjoint_kernel", dict(SPLIT=True)),
                        ("bwd", "_bwd_dc_kernel", dict(D_PER_P=False, SPLIT=True, PTX=True, ATOMIC=True)),
                        ("bwd", "_bwd_dx_kernel", dict(D_PER_P=True, SPLIT=True, PTX=True, ATOMIC=True))))
            for cfg in ssd_plan.configs(64, dstate, kind):
                for module, name, extra in kernels:
                    consts = dict(base, BLOCK_P=cfg["BLOCK_P"], **extra)
                    if name == "_ssd_fwd_kernel":
                        consts["SUB_N"] = cfg["SUB_N"]
                    cases.append((ssd + module, name, consts, cfg["num_warps"], cfg["num_stages"],
                                  f"{name}-n{dstate}-p{cfg['BLOCK_P']}-w{cfg['num_warps']}-s{cfg['num_stages']}"))
    # The common launches leave pointers out (None): one segment (no segment states), no initial state, no D, z
    # or dfinal; each None compiles its branch away, a different kernel.
    bn = ssd_plan.block_n(128)
    lean = dict(base, BLOCK_N=bn, BLOCK_P=64, segst_ptr=None, seglog_ptr=None, init_ptr=None, D_ptr=None,
                z_ptr=None, bias_ptr=None)
    cases.append((ssd + "fwd", "_ssd_fwd_kernel", dict(lean, D_PER_P=False, PTX=True, SUB_N=64), 4, 2,
                  "_ssd_fwd_kernel-lean"))
    cases.append((ssd + "bwd", "_bwd_dc_kernel", dict(lean, D_PER_P=False, SPLIT=True, PTX=True, ATOMIC=True,
                                                      dfinal_ptr=None, cfinal_ptr=None), 4, 2, "_bwd_dc_kernel-lean"))
    cases.append((ssd + "bwd", "_bwd_dx_kernel", dict(lean, D_PER_P=False, SPLIT=True, PTX=True, ATOMIC=True,
                                                      dfinal_ptr=None, segadj_ptr=None, dD_ptr=None, dinit_ptr=None),
                  4, 2, "_bwd_dx_kernel-lean"))
    cases.append((ssd + "bwd_dt", "_bwd_dt_kernel", dict(SOFTPLUS=True, Q=64, NCH=16, cu_ptr=None), 4, 2,
                  "_bwd_dt_kernel"))
    for a_log in (False, True):
        cases.append((ssd + "step", "_ssd_step_kernel", dict(SOFTPLUS=True, A_IS_LOG=a_log, D_PER_P=False,
                                                             BLOCK_P=64, BLOCK_N=bn, idx_ptr=None, PDL=True,
                                                             EARLY_STATE=a_log),
                      4, 2,
                      f"_ssd_step_kernel-alog{int(a_log)}"))
    # Selective scan at dim 2048, dstate 16: every forward config (LOOP ones included) and tile backward config.
    scan = "ssmkit.ops.selective_scan.triton."
    sbn = scan_plan.block_n(16)
    for kind, name in (("fwd", "_scan_fwd_kernel"), ("bwd", "_scan_bwd_kernel")):
        for cfg in scan_plan.configs(kind, 16, 2048, loop=kind == "fwd"):  # the row backward: its own cases
            consts = dict(SOFTPLUS=True, BLOCK_T=cfg["BLOCK_T"], BLOCK_D=cfg["BLOCK_D"], BLOCK_N=sbn)
            if kind == "fwd":
                consts.update(LOOP=cfg.get("LOOP", False), PREFETCH=cfg.get("PREFETCH", 0), dstate=16, PTX=True)
            if cfg.get("maxnreg"):
                consts["maxnreg"] = cfg["maxnreg"]
            loop = (("-loop" if cfg.get("LOOP") else "") + (f"-pf{cfg['PREFETCH']}" if cfg.get("PREFETCH") else "")
                    + (f"-r{cfg['maxnreg']}" if cfg.get("maxnreg") else ""))
            label = f"{name}-t{cfg['BLOCK_T']}-d{cfg['BLOCK_D']}-w{cfg['num_warps']}{loop}"
            cases.append((scan + kind, name, consts, cfg["num_warps"], 2, label))
    for cfg in scan_plan.configs("fwd", 16, 2048, loop=True):  # the segment pass of a short batch
        if cfg.get("LOOP"):
            consts = dict(SOFTPLUS=True, BLOCK_T=cfg["BLOCK_T"], BLOCK_D=cfg["BLOCK_D"], BLOCK_N=sbn, dstate=16,
                          PTX=True, PREFETCH=cfg.get("PREFETCH", 0))
            if cfg.get("maxnreg"):  # launched with its config's launch options, the cap included
                consts["maxnreg"] = cfg["maxnreg"]
            label = (f"_segment_state_kernel-t{cfg['BLOCK_T']}-d{cfg['BLOCK_D']}"
                     + (f"-pf{cfg['PREFETCH']}" if cfg.get("PREFETCH") else "")
                     + (f"-r{cfg['maxnreg']}" if cfg.get("maxnreg") else ""))
            cases.append((scan + "fwd", "_segment_state_kernel", consts, cfg["num_warps"], 2, label))
    for cfg in scan_plan.configs("bwd", 16, 2048, loop=True):  # the row-walking backward
        if cfg.get("LOOP"):
            consts = dict(SOFTPLUS=True, BLOCK_T=cfg["BLOCK_T"], BLOCK_D=cfg["BLOCK_D"], BLOCK_N=sbn, dstate=16,
                          PTX=True)
            cases.append((scan + "bwd_rows", "_scan_bwd_rows_kernel", consts, cfg["num_warps"], 2,
                          f"_scan_bwd_rows_kernel-t{cfg['BLOCK_T']}-d{cfg['BLOCK_D']}-w{cfg['num_warps']}"))
    lean = dict(SOFTPLUS=False, BLOCK_T=16, BLOCK_D=32, BLOCK_N=sbn, LOOP=False, init_ptr=None, D_ptr=None,
                z_ptr=None, bias_ptr=None, ckpt_ptr=None, segst_ptr=None, segdt_ptr=None, dstate=16,
                PTX=True, PREFETCH=0)  # inference: one segment, no checkpoints
    cases.append((scan + "fwd", "_scan_fwd_kernel", lean, 4, 2, "_scan_fwd_kernel-lean"))
    cases.append((scan + "fwd", "_scan_fwd_kernel", dict(lean, LOOP=True, BLOCK_T=16, BLOCK_D=32), 1, 2,
                  "_scan_fwd_kernel-lean-loop"))
    cases.append((scan + "fwd", "_scan_fwd_kernel", dict(lean, LOOP=True, BLOCK_T=4, BLOCK_D=32, PREFETCH=2), 1, 2,
                  "_scan_fwd_kernel-lean-loop-pf2"))  # tile loads ahead without z
    cases.append((scan + "step", "_scan_step_kernel", dict(SOFTPLUS=True, A_IS_LOG=False, BLOCK_D=64, BLOCK_N=sbn,
                                                           BLOCK_R=16, w_ptr=None, PDL=True, EARLY_STATE=False),
                  4, 2,
                  "_scan_step_kernel"))
    cases.append((scan + "step", "_scan_step_kernel", dict(SOFTPLUS=True, A_IS_LOG=True, BLOCK_D=64, BLOCK_N=sbn,
                                                           BLOCK_R=128, PDL=True, EARLY_STATE=True), 4, 2,
                  "_scan_step_kernel-fused-dt-proj"))
    # Causal conv1d (width 4, SiLU) and the gated RMSNorm, at the block sizes their wrappers launch.
    conv = "ssmkit.ops.conv1d.triton."
    for name, consts in (("_conv_fwd_kernel", dict(WIDTH=4, SILU=True, BLOCK_L=64, BLOCK_D=64)),
                         ("_conv_bwd_kernel", dict(WIDTH=4, SILU=True, BLOCK_L=64, BLOCK_D=64)),
                         ("_conv_final_state_kernel", dict(WIDTH=4, BLOCK_W=4, BLOCK_D=64)),
                         ("_conv_dinit_kernel", dict(WIDTH=4, SILU=True, BLOCK_W=4, BLOCK_D=64))):
        cases.append((conv + "kernels", name, consts, 4, 2, name))
    cases.append((conv + "step", "_conv_step_kernel", dict(WIDTH=4, SILU=True, BLOCK_W=4, BLOCK_D=64, PDL=True),
                  4, 2, "_conv_step_kernel"))
    cases.append((conv + "kernels", "_conv_fwd_kernel", dict(WIDTH=4, SILU=True, BLOCK_L=64, BLOCK_D=64,
                                                            bias_ptr=None, init_ptr=None, seq_ptr=None), 4, 2,
                  "_conv_fwd_kernel-lean"))
    norm = "ssmkit.ops.norm.triton.kernels"
    for name in ("_gated_rms_norm_fwd_kernel", "_gated_rms_norm_bwd_kernel"):
        cases.append((norm, name, dict(NORM_BEFORE_GATE=False, BLOCK_M=4, BLOCK_G=256), 4, 2, name))
        cases.append((norm, name, dict(NORM_BEFORE_GATE=False, BLOCK_M=4, BLOCK_G=256, z_ptr=None), 4, 2,
                      f"{name}-no-gate"))
    for rnd, res in ((1, True), (0, False)):  # a block's bf16 norm over an fp32 stream; the first block's
        cases.append((norm, "_add_rms_norm_fwd_kernel", dict(NORM_ROUND=rnd, BLOCK_M=4, BLOCK_G=1024,
                                                            **({} if res else {"res_ptr": None})), 2, 2,
                      f"_add_rms_norm_fwd_kernel-round{rnd}"))
    # Decode attention over a bf16 KV cache at the configs its launcher uses: GQA groups of 1 (MHA) and 4,
    # headdims 64 and 128, with a key mask (left padding) and without.
    decode = "ssmkit.ops.attention.triton.decode"
    from ssmkit.ops.attention.triton import decode as decode_plan

    for group, headdim, masked in ((1, 64, True), (1, 64, False), (4, 128, True), (4, 128, False), (1, 256, True)):
        consts = dict(GROUP=group, BLOCK_G=max(decode_plan.MIN_GROUP_ROWS, group), HEADDIM=headdim,
                      BLOCK_N=decode_plan.block_n(headdim), DOT_PRECISION="tf32")
        if not masked:
            consts["key_mask_ptr"] = None
        cases.append((decode, "_decode_split_kernel", consts, decode_plan.NUM_WARPS, decode_plan.NUM_STAGES,
                      f"_decode_split_kernel-g{group}-d{headdim}{'-masked' if masked else ''}"))
    for headdim in (64, 128):
        cases.append((decode, "_decode_combine_kernel", dict(HEADDIM=headdim, BLOCK_S=decode_plan.BLOCK_S),
                      decode_plan.NUM_WARPS, 2, f"_decode_combine_kernel-d{headdim}"))
    fused = "ssmkit.ops.norm.triton.linear"
    from ssmkit.ops.norm.triton.linear import MAX_ROWS, pick_config

    # The configs pick_config hands out, PDL on as on an H100: one row in one pass on a persistent grid (up to 8192
    # channels, with and without a norm: _norm_gemv_kernel) or in two passes (wider rows), tensor cores for more
    # rows (_norm_linear_kernel); and one row in one pass without the persistent grid.
    for rows, k, persistent in ((1, 1024, None), (1, 4096, None), (1, 8192, None), (1, 16384, None),
                                (MAX_ROWS, 1024, None), (1, 2048, False)):
        for norm in (True, False):
            cfg = pick_config(rows, k, 4096, norm)
            block_k = cfg.block_k or k
            gemv = not cfg.use_dot and block_k >= k
            persistent = cfg.programs_per_sm > 0 if persistent is None else persistent
            base = dict(NORMED_ROUND=1, BLOCK_N=cfg.block_n, BLOCK_K=block_k, PDL=True)
            if gemv:
                name, base = "_norm_gemv_kernel", dict(base, BLOCK_M=1, PERSISTENT=persistent, cs_ptr=None,
                                                       cw_ptr=None, cb_ptr=None, CONV_W=1, BLOCK_W=1,
                                                       CONV_SILU=False, w2_ptr=None, w3_ptr=None,
                                                       argmax_ptr=None)
            else:
                name, base = "_norm_linear_kernel", dict(base, DOT_PRECISION="tf32", USE_DOT=cfg.use_dot,
                                                         BLOCK_M=MAX_ROWS if cfg.use_dot else 1)
            forms = ((("gated", dict(NORM_ROUND=0, NG=1, res_ptr=None, res_out_ptr=None)),
                      ("gated-groups8", dict(NORM_ROUND=0, NG=8, res_ptr=None, res_out_ptr=None)),
                      ("residual", dict(NORM_ROUND=1, NG=1, z_ptr=None))) if norm else
                     (("plain", dict(NORM_ROUND=0, NG=1, res_ptr=None, res_out_ptr=None, z_ptr=None,
                                     nw_ptr=None)),
                      ("plain-gated", dict(NORM_ROUND=0, NG=1, res_ptr=None, res_out_ptr=None, nw_ptr=None))))
            for label, extra in forms:
                cases.append((fused, name, dict(base, **extra), cfg.num_warps, cfg.num_stages,
                              f"{name}-{label}-rows{rows}-k{k}{'-persistent' * (gemv and persistent)}"))
    # With a conv step in the epilogue (a Mamba / Mamba-2 in_proj after the residual add + norm): the row widths of
    # the 130M, 1.3B and (plain) wider presets, a bf16 conv state, weight and bias, width 4.
    for k, n in ((768, 3328), (2048, 8448), (2048, 8192), (5120, 16384)):
        cfg = pick_config(1, k, n, True)
        cases.append((fused, "_norm_gemv_kernel",
                      dict(NORMED_ROUND=1, BLOCK_N=cfg.block_n, BLOCK_K=triton.next_power_of_2(k), PDL=True,
                           BLOCK_M=1, PERSISTENT=True, NORM_ROUND=1, NG=1, z_ptr=None, CONV_W=4, BLOCK_W=4,
                           CONV_SILU=True, w2_ptr=None, w3_ptr=None, argmax_ptr=None), cfg.num_warps, cfg.num_stages,
                      f"_norm_gemv_kernel-residual-conv-k{k}-n{n}"))
    # Stacked weights after the residual add + norm (ONE_ROW_FUSIONS): q, k, v and gate, up of the 125M / 1.3B
    # Transformer++ presets.
    for k, n, parts in ((768, 2304, 3), (2048, 6144, 3), (768, 4096, 2), (2048, 11008, 2)):
        cfg = pick_config(1, k, n, True)
        cases.append((fused, "_norm_gemv_kernel",
                      dict(NORMED_ROUND=1, BLOCK_N=cfg.block_n, BLOCK_K=triton.next_power_of_2(k), PDL=True,
                           BLOCK_M=1, PERSISTENT=True, NORM_ROUND=1, NG=1, z_ptr=None, CONV_W=1, BLOCK_W=1,
                           CONV_SILU=False, cs_ptr=None, cw_ptr=None, cb_ptr=None, argmax_ptr=None,
                           **({} if parts == 3 else dict(w3_ptr=None))), cfg.num_warps, cfg.num_stages,
                      f"_norm_gemv_kernel-residual-stacked{parts}-k{k}-n{n}"))
    # The LM head after the last residual add + norm_f with greedy decoding's argmax epilogue (int64 keys, one
    # atomic maximum per row): the 125M-130M and 1.3B-1.4B widths, the GPT-NeoX / Llama vocabularies, and one
    # non-persistent grid.
    for k, n, persistent in ((768, 50280, True), (768, 32000, True), (2048, 50280, True), (2048, 32000, False)):
        cfg = pick_config(1, k, n, True)
        cases.append((fused, "_norm_gemv_kernel",
                      dict(NORMED_ROUND=1, BLOCK_N=cfg.block_n, BLOCK_K=triton.next_power_of_2(k), PDL=True,
                           BLOCK_M=1, PERSISTENT=persistent, NORM_ROUND=1, NG=1, z_ptr=None, CONV_W=1, BLOCK_W=1,
                           CONV_SILU=False, cs_ptr=None, cw_ptr=None, cb_ptr=None, w2_ptr=None, w3_ptr=None),
                      cfg.num_warps, cfg.num_stages,
                      f"_norm_gemv_kernel-residual-argmax-k{k}-n{n}{'-persistent' * persistent}"))
    feedback = "ssmkit.ops.argmax_keys.triton"
    for batch, warps in ((1, 1), (3, 1), (64, 4)):
        cases.append((feedback, "_feed_back_kernel", dict(BLOCK_B=triton.next_power_of_2(batch), PDL=True), warps,
                      2, f"_feed_back_kernel-batch{batch}"))
    rope = "ssmkit.ops.attention.triton.rope_cache"
    for block_d, has_rope in ((64, True), (128, True), (64, False)):
        cases.append((rope, "_rope_cache_kernel", dict(HAS_ROPE=has_rope, BLOCK_D=block_d), 1, 2,
                      f"_rope_cache_kernel-d{block_d}{'' if has_rope else '-norope'}"))
    return cases


CASES = _cases()


# aligned: as a launch on contiguous tensors with 16-aligned pointers, strides and sizes specializes the kernel
# (vectorized loads and stores, other layouts): the code an H100 runs at the benchmark and model shapes.
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("module, name, constexprs, num_warps, num_stages",
                         [pytest.param(*c[:5], id=c[5]) for c in CASES])
def test_kernel_compiles_to_an_h100_cubin_within_its_shared_memory(module, name, constexprs, num_warps,
                                                                   num_stages, aligned):
    compiled = compile_for_h100(_kernel(module, name), constexprs, num_warps, num_stages, aligned=aligned)
    assert len(compiled.asm["cubin"]) > 0
    assert compiled.metadata.shared <= H100_MAX_SHARED, (name, compiled.metadata.shared)
