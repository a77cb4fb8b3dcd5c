"""Agents are built from the environment they act in (its EnvConfig and the bundle's D), not from KuaiSim's
constants: on a simulator with D = 30 a 30-day gap is the top of the scale, not 3x it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retentionrl.agents import make_agent
from retentionrl.errors import RetentionRLError
from retentionrl.nets.state import ContextDetector, FlatEncoder, StateEncoder
from retentionrl.simulator.env import preset
from retentionrl.simulator.synthetic import make_synthetic_simulator

SMALL = {"batch_size": 8, "hidden": [8], "state_dim": 8, "token_dim": 8}
D = 30


@pytest.fixture(scope="module")
def sim30():
    return make_synthetic_simulator(n_users=16, n_items=40, seed=0, max_return_day=D)


def _modules(agent) -> list[nn.Module]:
    return [m for v in vars(agent).values() if isinstance(v, nn.Module) for m in v.modules()]


def _context_inputs(agent, obs) -> list[torch.Tensor]:
    """The context columns every transformer encoder / context detector of ``agent`` is fed for ``obs``: the
    last ``width`` columns of its head's input, captured with a hook (what the network really sees)."""
    seen: list[torch.Tensor] = []
    hooks = []
    for m in _modules(agent):
        if isinstance(m, StateEncoder):
            hooks.append(m.head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())))
        elif isinstance(m, ContextDetector):
            hooks.append(m.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())))
    agent.act(obs)
    for h in hooks:
        h.remove()
    return seen


def _obs_at(sim, session_index: int, step: int, days: float, **env):
    obs = sim.make_env("kuaisim", n_users=2, **env).reset(seed=0)
    obs.session_index[:] = session_index
    obs.step_in_session[:] = step
    obs.days_since_last[:] = days
    return obs


@pytest.mark.parametrize("algo, cfg, expected", [
    ("td3", SMALL, [0.5, 1.0, 0.0]),
    ("td3", {**SMALL, "terminal": "episode"}, [2 / 4, 0.5, 1.0, 0.0]),  # time-aware: the clock comes first
    ("gfn4retention", {}, [0.5, 1.0, 0.0]),
    ("rlur", SMALL, [0.5, 1.0, 0.0]),
])
def test_context_features_are_scaled_by_the_envs_spec(sim30, algo, cfg, expected):
    """days_since_last = 30 on a D = 30 simulator is 1.0 (KuaiSim's constant 10 made it 3.0); 5 requests into a
    session with step scale 10 is 0.5; not the first session; session 2 of an env with max_sessions 4 is 0.5."""
    agent = make_agent(algo, sim30, cfg, seed=0, env=preset("kuaisim", max_sessions=4))
    obs = _obs_at(sim30, session_index=2, step=5, days=30.0)
    seen = _context_inputs(agent, obs)
    assert seen, "no transformer encoder found"
    for x in seen:
        torch.testing.assert_close(x[:, -len(expected):], torch.tensor([expected] * 2))


def test_env_max_return_day_overrides_the_bundles(sim30):
    agent = make_agent("td3", sim30, SMALL, seed=0, env=preset("kuaisim", max_return_day=20))
    enc = agent.actor.enc
    assert (enc.context.max_sessions, enc.context.max_return_day) == (6, 20)
    x = _context_inputs(agent, _obs_at(sim30, 0, 0, 10.0, max_return_day=20))[0]
    assert x[0, -3:].tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_default_env_is_the_kuaisim_preset_with_the_bundles_D(sim30):
    agent = make_agent("sac", sim30, SMALL, seed=0)
    ctx = agent.actor.enc.context
    assert (ctx.max_sessions, ctx.max_return_day, ctx.step_scale) == (6, D, 10.0)
    with pytest.raises(RetentionRLError, match="env must be an EnvConfig or a preset name"):
        make_agent("sac", sim30, SMALL, seed=0, env={"max_sessions": 4})
    with pytest.raises(RetentionRLError, match="unknown simulator preset"):
        make_agent("sac", sim30, SMALL, seed=0, env="kuaisimm")


def test_flat_encoder_layout_is_the_envs(sim30):
    """``encoder: flat`` sees the gym adapter's vector of the same env (K, sessions, D)."""
    from retentionrl.simulator.gym import observation_names
    from retentionrl.spaces import FlatLayout

    agent = make_agent("td3", sim30, {**SMALL, "encoder": "flat"}, seed=0, env=preset("kuaisim", max_sessions=3, slate_size=4))
    assert isinstance(agent.actor.enc, FlatEncoder)
    env = sim30.make_env("kuaisim", n_users=2, max_sessions=3, slate_size=4)
    assert agent.actor.enc.layout == FlatLayout.from_env(env)
    obs = _obs_at(sim30, 1, 0, 30.0, max_sessions=3, slate_size=4)
    x = agent.actor.enc(obs)
    assert x[0, observation_names(env).index("days_since_last")].item() == pytest.approx(1.0)


def test_the_training_loop_and_load_trained_build_the_agent_for_the_runs_env(sim30, tmp_path):
    from retentionrl.training import load_trained
    from retentionrl.training.online import TrainConfig, train

    cfg = TrainConfig(algo="td3", seed=0, n_users=4, total_steps=3, warmup_steps=1, log_every=10, eval_every=100,
                      checkpoint_every=100, env={"max_sessions": 3, "max_return_day": 15},
                      eval={"n_users": 2, "n_episodes": 2, "seeds": [1]}, agent=SMALL)
    train(cfg, sim30, tmp_path / "r", progress=False)
    _, agent = load_trained(str(tmp_path / "r"), sim30)
    ctx = agent.actor.enc.context
    assert (ctx.max_sessions, ctx.max_return_day) == (3, 15)
