"""The CycleGAN trainer, in the manner of nanoGPT.

One function, ``train(cfg)``: autocast (bf16 where the GPU has it, fp16 +
GradScaler where it has not, fp32 on CPU) behind one context switch; side
effects (logs, samples, checkpoints) on rank 0 only; torch.compile before DDP;
the unwrapped modules are what gets saved. A checkpoint holds everything
needed to resume exactly: networks, optimizers, pools, RNG states, epoch, step.

Per step the four generator passes are batched into two-plus-two calls
(G_A runs on [real_A, real_B] for fake_B and the identity term at once), each
discriminator output is computed once, and losses stay on the device, read back
every ``log_every`` steps only.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import state, validation
from .amp import autocast_ctx, pick_precision
from .config import TrainConfig
from .data import (DataError, Domain, augment, choose_holdout, load_domain, load_size_for,
                   resolve_layout, split_holdout, to_float)
from .launch import write_rank_digest
from .losses import (cross_excess, feature_l1, fsim, gaussian_blur, gradient_l1, shift_difference,
                     shift_image, spectral_excess, tensor_l1)
from .networks import build_discriminator, build_generator, init_weights

log = logging.getLogger("facesketch.train")
LOSS_NAMES = ("G_adv_A", "G_adv_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "pair_A", "pair_B",
              "fm_A", "fm_B", "spectral", "cross", "tensor", "shift", "G", "D_A", "D_B")
G_INDEX = LOSS_NAMES.index("G")


# ----------------------------------------------------------------- modules
class GeneratorPair(nn.Module):
    """Both generators' passes of one step as a single forward (one DDP call).

    ``identity``: also run G on y and F on x (the identity loss), batched with the
    translations; off when its weight is 0. ``cycle_noise``: Gaussian noise of that
    std is added to G(x) and F(y) before they are reconstructed, so the cycle cannot
    be closed by a hidden low-amplitude copy of the input (Chu et al., 2017).
    """

    def __init__(self, G_A: nn.Module, G_B: nn.Module, identity: bool = True,
                 cycle_noise: float = 0.0):
        super().__init__()
        self.G_A, self.G_B = G_A, G_B
        self.identity, self.cycle_noise = identity, cycle_noise

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor,
                shift: tuple[int, int] | None = None):
        """(G(x), F(y), F(G(x)), G(F(y)), G(y) or None, F(x) or None, shifted): with
        ``shift`` = (dy, dx), ``shifted`` is (G(x moved by it), F(y moved by it)), batched
        with the translations (the shift-consistency loss); else None."""
        n = real_A.shape[0]
        in_A, in_B = [real_A], [real_B]
        if self.identity:
            in_A.append(real_B)                                             # G(y)
            in_B.append(real_A)                                             # F(x)
        if shift is not None:
            in_A.append(shift_image(real_A, *shift))
            in_B.append(shift_image(real_B, *shift))
        out_A = self.G_A(torch.cat(in_A)).split(n)   # one batched pass per generator
        out_B = self.G_B(torch.cat(in_B)).split(n)
        fake_B, fake_A = out_A[0], out_B[0]
        idt_A, idt_B = (out_A[1], out_B[1]) if self.identity else (None, None)
        shifted = (out_A[-1], out_B[-1]) if shift is not None else None
        nb, na = fake_B, fake_A
        if self.cycle_noise > 0:
            nb = fake_B + self.cycle_noise * torch.randn_like(fake_B)
            na = fake_A + self.cycle_noise * torch.randn_like(fake_A)
        rec_A = self.G_B(nb)                                             # F(G(x))
        rec_B = self.G_A(na)                                             # G(F(y))
        return fake_B, fake_A, rec_A, rec_B, idt_A, idt_B, shifted


class DiscriminatorPair(nn.Module):
    """D_A judges domain B (sketches), D_B judges domain A (photos)."""

    def __init__(self, D_A: nn.Module, D_B: nn.Module):
        super().__init__()
        self.D_A, self.D_B = D_A, D_B

    def forward(self, for_A: torch.Tensor, for_B: torch.Tensor, features: bool = False):
        """Each side's predictions; with ``features`` each side is (predictions, features)."""
        return self.D_A(for_A, features), self.D_B(for_B, features)


class ImagePool:
    """The 50-image history buffer of Shrivastava et al., on the training device.

    Random decisions come from a CPU generator (saved in checkpoints), so a
    query never syncs with the GPU.
    """

    def __init__(self, size: int, gen: torch.Generator):
        self.size, self.gen = size, gen
        self.images: torch.Tensor | None = None
        self.count = 0

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.detach()
        if self.size == 0:
            return batch
        if self.images is None:
            self.images = torch.zeros((self.size, *batch.shape[1:]), dtype=batch.dtype,
                                      device=batch.device)
        out = []
        for i in range(batch.shape[0]):
            img = batch[i]
            if self.count < self.size:
                self.images[self.count] = img
                self.count += 1
                out.append(img)
            elif float(torch.rand((), generator=self.gen)) > 0.5:
                j = int(torch.randint(0, self.size, (), generator=self.gen))
                old = self.images[j].clone()
                self.images[j] = img
                out.append(old)
            else:
                out.append(img)
        return torch.stack(out)


def lr_factor(epoch: int, epochs: int) -> float:
    """Reference schedule: constant for the first half, then linear decay to ~0."""
    n_const = epochs // 2
    n_decay = epochs - n_const
    return 1.0 - max(0, epoch - n_const + 1) / float(n_decay + 1)


def mse_to(pred: torch.Tensor, target: float) -> torch.Tensor:
    return (pred.float() - target).pow(2).mean()


# ----------------------------------------------------------------- set-up helpers
def weighted_mean(weights: torch.Tensor, scale: float, per_sample: torch.Tensor) -> torch.Tensor:
    """``scale`` x the mean of ``per_sample`` over the samples ``weights`` (0/1) select:
    a paired loss, averaged over the batch's pairs (0 where it has none)."""
    return (weights * (scale / weights.sum().clamp(min=1.0)) * per_sample).sum()


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def make_adam(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    kw: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, 0.999)}
    if device.type == "cuda":
        kw["fused"] = True
    else:
        kw["foreach"] = True
    return torch.optim.Adam(params, **kw)


class _Interrupt:
    """First Ctrl-C: finish the step, write a resumable checkpoint, stop. Second: abort."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: finishing this step and writing a resumable checkpoint "
                    "(Ctrl-C again to abort without one)")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


# ----------------------------------------------------------------- the run
class Run:
    """State of one training process (rank). ``train()`` drives it."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.ddp = int(os.environ.get("RANK", -1)) != -1
        if self.ddp:
            import torch.distributed as dist
            self.rank = int(os.environ["RANK"])
            self.world = int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            self.device = pick_device(cfg, local_rank)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            # CPU side channel for the per-step stop vote (no GPU sync); gloo: the default group.
            self.ctl_group = dist.new_group(backend="gloo") if self.device.type == "cuda" else None
        else:
            self.rank, self.world = 0, 1
            self.device = pick_device(cfg, 0)
        self.master = self.rank == 0
        self.precision = pick_precision(cfg, self.device)
        self.channels_last = (self.device.type == "cuda") if cfg.channels_last is None else cfg.channels_last
        self.out = Path(cfg.out)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

    # -- data
    def load_data(self) -> None:
        cfg = self.cfg
        layout = resolve_layout(cfg.data, cfg.photos, cfg.sketches)
        if self.master:
            log.info("data layout: %s (photos %s, sketches %s)", layout.name, layout.photos, layout.sketches)
        ls = load_size_for(cfg.size)
        lim = None if cfg.max_images is None else cfg.max_images + cfg.holdout
        photos = load_domain("photos", layout.photos, ls, lim, self.device, align=cfg.align)
        sketches = load_domain("sketches", layout.sketches, ls, lim, self.device, align=cfg.align)
        held = choose_holdout(photos, sketches, cfg.holdout, cfg.seed)
        self.train_A, self.held_A = split_holdout(photos, held)
        self.train_B, self.held_B = split_holdout(sketches, held)
        # the held-back pairs at their own size, for validation as the test set is scored
        # (with --align auto training sees face crops: validation stays on those)
        self.held_native = (validation.load_native_pairs(self.held_A, self.held_B)
                            if cfg.align == "off" and self.master else [])
        if cfg.max_images is not None:
            self.train_A, _ = split_holdout(self.train_A, self.train_A.names[cfg.max_images:])
            self.train_B, _ = split_holdout(self.train_B, self.train_B.names[cfg.max_images:])
        for dom in (self.train_A, self.train_B):
            if len(dom) == 0:
                raise DataError(f"{dom.folder}: no images left for training after holding back "
                                f"{cfg.holdout}; lower --holdout")
        # partner[i] = index in train_B of the sketch with photo i's file name (pairs=auto)
        self.partner = find_pairs(self.train_A, self.train_B) if cfg.pairs == "auto" else {}
        if self.master and cfg.pairs == "auto":
            log.info("pairs: %d of %d photos have a sketch of the same file name%s", len(self.partner),
                     len(self.train_A), " (paired L1 loss on those, the rest unpaired)" if self.partner
                     else "; training unpaired")
        self.data_summary = {
            "layout": layout.name, "photos": str(layout.photos), "sketches": str(layout.sketches),
            "train_photos": len(self.train_A), "train_sketches": len(self.train_B),
            "train_pairs": len(self.partner),
            "held_out": held, "skipped": self.train_A.skipped + self.train_B.skipped,
            "load_size": ls,
        }
        per_rank = max(len(self.train_A), len(self.train_B)) // self.world
        self.steps_per_epoch = max(1, per_rank // cfg.batch_size)
        if self.master:
            log.info("training on %d photos and %d sketches (%d held back each), %d steps/epoch",
                     len(self.train_A), len(self.train_B), len(held), self.steps_per_epoch)

    # -- models
    def build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        mf = torch.channels_last if self.channels_last else torch.preserve_format
        self.G_A = init_weights(build_generator(cfg.blocks, cfg.ngf, cfg.arch)).to(self.device, memory_format=mf)
        self.G_B = init_weights(build_generator(cfg.blocks, cfg.ngf, cfg.arch)).to(self.device, memory_format=mf)
        if cfg.init and not cfg.resume:
            self.init_generators(cfg.init)
        # --ema: averaged copies of the generators, what validation and the saved model use
        self.ema_A = copy.deepcopy(self.G_A).requires_grad_(False) if cfg.ema > 0 else None
        self.ema_B = copy.deepcopy(self.G_B).requires_grad_(False) if cfg.ema > 0 else None
        self.D_A = init_weights(build_discriminator(cfg.ndf)).to(self.device, memory_format=mf)
        self.D_B = init_weights(build_discriminator(cfg.ndf)).to(self.device, memory_format=mf)
        self.gens = GeneratorPair(self.G_A, self.G_B, identity=cfg.lambda_identity > 0,
                                  cycle_noise=cfg.cycle_noise)
        self.discs = DiscriminatorPair(self.D_A, self.D_B)
        self.opt_G = make_adam(self.gens.parameters(), cfg, self.device)
        self.opt_D = make_adam(self.discs.parameters(), cfg, self.device)
        fp16 = self.precision == "fp16"
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        # Separate CPU generators for data order/augmentation and pools: exact resume.
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + self.rank)
        self.pool_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 2 + self.rank)
        self.pool_A = ImagePool(cfg.pool_size, self.pool_gen)  # fakes of B for D_A
        self.pool_B = ImagePool(cfg.pool_size, self.pool_gen)  # fakes of A for D_B
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_score = -math.inf
        self.best_score_on: str | None = None  # "native" or "grid": what best_score measured
        self.history: list[dict[str, Any]] = []

    def init_generators(self, path: str) -> None:
        """--init: both generators' weights from a trained model (fine-tuning)."""
        nets, src = ckpt.load_model(path)
        for name in ("G_A", "G_B"):
            try:
                getattr(self, name).load_state_dict(nets[name].state_dict(), strict=True)
            except RuntimeError as exc:
                a = src.get("arch", {})
                raise ckpt.CheckpointError(
                    f"--init {path}: its generators (upsample {a.get('upsample')}, blocks "
                    f"{a.get('blocks')}, ngf {a.get('ngf')}) do not match this run's --arch "
                    f"{self.cfg.arch} --blocks {self.cfg.blocks} --ngf {self.cfg.ngf}") from exc
        if self.master:
            log.info("generators initialised from %s", path)

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- ema + (1 - decay) * (weights - ema), after every generator step."""
        if self.ema_A is None:
            return
        for ema, net in ((self.ema_A, self.G_A), (self.ema_B, self.G_B)):
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1.0 - self.cfg.ema)
            for e, b in zip(ema.buffers(), net.buffers()):
                e.copy_(b)

    def published(self) -> tuple[nn.Module, nn.Module]:
        """The generators validation, samples and saved models use: the EMA with --ema."""
        if self.ema_A is not None:
            return self.ema_A, self.ema_B
        return self.G_A, self.G_B

    def wrap(self) -> None:
        """compile, then DDP: the order nanoGPT uses."""
        gens, discs = self.gens, self.discs
        if self.cfg.compile:
            gens = torch.compile(gens, mode=self.cfg.compile_mode)
            discs = torch.compile(discs, mode=self.cfg.compile_mode)
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            gens = DDP(gens, device_ids=ids)
            discs = DDP(discs, device_ids=ids)
        self.gens_run, self.discs_run = gens, discs
        # Discriminators judged in the G step without DDP hooks (their grads are off).
        self.discs_g = torch.compile(self.discs, mode=self.cfg.compile_mode) if self.cfg.compile else self.discs

    def agree_stop(self, local: bool) -> bool:
        """Under DDP every rank must stop after the same step (else the others hang in the
        next all-reduce): a stop asked on any rank (Ctrl-C, SIGINT from torchrun) stops all."""
        if not self.ddp:
            return local
        import torch.distributed as dist
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.ctl_group)
        return bool(flag.item())

    # -- one step
    def epoch_order(self, epoch: int, n: int) -> list[int]:
        """This rank's shard of the epoch's permutation (deterministic in seed and epoch)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        need = self.steps_per_epoch * self.cfg.batch_size * self.world
        if n < need:  # the smaller domain wraps around
            perm = perm.repeat(math.ceil(need / n))[:need]
        return perm[self.rank::self.world].tolist()

    def batch(self, dom: Domain, order: list[int], step: int) -> torch.Tensor:
        bs = self.cfg.batch_size
        idx = order[step * bs:(step + 1) * bs]
        return self._to_input(augment(dom.images[idx], self.cfg.size, self.data_gen))

    def _to_input(self, u8: torch.Tensor) -> torch.Tensor:
        x = to_float(u8)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def orders(self, epoch: int) -> tuple[list[int], list[int]]:
        """The epoch's photo and sketch orders; with pairs, a paired photo brings its sketch."""
        order_A = self.epoch_order(epoch, len(self.train_A))
        order_B = self.epoch_order(epoch, len(self.train_B))
        if self.partner:
            order_B = [self.partner.get(a, b) for a, b in zip(order_A, order_B)]
        return order_A, order_B

    def draw_shift(self) -> tuple[int, int]:
        """A random (dy, dx) in 0..3 x 0..3, not (0, 0): the shift-consistency loss moves
        each input by it (from the data generator: saved, so a resume repeats it)."""
        k = int(torch.randint(1, 16, (1,), generator=self.data_gen))
        return k // 4, k % 4

    def batches(self, order_A: list[int], order_B: list[int], step: int):
        """(real_A, real_B, paired): with pairs each photo/sketch couple shares one crop
        and flip (augmented as one 6-channel image); ``paired`` weighs the paired L1."""
        if not self.partner:
            return (self.batch(self.train_A, order_A, step), self.batch(self.train_B, order_B, step),
                    None)
        bs = self.cfg.batch_size
        ia, ib = order_A[step * bs:(step + 1) * bs], order_B[step * bs:(step + 1) * bs]
        both = augment(torch.cat([self.train_A.images[ia], self.train_B.images[ib]], 1),
                       self.cfg.size, self.data_gen)
        paired = torch.tensor([float(self.partner.get(a) == b) for a, b in zip(ia, ib)],
                              device=self.device)
        return self._to_input(both[:, :3]), self._to_input(both[:, 3:]), paired

    def texture_losses(self, real_A: torch.Tensor, real_B: torch.Tensor, fake_B: torch.Tensor,
                       fake_A: torch.Tensor, paired: torch.Tensor | None,
                       shifted: tuple[torch.Tensor, torch.Tensor] | None,
                       shift: tuple[int, int] | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(spectral, cross-hatch, structure-tensor, shift-consistency) generator losses,
        each 0 when off."""
        cfg, zero = self.cfg, real_A.new_zeros(())
        spec = cross = tensor = moved = zero
        pin = cfg.spectral_ring == "pinned"  # against each partner: paired samples only
        if cfg.lambda_spectral > 0 and (paired is not None or not pin):
            ws = paired if pin else torch.ones(real_A.shape[0], device=real_A.device)
            spec = weighted_mean(ws, cfg.lambda_spectral, spectral_excess(fake_B, real_B, pin)
                                 + spectral_excess(fake_A, real_A, pin))
        if cfg.lambda_cross > 0 and paired is not None:  # no crossing the partner has not
            cross = weighted_mean(paired, cfg.lambda_cross,
                                  cross_excess(fake_B, real_B) + cross_excess(fake_A, real_A))
        if cfg.lambda_tensor > 0 and paired is not None:  # strokes the partner's way, anywhere
            tensor = weighted_mean(paired, cfg.lambda_tensor,
                                   tensor_l1(fake_B, real_B) + tensor_l1(fake_A, real_A))
        if shifted is not None:  # what a translation draws must move with its input
            moved = cfg.lambda_shift * (shift_difference(fake_B, shifted[0], shift)
                                        + shift_difference(fake_A, shifted[1], shift))
        return spec, cross, tensor, moved

    def train_step(self, real_A: torch.Tensor, real_B: torch.Tensor,
                   paired: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        lam_c, lam_i = cfg.lambda_cycle, cfg.lambda_cycle * cfg.lambda_identity
        ac = autocast_ctx(self.device, self.precision)
        # --- generators
        for p in self.discs.parameters():
            p.requires_grad_(False)
        fm = cfg.lambda_fm > 0 and paired is not None
        with ac:
            shift = self.draw_shift() if cfg.lambda_shift > 0 else None
            fake_B, fake_A, rec_A, rec_B, idt_A, idt_B, shifted = self.gens_run(real_A, real_B, shift)
            if fm:
                (pred_fake_B, feat_fake_B), (pred_fake_A, feat_fake_A) = self.discs_g(
                    fake_B, fake_A, features=True)
            else:
                pred_fake_B, pred_fake_A = self.discs_g(fake_B, fake_A)
        g_adv_A = mse_to(pred_fake_B, 1.0) * cfg.lambda_gan
        g_adv_B = mse_to(pred_fake_A, 1.0) * cfg.lambda_gan
        cyc_A = F.l1_loss(rec_A.float(), real_A) * lam_c
        cyc_B = F.l1_loss(rec_B.float(), real_B) * lam_c
        zero = real_A.new_zeros(())
        idt_a = F.l1_loss(idt_A.float(), real_B) * lam_i if idt_A is not None else zero
        idt_b = F.l1_loss(idt_B.float(), real_A) * lam_i if idt_B is not None else zero
        pair_a = pair_b = zero
        if paired is not None:  # L1 to the artist's sketch / the photo, paired samples only
            pair_a = weighted_mean(paired, cfg.lambda_pair, (fake_B.float() - real_B).abs().mean((1, 2, 3)))
            pair_b = weighted_mean(paired, cfg.lambda_pair, (fake_A.float() - real_A).abs().mean((1, 2, 3)))
            if cfg.lambda_pair_grad > 0:  # edges where the artist drew them (and the photo has them)
                pair_a = pair_a + weighted_mean(paired, cfg.lambda_pair_grad,
                                                gradient_l1(fake_B.float(), real_B))
                pair_b = pair_b + weighted_mean(paired, cfg.lambda_pair_grad,
                                                gradient_l1(fake_A.float(), real_A))
            if cfg.lambda_pair_fsim > 0:  # the evaluation's structure measure, as a loss
                blur = lambda t: gaussian_blur(t.float(), cfg.fsim_blur)  # noqa: E731
                pair_a = pair_a + weighted_mean(paired, cfg.lambda_pair_fsim,
                                                1 - fsim(blur(fake_B), blur(real_B), cfg.fsim_pool))
                pair_b = pair_b + weighted_mean(paired, cfg.lambda_pair_fsim,
                                                1 - fsim(blur(fake_A), blur(real_A), cfg.fsim_pool))
        fm_a = fm_b = zero
        if fm:  # the discriminators' features of a translation against its partner's
            with torch.no_grad(), ac:
                (_, feat_real_B), (_, feat_real_A) = self.discs_g(real_B, real_A, features=True)
            fm_a = weighted_mean(paired, cfg.lambda_fm, feature_l1(feat_fake_B, feat_real_B))
            fm_b = weighted_mean(paired, cfg.lambda_fm, feature_l1(feat_fake_A, feat_real_A))
        spec, cross, tensor, moved = self.texture_losses(real_A, real_B, fake_B, fake_A, paired,
                                                         shifted, shift)
        loss_G = (g_adv_A + g_adv_B + cyc_A + cyc_B + idt_a + idt_b + pair_a + pair_b + fm_a + fm_b
                  + spec + cross + tensor + moved)
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler_G.scale(loss_G).backward()
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        self.update_ema()
        # --- discriminators (history pools; real and fake in one call each)
        for p in self.discs.parameters():
            p.requires_grad_(True)
        n = real_A.shape[0]
        pooled_B = self.pool_A.query(fake_B)
        pooled_A = self.pool_B.query(fake_A)
        with ac:
            out_A, out_B = self.discs_run(torch.cat([real_B, pooled_B]), torch.cat([real_A, pooled_A]))
        real_pA, fake_pA = out_A.split(n)
        real_pB, fake_pB = out_B.split(n)
        loss_D_A = 0.5 * (mse_to(real_pA, 1.0) + mse_to(fake_pA, 0.0))
        loss_D_B = 0.5 * (mse_to(real_pB, 1.0) + mse_to(fake_pB, 0.0))
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler_D.scale(loss_D_A + loss_D_B).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        return torch.stack([g_adv_A, g_adv_B, cyc_A, cyc_B, idt_a, idt_b, pair_a, pair_b, fm_a, fm_b,
                            spec, cross, tensor, moved, loss_G,
                            loss_D_A, loss_D_B]).detach()

def find_pairs(photos: Domain, sketches: Domain) -> dict[int, int]:
    """Photo index -> sketch index for images of the same file name; the suffix may
    differ (1.jpg pairs with 1.png)."""
    stem = lambda n: n.rsplit(".", 1)[0]  # noqa: E731
    by_stem: dict[str, int] = {}
    for j, n in enumerate(sketches.names):
        by_stem.setdefault(stem(n), j)
    return {i: by_stem[stem(n)] for i, n in enumerate(photos.names) if stem(n) in by_stem}


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a CycleGAN; returns the run folder holding the checkpoint."""
    run = Run(cfg)
    try:
        out = _train(run)
        write_rank_digest(run, "end")  # test hook, only with FACESKETCH_DEBUG_RANK_DIGEST set
        return out
    finally:
        if run.ddp:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _start(run: Run) -> None:
    """Check the run folder, load data, build (or resume) and wrap the networks."""
    cfg = run.cfg
    if run.master:
        state_file = run.out / ckpt.STATE_FILE
        if (state_file.exists() or ckpt.previous_state(state_file).exists()) and not cfg.resume:
            raise ckpt.CheckpointError(f"{run.out} already holds a run; pass --resume to continue "
                                       "it, or choose another --out")
        run.out.mkdir(parents=True, exist_ok=True)
        # Temporary files of writes a kill -9 cut short (a state's is ~180 MB): this run
        # owns the folder now. Logs each removal; see remove_stale_temps for which go.
        ckpt.remove_stale_temps(run.out, run.out / "best")
    run.load_data()
    run.build()
    if cfg.resume:
        state.resume(run)
    run.wrap()
    write_rank_digest(run, "start")
    if run.master:
        log.info("device %s, precision %s, compile %s, channels_last %s, batch %d, world %d",
                 run.device, run.precision, cfg.compile, run.channels_last, cfg.batch_size, run.world)
    run.last_save = time.monotonic()


class _LossLog:
    """Step losses summed on the device and read back every ``log_every`` steps (the one
    host sync), to log.jsonl and the progress bar; also the epoch's mean."""

    def __init__(self, run: Run, lr: float, log_file, bar):
        self.run, self.lr, self.file, self.bar = run, lr, log_file, bar
        self.window = torch.zeros(len(LOSS_NAMES), device=run.device)
        self.epoch = torch.zeros(len(LOSS_NAMES), device=run.device)
        self.n_window = self.n_epoch = 0
        self.t_window = time.perf_counter()

    def add(self, losses: torch.Tensor) -> None:
        run = self.run
        self.window += losses
        self.n_window += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.n_window == run.cfg.log_every or run.step_in_epoch == run.steps_per_epoch:
            self.flush()

    def flush(self) -> None:
        run = self.run
        vals = (self.window / self.n_window).tolist()
        self.epoch += self.window
        self.n_epoch += self.n_window
        now = time.perf_counter()
        rec = {"epoch": run.epoch, "global_step": run.global_step, "lr": self.lr,
               "it_s": self.n_window / max(now - self.t_window, 1e-9),
               "losses": dict(zip(LOSS_NAMES, [round(v, 5) for v in vals]))}
        if self.file:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.bar is not None:
            self.bar.set_postfix(G=f"{vals[G_INDEX]:.3f}",
                                 D=f"{vals[G_INDEX + 1] + vals[G_INDEX + 2]:.3f}", epoch=run.epoch)
        self.window.zero_()
        self.n_window, self.t_window = 0, now

    def epoch_means(self) -> dict[str, float]:
        mean = (self.epoch / max(self.n_epoch, 1)).tolist()
        return dict(zip(LOSS_NAMES, [round(v, 5) for v in mean]))


def _set_lr(run: Run) -> float:
    lr = run.cfg.lr * lr_factor(run.epoch, run.cfg.epochs)
    for opt in (run.opt_G, run.opt_D):
        for g in opt.param_groups:
            g["lr"] = lr
    return lr


def _run_epoch(run: Run, intr: "_Interrupt", losses: _LossLog) -> bool:
    """The steps left in this epoch; True when asked to stop (max_steps, Ctrl-C, a rank's vote)."""
    cfg = run.cfg
    order_A, order_B = run.orders(run.epoch)
    while run.step_in_epoch < run.steps_per_epoch:
        real_A, real_B, paired = run.batches(order_A, order_B, run.step_in_epoch)
        step_losses = run.train_step(real_A, real_B, paired)
        run.step_in_epoch += 1
        run.global_step += 1
        losses.add(step_losses)
        if cfg.max_steps is not None and run.global_step >= cfg.max_steps:
            return True
        if run.agree_stop(intr.requested):
            return True
        if time.monotonic() - run.last_save > cfg.checkpoint_minutes * 60:
            state.save(run, "periodic")
    return False


def _close_epoch(run: Run, losses: _LossLog, t_epoch: float) -> None:
    """Validation, samples and best/ (rank 0), the end-of-epoch checkpoint, and after the
    last epoch the detector refit (it travels in the checkpoint config)."""
    if run.master:
        validation.end_of_epoch(run, losses.epoch_means(), time.perf_counter() - t_epoch)
    run.epoch += 1
    run.step_in_epoch = 0
    state.save(run, "end of epoch")
    if run.epoch == run.cfg.epochs and run.master and validation.fit_detector(run):
        ckpt.save_model(run.out, *run.published(), state.model_config(run))
        if (run.out / "best" / ckpt.MODEL_FILE).is_file():
            ckpt.add_detector(run.out / "best", run.detector)


def _train(run: Run) -> Path:
    """The training loop: epochs of steps until done or asked to stop (then a checkpoint)."""
    cfg = run.cfg
    _start(run)
    total_steps = cfg.epochs * run.steps_per_epoch
    log_file = open(run.out / "log.jsonl", "a") if run.master else None
    bar = None
    if run.master and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps),
                   initial=run.global_step, unit="it", dynamic_ncols=True, mininterval=1.0)
    try:
        with _Interrupt() as intr:
            stopped = False
            while run.epoch < cfg.epochs and not stopped:
                losses = _LossLog(run, _set_lr(run), log_file, bar)
                t_epoch = time.perf_counter()
                stopped = _run_epoch(run, intr, losses)
                if stopped and run.step_in_epoch < run.steps_per_epoch:
                    state.save(run, "stopped mid-epoch" if not intr.requested else "interrupted")
                    break
                _close_epoch(run, losses, t_epoch)
    finally:
        if bar is not None:
            bar.close()
        if log_file:
            log_file.close()
    if run.master:
        if run.epoch < cfg.epochs:
            log.warning("stopped at epoch %d, step %d of %d; continue with the same command "
                        "plus --resume", run.epoch, run.global_step, total_steps)
        else:
            log.info("done: %s (epoch %d, step %d)", run.out, run.epoch, run.global_step)
    return run.out
