"""Training throughput of one UNet fine-tune step, upstream diffusers recipe ("peer") vs diffusers-npu ("ours").

Both variants run in this one process on the same random-weight models, inputs, noise and timesteps; only the
step harness differs. img/s = batch / median device-synchronised step time. See bench/README.md.

- peer: diffusers' examples/text_to_image/train_text_to_image.py step: VAE + text encoder every step, autocast,
  fp16 GradScaler, stock AttnProcessor2_0, torch.optim.AdamW with default flags, clip_grad_norm_(1.0).
- ours: the same step as diffusers-npu configures it: attention.set_attention, optim.build_optimizer,
  optim.clip_grad_norm, optionally --cache_latents (encoders run once, as the training loop's flag).
- ours-compile (--compile): ours with torch.compile of the UNet.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import torch
from archs import ARCHS, Models, build_models, make_inputs  # bench/archs.py, beside this script
from diffusers.models.attention_processor import AttnProcessor2_0

from diffusers_npu import attention, devices, optim
from diffusers_npu.errors import UserError, cli_entry
from diffusers_npu.training.recipes.common import lora_config

VARIANTS = ("peer", "ours", "ours-compile")
CHECK_RTOL = 1e-3  # fp32, same attention: the two harnesses differ only in summation order (fused vs foreach)


@torch.no_grad()
def encode(m: Models, pixels: torch.Tensor, ids: torch.Tensor, seed: int) -> dict:
    """The frozen part of a step: VAE latents (seeded sample) and text conditioning, as upstream computes them."""
    gen = devices.get_device().generator(seed)
    latents = m.vae.encode(pixels.to(m.vae.dtype)).latent_dist.sample(generator=gen) * m.vae.config.scaling_factor
    # Latents in fp32 for both variants (ours' recipe does; upstream keeps weight_dtype), so the losses agree.
    enc = {"latents": latents.float()}
    if not m.sdxl:
        enc["context"] = m.text_encoders[0](ids, return_dict=False)[0]  # (B, 77, 1024)
        return enc
    outs = [te(ids, output_hidden_states=True) for te in m.text_encoders]
    enc["context"] = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)  # (B, 77, 768 + 1280)
    res = pixels.shape[-1]  # add_time_ids: original size, crop top-left, target size
    time_ids = torch.tensor([res, res, 0, 0, res, res], device=pixels.device, dtype=torch.float32)
    enc["cond"] = {"text_embeds": outs[1].text_embeds.float(), "time_ids": time_ids.expand(len(ids), 6)}
    return enc


def loss_of(unet, sched, enc: dict, step_seed: int, ctx) -> torch.Tensor:
    """DDPM loss (Ho et al., 2020), eps or v target; noise and timesteps from a generator seeded per step."""
    latents = enc["latents"]
    gen = devices.get_device().generator(step_seed)
    noise = torch.randn(latents.shape, generator=gen, device=latents.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), generator=gen, device=latents.device)
    noisy = sched.add_noise(latents, noise, t)
    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    with ctx:
        pred = unet(noisy, t, enc["context"], added_cond_kwargs=enc.get("cond"), return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), target.float())


@dataclass
class Variant:
    """One harness: its models on the device, its update (backward, unscale + clip, step, zero_grad)."""

    name: str
    models: Models
    update: Callable[[torch.Tensor], None]
    dtype: torch.dtype
    cached: dict | None = None


def to_device(pristine: Models, args, dtype: torch.dtype) -> tuple[Models, list[torch.nn.Parameter]]:
    """A copy of the models on the device with upstream's precision plan; returns it and the trained parameters."""
    where = devices.get_device().torch_device
    m = copy.deepcopy(pristine)
    for module in [m.vae, *m.text_encoders]:  # frozen models in weight_dtype; SDXL's VAE in fp32 (force_upcast)
        module.requires_grad_(False).to(where, dtype=torch.float32 if m.sdxl and module is m.vae else dtype).eval()
    if args.lora_rank:  # upstream's LoRA scripts: frozen base in weight_dtype, adapter weights in fp32
        m.unet.requires_grad_(False).to(where, dtype=dtype)
        torch.manual_seed(args.seed)  # the same adapter init for every variant
        m.unet.add_adapter(lora_config(args.lora_rank, args.lora_rank))
        for p in (p for p in m.unet.parameters() if p.requires_grad):
            p.data = p.data.float()
    else:
        m.unet.to(where).requires_grad_(True)
    return m, [p for p in m.unet.train().parameters() if p.requires_grad]


def setup(name: str, pristine: Models, args, dtype: torch.dtype, attn: str, pixels, ids) -> Variant:
    """Variant ``name`` on a fresh copy of the models: peer as upstream writes it, ours as diffusers-npu runs it."""
    device = devices.get_device()
    m, params = to_device(pristine, args, dtype)
    scaler = device.grad_scaler(enabled=dtype == torch.float16)
    if name == "peer":  # train_text_to_image.py through accelerate: its clip_grad_norm_ unscales first
        m.unet.set_attn_processor(AttnProcessor2_0())
        opt = torch.optim.AdamW(params, lr=args.learning_rate)
        clip = lambda: (scaler.unscale_(opt), torch.nn.utils.clip_grad_norm_(params, 1.0))  # noqa: E731
        zero_grad = {}
    else:
        attention.set_attention(m.unet, attn, device.kind, dtype)
        opt = optim.build_optimizer(args.optimizer, params, device.kind, args.learning_rate)
        clip = lambda: optim.clip_grad_norm(params, 1.0, opt, scaler)  # noqa: E731
        zero_grad = dict(optim.get_spec(args.optimizer).zero_grad_kwargs)
        if name == "ours-compile":
            m.unet = torch.compile(m.unet)

    def update(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()
        clip()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(**zero_grad)

    v = Variant(name, m, update, dtype)
    if name != "peer" and args.cache_latents:  # encoders run once, then leave the device: UNet-only steps
        v.cached = encode(m, pixels, ids, args.seed)
        m.vae, m.text_encoders = None, []
    return v


def train_step(v: Variant, pixels, ids, seed: int, step: int) -> torch.Tensor:
    """One optimizer step on the same inputs, noise and timesteps for every variant; returns the detached loss."""
    enc = v.cached or encode(v.models, pixels, ids, seed)
    ctx = devices.get_device().autocast(v.dtype)
    loss = loss_of(v.models.unet, v.models.scheduler, enc, seed + 1 + step, ctx)
    v.update(loss)
    return loss.detach()


def release() -> None:
    gc.collect()
    torch._dynamo.reset()
    devices.get_device().empty_cache()


def measure(name: str, pristine: Models, args, dtype, pixels, ids) -> dict:
    """Warm up, then time ``--steps`` synchronised steps of variant ``name``; img/s from the median."""
    device = devices.get_device()
    release()
    device.reset_peak_memory()
    v = setup(name, pristine, args, dtype, args.attention, pixels, ids)
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        device.synchronize()
        start = time.perf_counter()
        loss = train_step(v, pixels, ids, args.seed, step)
        device.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    step_time_s = statistics.median(times[args.warmup :])
    result = dict(variant=name, img_per_s=args.batch_size / step_time_s, step_time_s=step_time_s,
                  peak_mem_gib=device.peak_memory_gib(), first_step_s=times[0], losses=losses)  # fmt: skip
    del v
    release()
    return result


def check(pristine: Models, args, pixels, ids) -> dict:
    """fp32, sdpa for both, 2 samples: peer and ours must give the same losses before and after one update."""
    losses = {}
    for name in ("peer", "ours"):
        v = setup(name, pristine, args, torch.float32, "sdpa", pixels[:2], ids[:2])
        losses[name] = [train_step(v, pixels[:2], ids[:2], args.seed, step).item() for step in range(2)]
        del v
        release()
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["peer"], losses["ours"]))
    losses = {f"{k}_losses": v for k, v in losses.items()}
    return dict(passed=rel <= CHECK_RTOL, max_rel_diff=rel, rtol=CHECK_RTOL, **losses)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="sd21", help=f"one of {', '.join(ARCHS)} (default: %(default)s)")
    p.add_argument("--variants", default="peer,ours", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--compile", action="store_true", help="also run ours-compile (torch.compile of the UNet)")
    p.add_argument("--batch_size", type=int, default=24)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    p.add_argument(
        "--attention", choices=list(attention.KERNELS), help="ours: the device default (devices.settings_for)"
    )
    p.add_argument(
        "--optimizer", choices=list(optim.OPTIMIZERS), help="ours: the device default (devices.settings_for)"
    )
    p.add_argument("--cache_latents", action="store_true", help="ours: encode once, then UNet-only steps")
    p.add_argument("--lora_rank", type=int, default=0, help="0: full fine-tune; else LoRA rank (both variants)")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="first verify peer and ours give the same fp32 losses")
    p.add_argument("--json_out", default=None, help="also write the JSON result to this file")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, kind: str, dtype: torch.dtype) -> list[str]:
    """Validate the choices and fill ours' device defaults; return the variants to run."""
    if args.arch not in ARCHS:
        raise UserError(f"unknown --arch {args.arch!r}; choose one of {', '.join(ARCHS)}")
    variants = [v for v in args.variants.split(",") if v] + (["ours-compile"] if args.compile else [])
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UserError(f"unknown --variants {','.join(bad)!r}; use a comma list of {', '.join(VARIANTS)}")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.resolution % 8:
        raise UserError("--steps >= 1, --warmup >= 0, --batch_size >= 1 and --resolution a multiple of 8, please")
    defaults = devices.settings_for(kind, args.mixed_precision)  # the device defaults, asked in one place
    args.attention = args.attention or defaults.attention
    args.optimizer = args.optimizer or defaults.optimizer
    return list(dict.fromkeys(variants))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()  # one notice per .to(dtype) of the VAE otherwise
    device = devices.get_device()
    dtype = device.check_dtype(devices.parse_dtype(args.mixed_precision))
    variants = resolve(args, device.kind, dtype)
    attention.check_kernel(args.attention, device.kind, dtype)
    pristine = build_models(args.arch, args.seed)
    pixels, ids = (
        t.to(device.torch_device)
        for t in make_inputs(args.batch_size, args.resolution, args.seed, pristine.text_encoders[0].config)
    )
    checked = check(pristine, args, pixels, ids) if args.check else None
    results = [measure(name, pristine, args, dtype, pixels, ids) for name in variants]
    print(f"{'variant':<14}{'img/s':>10}{'step_time_s':>14}{'peak_mem_gib':>14}")
    for r in results:
        print(f"{r['variant']:<14}{r['img_per_s']:>10.2f}{r['step_time_s']:>14.4f}{r['peak_mem_gib']:>14.2f}")
    if checked is not None:
        verdict = "passed" if checked["passed"] else "FAILED"
        print(f"check: {verdict} (max relative loss difference {checked['max_rel_diff']:.2e})")
    record = dict(arch=args.arch, device=device.kind, device_name=device.name(), batch_size=args.batch_size, resolution=args.resolution,
                  mixed_precision=args.mixed_precision, attention=args.attention, optimizer=args.optimizer,
                  cache_latents=args.cache_latents, lora_rank=args.lora_rank, steps=args.steps, warmup=args.warmup,
                  torch=torch.__version__, diffusers=diffusers.__version__, command=" ".join(sys.argv),
                  variants=results, check=checked)  # fmt: skip
    line = json.dumps(record)
    print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    return 0 if checked is None or checked["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
