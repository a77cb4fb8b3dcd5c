"""GFN4Retention (Liu et al., KDD'24, "Modeling User Retention through Generative Flow Networks").

A session is a trajectory of a generative flow network. The forward policy ``P_F(a|s)`` is the Gaussian actor
over fusion weights; ``F_ret(s)`` estimates the flow of retention reward through a state; the backward network
``P_B(s_t | s_{t+1}) = sigmoid(MLP([z_t, a_t, z_{t+1}]))``. The immediate rewards enter as a non-parametric
flow ``F_imm(s_t) = exp(lam * sum_{i<t} r_i)``, so the integrated terminal reward is
``R = R_ret * exp(lam * sum_t r_t)`` with ``R_ret = 1/d`` (d = return day). Refined detailed balance, per
transition of a replay batch (N,)::

    inside a session:   (log F(s_t) + log(P_F(a_t|s_t) + b_f) - log F(s_{t+1}) - log(P_B + b_b) - lam * r_t)^2
    at the session end: (log F(s_T) + log(P_F(a_T|s_T) + b_f) - log(R_ret + b_r) - log(P_B + b_b) - lam * r_T)^2

The session's last request a_T is a detailed-balance step into the terminal state s_{T+1}, whose flow is the
retention reward, ``log F(s_{T+1}) := log(R_ret + b_r)`` (``terminal_step: transition``, the default): the
action that ended the session gets a P_F gradient, although the return law depends on its reward.
``terminal_step: state`` is the earlier form, which anchors the flow of the state *before* the last request,
``(log F(s_T) - log(R_ret + b_r))^2``, so a_T and r_T enter no loss (1 request in 5 under the KuaiSim preset).

The loss is the batch mean; one Adam step updates the policy (with the shared state encoder), the flow and the
backward network at their own learning rates. The state is ``[StateEncoder(obs), ContextDetector(obs)]``: the
transformer over the history plus the DNN context-detecting module (``context_module: false`` is the paper's
NCD ablation). ``immediate: none`` is NIF (retention reward only, i.e. lam = 0); ``immediate: terminal`` is SIF
(the session's summed immediate reward only enters the terminal target, ``log(R_ret + b_r) + lam * sum_{t<=T} r_t``,
``sum_{t<T}`` with ``terminal_step: state``: the same rewards the full model spreads over its steps, so the
ablation moves where they enter, not which).

Choices where the text is ambiguous (``docs/methods.md``): P_F is the density of the pre-squash Gaussian at
``u = atanh(a)``, taken per action dimension (the geometric mean over the 7 dimensions), so that it is O(1) like
the paper's offsets b_f, b_b ~ 1 — the joint 7-D density is either far below b_f (no learning signal) or far
above it. The reward offset is 0.6 (appendix A's text; its table says 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from retentionrl.agents.base import Agent, TorchAgent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import (
    AgentSpec,
    gaussian_head,
    gaussian_log_density,
    gradient_step,
    squashed_sample,
)
from retentionrl.nets.encoders import mlp
from retentionrl.nets.optim import adam
from retentionrl.nets.state import ContextDetector, StateEncoder
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, cat_obs, obs_from_batch


@dataclass
class GFN4RetentionConfig:
    lam: float = 1.0  # balance of immediate rewards (the paper's lambda)
    forward_offset: float = 1.0  # b_f
    backward_offset: float = 1.0  # b_b
    reward_offset: float = 0.6  # b_r
    flow_lr: float = 2e-5
    forward_lr: float = 1e-4
    backward_lr: float = 1e-4
    batch_size: int = 128
    hidden: list[int] = field(default_factory=lambda: [128])
    state_dim: int = 64
    token_dim: int = 32
    heads: int = 4
    context_dim: int = 32
    context_module: bool = True  # False: NCD
    immediate: Literal["step", "terminal", "none"] = "step"  # terminal: SIF, none: NIF
    terminal_step: Literal["transition", "state"] = "transition"  # state: the old anchor on s_T (see above)


def detailed_balance_loss(
    log_flow: Tensor, log_pf: Tensor, log_flow_next: Tensor, p_back: Tensor, reward: Tensor, session_end: Tensor,
    retention: Tensor, session_reward: Tensor, *, lam: float, b_f: float, b_b: float, b_r: float,
    immediate: str = "step", terminal_step: str = "transition",
) -> Tensor:
    """Per-transition refined detailed-balance loss (N,).

    log_flow, log_flow_next: log F_ret(s_t), log F_ret(s_{t+1}) (the latter unused at a session end);
    log_pf: log P_F(a_t|s_t); p_back: P_B in (0, 1); reward: r_t; session_end: bool; retention: R_ret at a
    session end; session_reward: sum of r over the session up to and including r_t (used by
    ``immediate="terminal"`` only). All (N,).
    """
    step_r = lam * reward if immediate == "step" else torch.zeros_like(reward)
    log_pf_off = torch.logaddexp(log_pf, torch.full_like(log_pf, math.log(b_f))) if b_f > 0 else log_pf
    target = torch.log(retention + b_r)  # log F of the terminal state
    if immediate == "terminal":  # SIF: every reward the full model's steps see, in the terminal target instead
        target = target + lam * (session_reward if terminal_step == "transition" else session_reward - reward)
    if terminal_step == "state":  # the old form: anchor s_T itself; a_T and r_T enter nothing
        inside = log_flow + log_pf_off - log_flow_next - torch.log(p_back + b_b) - step_r
        return torch.where(session_end, log_flow - target, inside).pow(2)
    log_flow_next = torch.where(session_end, target, log_flow_next)
    return (log_flow + log_pf_off - log_flow_next - torch.log(p_back + b_b) - step_r).pow(2)


class GFNNets(nn.Module):
    """State ``z = [StateEncoder, ContextDetector]`` (N, Z); heads: policy (mu, log-std), log-flow, backward."""

    def __init__(self, spec: AgentSpec, cfg: GFN4RetentionConfig) -> None:
        super().__init__()
        A = spec.n_behaviours
        self.enc = StateEncoder(spec.user_cards, spec.n_user_num, spec.n_items, cfg.token_dim, spec.window,
                                out_dim=cfg.state_dim, heads=cfg.heads, context=spec.context())
        self.ctx = (ContextDetector(spec.user_cards, spec.n_user_num, spec.n_items, spec.window,
                                    out_dim=cfg.context_dim, context=spec.context())
                    if cfg.context_module else None)
        Z = cfg.state_dim + (cfg.context_dim if cfg.context_module else 0)
        self.policy = mlp([Z, *cfg.hidden, 2 * A])
        self.flow = mlp([Z, *cfg.hidden, 1])
        self.backward_net = mlp([2 * Z + A, *cfg.hidden, 1])

    def state(self, obs: Obs) -> Tensor:
        z = self.enc(obs)
        return z if self.ctx is None else torch.cat([z, self.ctx(obs)], 1)

    def pi(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return gaussian_head(self.policy(z))


def per_dim_log_density(mu: Tensor, log_std: Tensor, action: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean over dimensions of log N(atanh(a); mu, sigma): (N, A) -> (N,). See the module docstring."""
    return gaussian_log_density(torch.atanh(action.clamp(-1 + eps, 1 - eps)), mu, log_std).mean(1)


class GFN4Retention(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("nets", "opt")

    def __init__(self, spec: AgentSpec, cfg: GFN4RetentionConfig, seed: int = 0) -> None:
        if min(cfg.forward_offset, cfg.backward_offset, cfg.reward_offset) < 0:
            raise RetentionRLError("agent offsets (forward_offset, backward_offset, reward_offset) must be >= 0")
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.nets = GFNNets(spec, cfg)
        n = self.nets
        forward = [*n.enc.parameters(), *n.policy.parameters(), *(n.ctx.parameters() if n.ctx is not None else [])]
        self.opt = adam([
            {"params": forward, "lr": cfg.forward_lr},
            {"params": n.flow.parameters(), "lr": cfg.flow_lr},
            {"params": n.backward_net.parameters(), "lr": cfg.backward_lr},
        ])
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7): a forward-policy sample when exploring, else ``tanh(mu)``."""
        mu, log_std = self.nets.pi(self.nets.state(obs))
        return squashed_sample(mu, log_std, self.gen)[0] if explore else torch.tanh(mu)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg, n = self.cfg, self.nets
        N = batch["reward"].shape[0]
        # s and s' through the encoders in one pass of 2N rows (half the ops of two passes).
        both = cat_obs(obs_from_batch(batch), obs_from_batch(batch, "next_"))
        z_all = n.state(both)
        z, z2 = z_all[:N], z_all[N:]
        log_f_all = n.flow(z_all).squeeze(1)
        mu, log_std = n.pi(z)
        a = batch["action"]
        p_back = torch.sigmoid(n.backward_net(torch.cat([z, a, z2], 1)).squeeze(1))
        end = batch["session_end"]
        retention = 1.0 / batch["return_day"].clamp(min=1).float()  # R_ret = 1/d (only read at session ends)
        loss = detailed_balance_loss(
            log_f_all[:N], per_dim_log_density(mu, log_std, a), log_f_all[N:], p_back, batch["reward"], end,
            retention, batch["session_reward"], lam=cfg.lam,
            b_f=cfg.forward_offset, b_b=cfg.backward_offset, b_r=cfg.reward_offset, immediate=cfg.immediate,
            terminal_step=cfg.terminal_step,
        )
        info = {"db_loss": gradient_step(self.opt, loss.mean()), "log_flow": float(log_f_all[:N].detach().mean()),
                "policy_std": float(log_std.detach().exp().mean()), "p_back": float(p_back.detach().mean())}
        self.n_updates += 1
        return info


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> Agent:
    """Registry entry: ``AGENTS["gfn4retention"] = gfn4retention.build``."""
    from retentionrl.config import from_dict

    return GFN4Retention(agent_spec(sim, env), from_dict(GFN4RetentionConfig, cfg, "agent"), seed=seed)
