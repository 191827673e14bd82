"""Independent plain-torch/numpy re-implementation of the official DiT and SiT code, used as
ground truth in tests.

Sources (read, then rewritten compactly; nothing here imports ``nag_engine`` or ``timm``):

- facebookresearch/DiT: ``models.py`` (DiT), ``diffusion/gaussian_diffusion.py``
  (``GaussianDiffusion``: ``p_sample``, ``ddim_sample``, ``_extract_into_tensor``) and
  ``diffusion/respace.py`` (``space_timesteps``, ``SpacedDiffusion``, ``_WrappedModel``).
- willisma/SiT: ``models.py`` (SiT = DiT whose forward drops the sigma half) and
  ``transport/{path,transport,integrators}.py`` (linear ``ICPlan``, velocity model, ODE).

The ADM loops keep the official numerics: float64 numpy coefficient tables, each looked up at
the (respaced) timestep and cast with ``.float()`` as ``_extract_into_tensor`` does, with all
tensor arithmetic in float32 in the official order of operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int], torch.Tensor]

# --------------------------------------------------------------------------------------------
# DiT / SiT model
# --------------------------------------------------------------------------------------------


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE's 1-D sin-cos embedding of ``pos`` (float64): ``[sin(pos*w), cos(pos*w)]``."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def official_pos_embed(hidden_size: int, grid_size: int) -> torch.Tensor:
    """The fixed 2-D sin-cos ``pos_embed`` of DiT, shape [1, grid_size**2, hidden_size], float32.

    Tokens are row-major (row i, column j). As in MAE/DiT, ``np.meshgrid(grid_w, grid_h)`` puts
    the *column* index first, so the first half of the channels encodes the column j and the
    second half the row i.
    """
    assert hidden_size % 4 == 0
    rows, cols = np.meshgrid(
        np.arange(grid_size, dtype=np.float32),
        np.arange(grid_size, dtype=np.float32),
        indexing="ij",
    )
    emb = np.concatenate(
        [_sincos_1d(hidden_size // 2, cols), _sincos_1d(hidden_size // 2, rows)], axis=1
    )
    return torch.from_numpy(emb).float().unsqueeze(0)


def official_dit_state_dict(
    *,
    input_size: int = 8,
    patch_size: int = 2,
    in_channels: int = 4,
    hidden_size: int = 32,
    depth: int = 2,
    num_heads: int = 2,
    mlp_ratio: float = 4.0,
    num_classes: int = 10,
    learn_sigma: bool = True,
    class_dropout: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random float32 weights with exactly the keys and shapes of ``DiT(...).state_dict()``.

    Unlike the official init (zeroed adaLN and final layer), every tensor is random and non-zero,
    scaled so that the output is O(0.1..1) and depends clearly on x, t and y. With
    ``class_dropout`` the label table has ``num_classes + 1`` rows (the last is the null class).
    ``num_heads`` only has to divide ``hidden_size``; it is not stored in the state dict.
    """
    assert hidden_size % num_heads == 0 and input_size % patch_size == 0
    gen = torch.Generator().manual_seed(seed)
    d, p, c = hidden_size, patch_size, in_channels
    out_c = 2 * c if learn_sigma else c
    mlp_hidden = int(d * mlp_ratio)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * std

    sd: dict[str, torch.Tensor] = {
        "pos_embed": official_pos_embed(d, input_size // p),
        "x_embedder.proj.weight": rnd(d, c, p, p, std=0.2),
        "x_embedder.proj.bias": rnd(d, std=0.05),
        "t_embedder.mlp.0.weight": rnd(d, 256, std=0.1),
        "t_embedder.mlp.0.bias": rnd(d, std=0.05),
        "t_embedder.mlp.2.weight": rnd(d, d, std=0.2),
        "t_embedder.mlp.2.bias": rnd(d, std=0.05),
        "y_embedder.embedding_table.weight": rnd(num_classes + int(class_dropout), d, std=0.5),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "attn.qkv.weight"] = rnd(3 * d, d, std=0.1)
        sd[b + "attn.qkv.bias"] = rnd(3 * d, std=0.05)
        sd[b + "attn.proj.weight"] = rnd(d, d, std=0.1)
        sd[b + "attn.proj.bias"] = rnd(d, std=0.05)
        sd[b + "mlp.fc1.weight"] = rnd(mlp_hidden, d, std=0.1)
        sd[b + "mlp.fc1.bias"] = rnd(mlp_hidden, std=0.05)
        sd[b + "mlp.fc2.weight"] = rnd(d, mlp_hidden, std=0.1)
        sd[b + "mlp.fc2.bias"] = rnd(d, std=0.05)
        sd[b + "adaLN_modulation.1.weight"] = rnd(6 * d, d, std=0.15)
        sd[b + "adaLN_modulation.1.bias"] = rnd(6 * d, std=0.05)
    sd["final_layer.linear.weight"] = rnd(p * p * out_c, d, std=0.1)
    sd["final_layer.linear.bias"] = rnd(p * p * out_c, std=0.05)
    sd["final_layer.adaLN_modulation.1.weight"] = rnd(2 * d, d, std=0.15)
    sd["final_layer.adaLN_modulation.1.bias"] = rnd(2 * d, std=0.05)
    return sd


def official_timestep_embedding(
    t: torch.Tensor, dim: int = 256, max_period: int = 10000
) -> torch.Tensor:
    """``TimestepEmbedder.timestep_embedding``: ``cat([cos(t f), sin(t f)])`` (cos first)."""
    half = dim // 2
    steps = torch.arange(start=0, end=half, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * steps / half).to(device=t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _linear(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, state[name + ".weight"], state[name + ".bias"])


def _norm(x: torch.Tensor) -> torch.Tensor:
    """``nn.LayerNorm(elementwise_affine=False, eps=1e-6)``."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _attention(
    state: dict[str, torch.Tensor], pre: str, x: torch.Tensor, heads: int
) -> torch.Tensor:
    """timm ``Attention(qkv_bias=True)`` written with an explicit matmul + softmax."""
    b, n, d = x.shape
    qkv = _linear(state, pre + "qkv", x).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = torch.softmax((q * (d // heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, d)
    return _linear(state, pre + "proj", out)


def official_dit_forward(
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    *,
    num_heads: int,
    patch_size: int,
    learn_sigma: bool = True,
) -> torch.Tensor:
    """``DiT.forward(x, t, y)`` (eval mode, no label dropout) from a DiT state dict.

    ``t`` [B] is fed to the sinusoidal embedding as is (``.float()``; the DiT diffusion code
    passes the original integer DDPM timestep 0..999); ``y`` [B] may hold the null id
    ``num_classes``. Returns all ``out_channels`` (2 * C with ``learn_sigma``: eps then the
    variance interpolation values).
    """
    p = patch_size
    h = x.shape[-2] // p
    tok = F.conv2d(x, state["x_embedder.proj.weight"], state["x_embedder.proj.bias"], stride=p)
    tok = tok.flatten(2).transpose(1, 2) + state["pos_embed"]
    temb = official_timestep_embedding(t)
    temb = _linear(state, "t_embedder.mlp.2", F.silu(_linear(state, "t_embedder.mlp.0", temb)))
    c = temb + F.embedding(y.long(), state["y_embedder.embedding_table.weight"])
    sc = F.silu(c)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        pre = f"blocks.{i}."
        mod = _linear(state, pre + "adaLN_modulation.1", sc).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        a = _attention(state, pre + "attn.", _modulate(_norm(tok), shift_msa, scale_msa), num_heads)
        tok = tok + gate_msa.unsqueeze(1) * a
        hid = _linear(state, pre + "mlp.fc1", _modulate(_norm(tok), shift_mlp, scale_mlp))
        m = _linear(state, pre + "mlp.fc2", F.gelu(hid, approximate="tanh"))
        tok = tok + gate_mlp.unsqueeze(1) * m
    shift, scale = _linear(state, "final_layer.adaLN_modulation.1", sc).chunk(2, dim=1)
    out = _linear(state, "final_layer.linear", _modulate(_norm(tok), shift, scale))
    c_out = x.shape[1] * (2 if learn_sigma else 1)
    assert out.shape[-1] == p * p * c_out and out.shape[1] == h * h
    out = out.reshape(out.shape[0], h, h, p, p, c_out)
    out = torch.einsum("nhwpqc->nchpwq", out)
    return out.reshape(out.shape[0], c_out, h * p, h * p)


def official_sit_forward(
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    *,
    num_heads: int,
    patch_size: int,
    learn_sigma: bool = True,
) -> torch.Tensor:
    """``SiT.forward(x, t, y)``: the DiT network, keeping only the first C output channels.

    SiT's model code is DiT's, except that with ``learn_sigma`` (the default, also for the
    released SiT-XL/2) the forward does ``x, _ = x.chunk(2, dim=1)``: the output is the velocity
    only, shape like ``x``. The time ``t`` is SiT's continuous time in [0, 1], fed to the same
    sinusoidal embedding (max_period 10000) WITHOUT any scaling (no ``* 1000``).

    SiT time convention (linear path ``ICPlan``, velocity model): ``t = 0`` is pure noise
    ``x0 ~ N(0, I)``, ``t = 1`` is data ``x1``; ``x_t = t * x1 + (1 - t) * x0`` and the model
    predicts the velocity ``d x_t / dt = x1 - x0`` (data minus noise). Sampling integrates the
    probability-flow ODE forward in t, from 0 (noise) to 1 (data).
    """
    out = official_dit_forward(
        state, x, t, y, num_heads=num_heads, patch_size=patch_size, learn_sigma=learn_sigma
    )
    if learn_sigma:
        out, _ = out.chunk(2, dim=1)
    return out


def official_forward_with_cfg(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    cfg_scale: float,
) -> torch.Tensor:
    """``forward_with_cfg`` of DiT and SiT (identical code), around ``forward(x, t, y)``.

    The batch is [cond half; uncond half] (``y`` of the second half is the null class). The
    first half of ``x`` is duplicated, and guidance ``uncond + s * (cond - uncond)`` is applied
    to the first THREE output channels only ("for exact reproducibility"); the other channels
    (DiT: the 4th eps channel and the sigma channels; SiT: the 4th velocity channel) are returned
    unguided, per half.
    """
    half = x[: len(x) // 2]
    out = forward(torch.cat([half, half], dim=0), t, y)
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
    guided = uncond + cfg_scale * (cond - uncond)
    return torch.cat([torch.cat([guided, guided], dim=0), rest], dim=1)


# --------------------------------------------------------------------------------------------
# ADM / DiT Gaussian diffusion
# --------------------------------------------------------------------------------------------


def adm_space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """Official ``space_timesteps``, returned sorted ascending.

    ``"N[,M,...]"``: the original steps are split into equal sections (the first
    ``num_timesteps % len`` sections one longer), each strided by the float
    ``(size - 1) / (count - 1)`` accumulated in ``cur_idx`` and rounded with Python's ``round``.
    ``"ddimN"``: the smallest integer stride i with ``len(range(0, T, i)) == N``.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {want} steps with an integer stride")
        section_counts = [int(s) for s in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.add(start + round(cur))
            cur += stride
        start += size
    return sorted(steps)


def adm_betas(num_timesteps: int = 1000) -> np.ndarray:
    """The ``"linear"`` named schedule: linspace(scale * 1e-4, scale * 0.02), scale = 1000 / T."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


class _Tables:
    """The float64 tables of a ``SpacedDiffusion`` (numpy), plus its timestep map."""

    def __init__(self, respacing: str, betas: np.ndarray | None) -> None:
        base = adm_betas() if betas is None else np.asarray(betas, dtype=np.float64)
        keep = set(adm_space_timesteps(len(base), respacing))
        last, new_betas, self.timestep_map = 1.0, [], []
        for i, ac in enumerate(np.cumprod(1.0 - base)):
            if i in keep:
                new_betas.append(1 - ac / last)
                last = ac
                self.timestep_map.append(i)
        b = np.array(new_betas, dtype=np.float64)
        self.betas = b
        self.n = len(b)
        ac = np.cumprod(1.0 - b)
        acp = np.append(1.0, ac[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, acp
        self.sqrt_recip_ac = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_ac = np.sqrt(1.0 / ac - 1)
        self.post_var = b * (1.0 - acp) / (1.0 - ac)
        self.post_logvar_clipped = (
            np.log(np.append(self.post_var[1], self.post_var[1:])) if self.n > 1 else np.array([])
        )
        self.coef1 = b * np.sqrt(acp) / (1.0 - ac)
        self.coef2 = (1.0 - acp) * np.sqrt(1.0 - b) / (1.0 - ac)

    def variance(self, var_type: str) -> tuple[np.ndarray, np.ndarray]:
        """(variance, log variance) tables of ``ModelVarType.FIXED_SMALL`` / ``FIXED_LARGE``."""
        if var_type == "fixed_small":
            return self.post_var, self.post_logvar_clipped
        if var_type == "fixed_large":
            large = np.append(self.post_var[1], self.betas[1:])
            return large, np.log(large)
        raise ValueError(f"unknown var_type {var_type!r}")


def _extract(arr: np.ndarray, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``_extract_into_tensor``: float64 lookup, ``.float()``, broadcast to ``shape``."""
    res = torch.from_numpy(arr).to(device=t.device)[t].float()
    while res.dim() < len(shape):
        res = res[..., None]
    return res + torch.zeros(shape, device=t.device)


def _eps_and_xstart(
    tab: _Tables, eps_fn: ModelFn, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model call through ``_WrappedModel`` and ``_predict_xstart_from_eps``."""
    orig_t = torch.tensor(tab.timestep_map, device=t.device, dtype=t.dtype)[t]
    eps = eps_fn(x, orig_t)
    assert eps.shape == x.shape, "eps_fn must return eps shaped like x (drop sigma channels)"
    xstart = _extract(tab.sqrt_recip_ac, t, x.shape) * x
    xstart = xstart - _extract(tab.sqrt_recipm1_ac, t, x.shape) * eps
    return eps, xstart


def _noise(noise_fn: NoiseFn | None, k: int, x: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(x) if noise_fn is None else noise_fn(k)


def adm_p_sample_loop(
    eps_fn: ModelFn,
    noise: torch.Tensor,
    respacing: str,
    *,
    var_type: str,
    noise_fn: NoiseFn | None,
    betas: np.ndarray | None = None,
    return_all: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """Official ``p_sample_loop`` of ``create_diffusion(respacing)`` with a fixed variance.

    ``eps_fn(x, t)`` gets the ORIGINAL integer timesteps (long [B]; ``_WrappedModel`` maps the
    respaced index, rescale_timesteps off) and returns eps shaped like x. ``var_type`` is
    ``"fixed_small"`` (posterior variance; log clipped at index 0 to index 1's value) or
    ``"fixed_large"`` (``append(posterior_variance[1], betas[1:])``), clip_denoised=False.
    ``noise_fn(k)`` gives the noise of loop iteration k (k = 0 is the highest-noise step); None
    draws ``torch.randn_like`` after the model call as the official code does. ``betas``
    defaults to the linear 1000-step schedule. Returns x_0, or with ``return_all`` the list
    [x_T, state after iteration 0, ...].
    """
    tab = _Tables(respacing, betas)
    _, logvar_table = tab.variance(var_type)
    x, states = noise, [noise]
    for k, i in enumerate(reversed(range(tab.n))):
        t = torch.tensor([i] * x.shape[0], device=x.device)
        with torch.no_grad():
            _, xstart = _eps_and_xstart(tab, eps_fn, x, t)
            mean = _extract(tab.coef1, t, x.shape) * xstart + _extract(tab.coef2, t, x.shape) * x
            log_var = _extract(logvar_table, t, x.shape)
            z = _noise(noise_fn, k, x)
            mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
            x = mean + mask * torch.exp(0.5 * log_var) * z
        states.append(x)
    return states if return_all else x


def adm_ddim_sample_loop(
    eps_fn: ModelFn,
    noise: torch.Tensor,
    respacing: str,
    *,
    eta: float = 0.0,
    noise_fn: NoiseFn | None = None,
    betas: np.ndarray | None = None,
    return_all: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """Official ``ddim_sample_loop`` of ``create_diffusion(respacing)`` (clip_denoised=False).

    Per step: pred_xstart from the model eps, eps re-derived by ``_predict_eps_from_xstart``,
    ``sigma = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)`` with the
    spaced ``alphas_cumprod(_prev)``, ``x = xstart sqrt(abar_prev) + sqrt(1 - abar_prev -
    sigma^2) eps + [i != 0] sigma z``. Arguments as in ``adm_p_sample_loop``.
    """
    tab = _Tables(respacing, betas)
    x, states = noise, [noise]
    for k, i in enumerate(reversed(range(tab.n))):
        t = torch.tensor([i] * x.shape[0], device=x.device)
        with torch.no_grad():
            _, xstart = _eps_and_xstart(tab, eps_fn, x, t)
            eps = (_extract(tab.sqrt_recip_ac, t, x.shape) * x - xstart) / _extract(
                tab.sqrt_recipm1_ac, t, x.shape
            )
            abar = _extract(tab.alphas_cumprod, t, x.shape)
            abar_prev = _extract(tab.alphas_cumprod_prev, t, x.shape)
            sigma = (
                eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
            )
            z = _noise(noise_fn, k, x)
            mean = xstart * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
            mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
            x = mean + mask * sigma * z
        states.append(x)
    return states if return_all else x


# --------------------------------------------------------------------------------------------
# SiT ODE
# --------------------------------------------------------------------------------------------


def sit_euler_sample(
    v_fn: ModelFn, noise: torch.Tensor, num_steps: int, *, return_all: bool = False
) -> torch.Tensor | list[torch.Tensor]:
    """Euler integration of SiT's probability-flow ODE, noise (t = 0) to data (t = 1).

    For the linear path with a velocity model ``check_interval`` gives t0 = 0, t1 = 1
    (train_eps = sample_eps = 0). Uses ``t = linspace(0, 1, num_steps + 1)`` (float32) and
    ``x_{k+1} = x_k + (t_{k+1} - t_k) * v_fn(x_k, t_k * ones(B))``: ``num_steps`` model calls.
    Note the official ``Sampler.sample_ode(num_steps=N)`` builds ``linspace(t0, t1, N)``, i.e.
    N grid points and N - 1 Euler steps, which is ``sit_euler_sample(..., N - 1)`` here.
    Returns the final state, or with ``return_all`` all num_steps + 1 states (noise first).
    """
    ts = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float32, device=noise.device)
    x, states = noise, [noise]
    for k in range(num_steps):
        t = torch.ones(x.shape[0], device=x.device, dtype=torch.float32) * ts[k]
        with torch.no_grad():
            x = x + (ts[k + 1] - ts[k]) * v_fn(x, t)
        states.append(x)
    return states if return_all else x
