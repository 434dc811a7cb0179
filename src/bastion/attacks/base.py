"""The contract every attack shares, so each attack module holds only its maths.

:class:`Attack` owns eval mode, the device, batching, input validation, the declared
parameters (:mod:`bastion.attacks.params`: checked, defaulted, set as attributes, listed
in reports), the projection onto the threat model, dropping samples that are already
misclassified, counting model evaluations, and the loss trace. A subclass declares
``name``, ``PARAMS`` (and ``FAMILY``, ``norms`` where they differ) and implements one
method, :meth:`Attack.attack_batch`, for a batch of correctly classified inputs at one eps.

Who re-checks an adversarial: :meth:`Attack.run` re-predicts every projected candidate,
and that prediction decides which samples this attack reports as fooled and stops
attacking at larger eps. It is the attack's own claim. The benchmark runner
(:func:`bastion.evaluation.runner.confirm_adversarial`) checks each claim again,
independently (finite, inside the ball and the bounds, misclassified), and only that
verdict counts in a benchmark; it stays the check of record when attacks run in another
precision or compiled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.params import MAX_BATCH_SIZE, Params, integer
from bastion.attacks.toolbox import per_sample, random_in_ball, steepest_ascent
from bastion.errors import AttackError
from bastion.models.loaded import as_module, unwrap
from bastion.models.loaded import device_of as model_device  # one owner; still importable from here
from bastion.threat import ThreatModel

#: Samples per attack batch when none is given. On a CPU a batch of a few hundred images keeps
#: the activations in cache: on the zoo CNN a sample costs about 1.7x more (forward and
#: backward) in batches of 1,000 than of 256. Accelerators want large batches.
CPU_BATCH_SIZE = 256
ACCELERATOR_BATCH_SIZE = 1000

#: Parameters every attack takes: how the run batches and seeds it, not its maths.
RUN_PARAMS = Params(
    integer("batch_size", None, 1, MAX_BATCH_SIZE, optional=True, help="default: by device"),
    integer("seed", 0, -(2 ** 63), 2 ** 64 - 1),
)


@dataclass
class AttackResult:
    """Outcome of one attack at one eps, for every input sample."""

    attack: str
    eps: float
    x_adv: torch.Tensor          # adversarial inputs (the clean input where none was attempted)
    clean_correct: torch.Tensor  # bool: the model classified the clean input correctly
    robust: torch.Tensor         # bool: still classified correctly after the attack (its own re-prediction)
    seconds: float
    loss_trace: list[float] = field(default_factory=list)  # mean loss per step over the working batch
    loss_counts: list[int] = field(default_factory=list)   # per-sample losses behind each step's mean
    queries: int = 0             # model evaluations spent (forward passes, counted per sample)

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item()

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()

    @property
    def success(self) -> torch.Tensor:
        """bool: correctly classified clean, misclassified after the attack."""
        return self.clean_correct & ~self.robust


class Attack:
    """Base class. Subclasses set :attr:`name` and :attr:`PARAMS` and implement :meth:`attack_batch`."""

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    #: The attack's parameters; each becomes an attribute of the same name.
    PARAMS: ClassVar[Params] = Params()
    #: "white-box" (uses gradients), "black-box" (scores only) or "transfer": the class's
    #: family. Read :attr:`family`, which an instance may decide (the ART adapter does).
    FAMILY: ClassVar[str] = "white-box"

    def __init__(self, threat: ThreatModel, *, batch_size: int | None = None, seed: int = 0, **params: Any) -> None:
        if not isinstance(threat, ThreatModel):
            raise AttackError(f"{self.name}: threat must be a ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise AttackError(f"{self.name} does not support the {threat.norm} norm (supports {', '.join(self.norms)})")
        values = self.schema().resolve({"batch_size": batch_size, "seed": seed, **params}, AttackError, self.name)
        self.threat = threat
        self.batch_size: int | None = values.pop("batch_size")  # None: pick by device
        self.seed: int = values.pop("seed")
        #: Every parameter's value (declared ones and any the schema lets through), for reports.
        self.settings: dict[str, Any] = values
        for param in self.PARAMS.params:
            setattr(self, param.name, values[param.name])
        self.generator: torch.Generator | None = None
        self._trace_sums: list[torch.Tensor] = []
        self._trace_counts: list[int] = []
        self._queries = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.PARAMS.check_free(cls, Attack)

    @classmethod
    def schema(cls) -> Params:
        """Every parameter the constructor takes: the run's (batch size, seed) and the attack's."""
        return RUN_PARAMS + cls.PARAMS

    @property
    def family(self) -> str:
        return self.FAMILY

    # ---- what subclasses implement -------------------------------------------------
    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Return adversarial candidates for ``x`` (all correctly classified) at ``eps``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Hyperparameters, for reports."""
        return {"norm": self.threat.norm, "batch_size": self.batch_size or "auto", "seed": self.seed, **self.settings}

    def for_masked_gradients(self) -> Attack:
        """This attack as it should run on a model whose input gradients a probe found unusable.

        Most attacks run the same either way (this one). An attack with a cheap first stage that
        escalates only on evidence (``square-check``) returns its full-budget form: unusable
        gradients are that evidence, found before it ran.
        """
        return self

    def batch_for(self, device: torch.device) -> int:
        """The batch size on ``device``: the one given, else :func:`default_batch_size`."""
        return self.batch_size or default_batch_size(device)

    # ---- the contract ----------------------------------------------------------------
    def run(self, model: Any, x: torch.Tensor, y: torch.Tensor) -> list[AttackResult]:
        """Attack every sample at every eps of the threat model (ascending); one result per eps.

        Eps balls are nested, so a sample fooled at a smaller eps stays fooled at a larger
        one and is not attacked again. A result's ``robust`` is this attack's claim, from its
        own re-prediction of each projected candidate (see the module docstring for the
        independent check a benchmark counts).
        """
        module = unwrap(model)
        saved = _module_state(module)  # as_module() switches to eval and freezes parameters
        as_module(module)
        device = model_device(module)
        try:
            x, y = self._check_inputs(x, y, device)
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
            batch = self.batch_for(device)
            clean_correct = predict(module, x, batch) == y
            robust = clean_correct.clone()
            x_adv = x.clone()
            results = []
            for eps in self.threat.epsilons:
                self._trace_sums, self._trace_counts, self._queries = [], [], 0
                start = time.perf_counter()
                todo = robust.nonzero().flatten()
                if eps > 0:
                    for chunk in todo.split(batch):
                        xb, yb = x[chunk], y[chunk]
                        candidate = self.attack_batch(module, xb, yb, eps).detach()
                        candidate = torch.where(torch.isfinite(candidate), candidate, xb)  # a NaN is no attack
                        candidate = self.threat.project(xb, candidate, eps)
                        fooled = predict(module, candidate, batch) != yb
                        x_adv[chunk] = torch.where(per_sample(fooled, candidate), candidate, x_adv[chunk])
                        robust[chunk[fooled]] = False
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                results.append(AttackResult(
                    attack=self.name, eps=eps, x_adv=x_adv.clone(), clean_correct=clean_correct,
                    robust=robust.clone(), seconds=time.perf_counter() - start,
                    loss_trace=self._finish_trace(), loss_counts=list(self._trace_counts), queries=self._queries))
            return results
        finally:
            _restore_module_state(saved)

    def perturb(self, model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples at the threat model's single eps."""
        self.threat.single  # raises for a sweep
        return self.run(model, x, y)[0].x_adv

    # ---- helpers for subclasses --------------------------------------------------------
    def count_queries(self, samples: int) -> None:
        """Count ``samples`` model evaluations (one per sample per forward pass)."""
        self._queries += samples

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None):
        """Per-sample loss, its gradient w.r.t. ``x``, and the logits, in one forward+backward."""
        loss_fn = loss_fn or ce_loss
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            loss = loss_fn(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.count_queries(len(x))
        return loss.detach(), grad.detach(), logits.detach()

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits without gradients (counted as queries, for score-based attacks and checks).

        The forward pass runs under ``torch.inference_mode``, which skips the autograd
        bookkeeping ``no_grad`` still does (version counters, view tracking); the logits
        come back as an ordinary tensor.
        """
        with torch.inference_mode():
            out = model(x)
        self.count_queries(len(x))
        return out.clone()

    def log_loss(self, step: int, loss: torch.Tensor) -> None:
        """Record the per-sample loss at ``step`` (for the loss-trace plot and the optimisation checks)."""
        while len(self._trace_sums) <= step:
            self._trace_sums.append(torch.zeros((), device=loss.device))
            self._trace_counts.append(0)
        self._trace_sums[step] = self._trace_sums[step] + loss.detach().float().sum()
        self._trace_counts[step] += loss.numel()

    def random_point(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """A uniformly random point of the eps ball around each sample (inside the input bounds)."""
        return self.threat.project(x, x + random_in_ball(x, self.threat.norm, eps, self.generator), eps)

    def rand(self, *shape: int, device: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=device)

    def randn(self, *shape: int, device: torch.device) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=device)

    # ---- internals -------------------------------------------------------------------------
    def _finish_trace(self) -> list[float]:
        if not self._trace_sums:
            return []
        sums = torch.stack(self._trace_sums).cpu()
        return [s.item() / max(c, 1) for s, c in zip(sums, self._trace_counts)]

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor, device: torch.device):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise AttackError(f"{self.name}: x and y must be torch tensors")
        if len(x) != len(y) or y.dim() != 1:
            raise AttackError(f"{self.name}: x has {len(x)} samples, y has shape {tuple(y.shape)}")
        if not x.is_floating_point():
            raise AttackError(f"{self.name}: x must be a float tensor, got {x.dtype}")
        x = x.to(device)
        y = y.to(device).long()
        if not torch.isfinite(x).all():
            raise AttackError(f"{self.name}: x contains NaN or Inf")
        lo, hi = self.threat.bounds
        if len(x) and (x.min() < lo or x.max() > hi):
            raise AttackError(f"{self.name}: x lies outside the threat model's bounds [{lo}, {hi}]")
        self.threat.check_sample_shape(tuple(x.shape[1:]))  # an L2 eps beyond the input box's diagonal
        return x, y


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), untargeted; higher means closer to misclassified."""
    sorted_logits, _ = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    top_is_true = sorted_logits[:, -1] == true
    best_other = torch.where(top_is_true, sorted_logits[:, -2], sorted_logits[:, -1])
    return -(true - best_other) / (sorted_logits[:, -1] - sorted_logits[:, -3] + 1e-12)


def default_batch_size(device: torch.device) -> int:
    """Samples per batch when none is given: 256 on a CPU, 1,000 on an accelerator (see above)."""
    return CPU_BATCH_SIZE if device.type == "cpu" else ACCELERATOR_BATCH_SIZE


def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted classes, in batches (default: :func:`default_batch_size`), under inference mode."""
    batch_size = batch_size or default_batch_size(x.device)
    if not len(x):
        return torch.empty(0, dtype=torch.long, device=x.device)
    with torch.inference_mode():
        classes = [model(chunk).argmax(dim=1) for chunk in x.split(batch_size)]
    return torch.cat(classes)  # outside inference mode: an ordinary tensor


def _module_state(model: nn.Module) -> tuple[list[tuple[nn.Module, bool]], list[tuple[torch.Tensor, bool]]]:
    """Each submodule's train/eval mode and each parameter's requires_grad, to restore after an attack."""
    return [(m, m.training) for m in model.modules()], [(p, p.requires_grad) for p in model.parameters()]


def _restore_module_state(saved) -> None:
    modes, grads = saved
    for module, training in modes:  # parents come first, so a child's own mode wins
        if module.training != training:
            try:
                module.train(training)
            except (NotImplementedError, RuntimeError):
                pass  # torch.export modules refuse mode switches
    for param, requires_grad in grads:
        param.requires_grad_(requires_grad)


#: The old name of :func:`~bastion.attacks.toolbox.steepest_ascent`, kept until the training
#: losses (defenses/training/losses.py) import it from the toolbox.
lp_normalize = steepest_ascent
