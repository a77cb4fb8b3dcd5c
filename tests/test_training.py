"""Training loop: run directory contents, resume = uninterrupted run, agents learn on the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import td3_config

from retentionrl.errors import RetentionRLError
from retentionrl.training.online import TrainConfig, train

EVAL = {"n_users": 16, "n_episodes": 16, "seeds": [101, 102]}


def _cfg(**kw) -> TrainConfig:
    return td3_config(40, 32, 10, **{"seed": 3, "n_users": 8, "eval_users": 16, "eval_seeds": [101, 102], **kw})


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_and_resume_matches_uninterrupted(tiny_sim, tmp_path):
    from retentionrl.evaluation.protocol import evaluate_policy
    from retentionrl.training import load_trained

    full = tmp_path / "full"
    summary = train(_cfg(), tiny_sim, full, progress=False)
    assert sorted(p.name for p in full.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "summary.json"]
    # The summary's evaluation is the last eval record, and the saved final policy scores it again exactly.
    last = [r for r in _records(full) if r["event"] == "eval"][-1]
    assert last["step"] == 40 and summary["eval"] == {k: v for k, v in last.items() if k not in ("step", "event", "time")}
    _, agent = load_trained(str(full), tiny_sim)
    assert evaluate_policy(agent, tiny_sim, _cfg().eval_config())["mean"] == summary["eval"]
    assert str(tmp_path) not in (full / "config.yaml").read_text() + (full / "summary.json").read_text()

    part = tmp_path / "part"
    assert train(_cfg(), tiny_sim, part, progress=False, stop_after=25) is None
    resumed = train(_cfg(), tiny_sim, part, resume=True, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(_records(part)) == strip(_records(full))
    assert resumed["eval"] == summary["eval"]


def test_resume_with_a_different_config_is_an_error(tiny_sim, tmp_path):
    train(_cfg(total_steps=20), tiny_sim, tmp_path / "r", progress=False)
    with pytest.raises(RetentionRLError, match="different config .*total_steps"):
        train(_cfg(total_steps=30), tiny_sim, tmp_path / "r", resume=True, progress=False)
    with pytest.raises(RetentionRLError, match="already holds a run"):
        train(_cfg(total_steps=20), tiny_sim, tmp_path / "r", progress=False)
    with pytest.raises(RetentionRLError, match="not a run directory"):
        train(_cfg(), tiny_sim, tmp_path / "nothing", resume=True, progress=False)


def test_load_trained_restores_the_policy_and_merges_eval_overrides(tiny_sim, tmp_path):
    """What `retentionrl evaluate` and benchmarks/reevaluate.py score: the run's frozen policy, under its own
    evaluation protocol or one merged over it."""
    from retentionrl.evaluation.protocol import evaluate_policy
    from retentionrl.training import load_trained

    summary = train(_cfg(total_steps=20), tiny_sim, tmp_path / "r", progress=False)
    cfg, agent = load_trained(str(tmp_path / "r"), tiny_sim)
    assert cfg.eval_config().n_users == 16
    assert evaluate_policy(agent, tiny_sim, cfg.eval_config())["mean"] == summary["eval"]
    cfg2, _ = load_trained(str(tmp_path / "r"), tiny_sim, {"n_users": 4, "n_episodes": 8})
    ev = cfg2.eval_config()
    assert (ev.n_users, ev.n_episodes, ev.seeds) == (4, 8, [101, 102])  # merged, not replaced
    with pytest.raises(RetentionRLError, match="must be a mapping"):
        load_trained(str(tmp_path / "r"), tiny_sim, [4])
    with pytest.raises(RetentionRLError, match="n_user"):
        load_trained(str(tmp_path / "r"), tiny_sim, {"n_user": 4})
    with pytest.raises(RetentionRLError, match="not a run directory"):
        load_trained(str(tmp_path), tiny_sim)


def test_unknown_algorithm_and_agent_key(tiny_sim, tmp_path):
    with pytest.raises(RetentionRLError, match="unknown algorithm 'td4'"):
        train(_cfg(algo="td4"), tiny_sim, tmp_path / "a", progress=False)
    with pytest.raises(RetentionRLError, match="unknown key 'lr'"):
        train(_cfg(agent={"lr": 0.1}), tiny_sim, tmp_path / "b", progress=False)


def test_same_seed_same_numbers(tiny_sim, tmp_path):
    a = train(_cfg(total_steps=20), tiny_sim, tmp_path / "a", progress=False)
    b = train(_cfg(total_steps=20), tiny_sim, tmp_path / "b", progress=False)
    assert a["eval"] == b["eval"]


def test_td3_learns_the_sign_of_the_fusion_weights(tiny_sim, tmp_path):
    """Trained on the immediate reward, TD3 must beat the policy it explored with (uniform weights in
    [-1, 1]^7, which often rank the least clickable items first). The full check against a synthetic env with a
    known best action is the harness issue's."""
    from retentionrl.agents.base import Agent
    from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy

    class Uniform(Agent):
        gen = torch.Generator().manual_seed(0)

        def act(self, obs, explore=False):
            return torch.rand(obs.user.shape[0], 7, generator=self.gen) * 2 - 1

    cfg = _cfg(total_steps=150, warmup_steps=20, eval_every=150, checkpoint_every=150,
               agent={"batch_size": 64, "hidden": [32], "state_dim": 32, "token_dim": 16, "actor_lr": 1e-3,
                      "retention_weight": 0.0, "immediate_weight": 1.0, "gamma": 0.0})
    trained = train(cfg, tiny_sim, tmp_path / "td3", progress=False)
    base = evaluate_policy(Uniform(), tiny_sim, EvalConfig(preset="kuaisim", env_overrides={"max_sessions": 2}, **EVAL))
    assert trained["eval"]["click_rate"] > base["mean"]["click_rate"] + 0.05


def test_every_shipped_train_config_builds_its_agent(tiny_sim):
    """configs/train/*.yaml: valid keys for the loop and for the agent (a typo is an error, not ignored)."""
    from pathlib import Path

    from retentionrl.agents import make_agent
    from retentionrl.config import from_dict, load_config
    from retentionrl.training import trainer_for

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "train").glob("**/*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        raw = load_config(path)
        cfg = from_dict(trainer_for(raw["algo"], raw.get("loop"), str(path))[0], raw, str(path))
        make_agent(cfg.algo, tiny_sim, cfg.agent, seed=0)


def test_config_extends_merges_over_its_parent_and_refuses_cycles(tmp_path):
    from retentionrl.config import ConfigError, load_config

    (tmp_path / "base.yaml").write_text("algo: td3\ntotal_steps: 100\nagent: {gamma: 0.9, tau: 0.01}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../base.yaml\nagent: {tau: 0.5}\n")
    assert load_config(tmp_path / "sub" / "child.yaml") == {"algo": "td3", "total_steps": 100,
                                                            "agent": {"gamma": 0.9, "tau": 0.5}}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "c.yaml")


def test_typo_in_train_config_is_an_error():
    from retentionrl.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="unknown key 'total_step'"):
        from_dict(TrainConfig, {"total_step": 10})


def test_config_extends_must_name_a_file(tmp_path):
    from retentionrl.config import ConfigError, load_config

    (tmp_path / "bad.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'extends' must be a file name"):
        load_config(tmp_path / "bad.yaml")


def test_reevaluate_script_gives_one_line_errors(tiny_sim, tmp_path, monkeypatch, capsys):
    """benchmarks/reevaluate.py: bad --eval or a non-run directory ends with one ``error:`` line, no traceback."""
    import runpy
    import sys

    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "reevaluate.py")
    train(_cfg(total_steps=10), tiny_sim, tmp_path / "r", progress=False)
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    for argv, message in [([str(tmp_path / "r"), "--eval", "{n_users: "], "--eval is not YAML"),
                          ([str(tmp_path / "r"), "--eval", "[4]"], "must be a mapping"),
                          ([str(tmp_path), "--eval", "{}"], "not a run directory")]:
        monkeypatch.setattr(sys, "argv", ["reevaluate.py", *argv, "--simulator", bundle])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(script, run_name="__main__")
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(sys, "argv", ["reevaluate.py", str(tmp_path / "r"), "--eval",  # the run's own bundle
                                      "{n_users: 4, n_episodes: 4}"])
    runpy.run_path(script, run_name="__main__")
    assert "return_time" in capsys.readouterr().out
    other = type(tiny_sim)(tiny_sim.response, tiny_sim.leave_model, tiny_sim.return_model, dict(tiny_sim.tensors),
                           {**tiny_sim.meta, "reference_reward": 0.0}, tiny_sim.build_config).save(tmp_path / "b2")
    monkeypatch.setattr(sys, "argv", ["reevaluate.py", str(tmp_path / "r"), "--simulator", str(other)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name="__main__")
    assert str(e.value).startswith("error: ") and tiny_sim.fingerprint[:16] in str(e.value)
