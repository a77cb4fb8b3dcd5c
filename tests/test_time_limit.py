"""The time limit at an episode end (Pardo et al., 2018): with values bootstrapping through the cut
(``terminal: none``, the default) the agents' state is time-unaware, so the successor ``next_obs`` at an episode
end — whose ``session_index`` is ``max_sessions``, a value never seen as ``s`` — is encoded like an ordinary
mid-episode state with the same history and gap. With ``terminal: episode`` the clock is in the state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retentionrl.agents import make_agent
from retentionrl.nets.state import ContextDetector, FlatEncoder, StateEncoder
from retentionrl.simulator.synthetic import make_synthetic_simulator
from retentionrl.spaces import Obs

SMALL = {"batch_size": 8, "hidden": [8], "state_dim": 8, "token_dim": 8}
ENV = {"max_sessions": 2}  # KuaiSim leave: 5 requests per session, so every episode ends at step 10


@pytest.fixture(scope="module")
def sim():
    return make_synthetic_simulator(n_users=32, n_items=60, seed=0)


def _cut(sim, mode: str = "fusion") -> tuple[Obs, Obs]:
    """(next_obs at an episode end, the same observation one session into the episode)."""
    env = sim.make_env("kuaisim", n_users=4, action_mode=mode, candidates=20 if mode == "items" else None, **ENV)
    obs = env.reset(seed=1)
    gen = torch.Generator().manual_seed(0)
    while True:
        width = 7 if mode == "fusion" else len(obs.candidates)
        out = env.step(torch.rand(4, width, generator=gen))
        obs = out.obs
        if out.episode_end.any():
            assert out.episode_end.all() and (out.next_obs.session_index == ENV["max_sessions"]).all()
            mid = out.next_obs.clone()
            mid.session_index[:] = 1
            return out.next_obs, mid


def _encoders(agent) -> list[nn.Module]:
    mods = [m for v in vars(agent).values() if isinstance(v, nn.Module) for m in v.modules()]
    return [m for m in mods if isinstance(m, (StateEncoder, ContextDetector, FlatEncoder))]


@pytest.mark.parametrize("algo, cfg, mode", [
    ("td3", SMALL, "fusion"),
    ("td3", {**SMALL, "encoder": "flat"}, "fusion"),
    ("sac", SMALL, "fusion"),
    ("rlur", SMALL, "fusion"),
    ("gfn4retention", {}, "fusion"),
    ("dqn", SMALL, "items"),
])
def test_successor_at_the_cut_is_encoded_like_a_mid_episode_state(sim, algo, cfg, mode):
    agent = make_agent(algo, sim, cfg, seed=0, env="kuaisim")
    cut, mid = _cut(sim, mode)
    encs = _encoders(agent)
    assert encs
    with torch.no_grad():
        for enc in encs:
            torch.testing.assert_close(enc(cut), enc(mid), rtol=0, atol=0)


@pytest.mark.parametrize("encoder", ["transformer", "flat"])
def test_terminal_episode_keeps_the_clock(sim, encoder):
    """Time-aware state, cut terminal: the critic can tell the last request of an episode from the others."""
    agent = make_agent("td3", sim, {**SMALL, "terminal": "episode", "encoder": encoder}, seed=0)
    cut, mid = _cut(sim)
    with torch.no_grad():
        assert not torch.equal(agent.q1.enc(cut), agent.q1.enc(mid))

