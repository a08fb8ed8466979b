"""Export to ONNX and TorchScript: the exported graphs act as Agent.predict does, without
pylander; and the CLI's errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pylander import reference
from pylander.agent import Agent
from pylander.export import export, main


@pytest.fixture(scope="module")
def agent(run_dir):
    return Agent.load(run_dir)


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory):
    """The ONNX export of the run, made by the CLI (the slow part: about 15 s of first use)."""
    path = tmp_path_factory.mktemp("onnx") / "policy.onnx"
    assert main([str(run_dir), "--format", "onnx", "--output", str(path)]) == 0
    return path


def run_without_pylander(script: str, *args) -> dict:
    """Run ``script`` in a fresh, isolated interpreter where pylander (and, for ONNX, torch)
    cannot be imported; returns the JSON it prints."""
    blocker = "import sys\nsys.modules['pylander'] = None\n"
    done = subprocess.run(
        [sys.executable, "-I", "-c", blocker + textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


ONNX_CHECK = """
    sys.modules["torch"] = None  # the ONNX file must run on onnxruntime alone
    import json
    import numpy as np
    import onnxruntime

    model, obs_file, out_file = sys.argv[1:]
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    obs = np.load(obs_file)
    logits, actions = session.run(["logits", "actions"], {"obs": obs})
    _, one = session.run(["logits", "actions"], {"obs": obs[:1]})
    np.savez(out_file, logits=logits, actions=actions, one=one)
    meta = session.get_modelmeta().custom_metadata_map
    print(json.dumps({"meta": meta, "dtypes": [str(logits.dtype), str(actions.dtype)]}))
"""


def run_onnx(model, observations, tmp_path) -> tuple[dict, dict]:
    np.save(tmp_path / "obs.npy", observations)
    info = run_without_pylander(ONNX_CHECK, model, tmp_path / "obs.npy", tmp_path / "out.npz")
    return info, dict(np.load(tmp_path / "out.npz"))


def test_onnx_matches_predict_on_real_observations(agent, onnx_file, observations, tmp_path):
    info, out = run_onnx(onnx_file, observations, tmp_path)
    assert np.array_equal(out["actions"], agent.predict(observations))
    assert out["one"].tolist() == [agent.predict(observations[0])]  # the batch axis is dynamic
    np.testing.assert_allclose(out["logits"], agent.logits(observations).numpy(), atol=1e-5)
    # The policy standardises its observations (normalize_obs): the graph does it too.
    normalizer = agent.policy.net.normalizer
    assert normalizer is not None and normalizer.count.item() > 0
    raw = normalizer.__class__(4)  # identity statistics
    assert not np.allclose(
        out["logits"],
        agent.policy.net.actor(raw(torch.as_tensor(observations))).detach().numpy(),
        atol=1e-3,
    )
    assert info["dtypes"] == ["float32", "int64"]
    assert info["meta"]["pylander.env_id"] == "CartPole-v1"
    assert info["meta"]["pylander.obs_size"] == "4"


def test_onnx_export_includes_the_observation_transform(observations, tmp_path):
    # The notebook's network (log-probabilities out), behind a transform that changes actions.
    torch.manual_seed(3)
    net = reference.PolicyNetwork((4, 2))
    transform = torch.nn.Linear(4, 4)
    agent = Agent(net, "CartPole-v1", algo="seed", obs_transform=transform)
    with torch.no_grad():
        untransformed = net(torch.from_numpy(observations)).argmax(-1).numpy()
    assert not np.array_equal(agent.predict(observations), untransformed)
    path = export(agent, tmp_path / "seed.onnx")
    _, out = run_onnx(path, observations, tmp_path)
    assert np.array_equal(out["actions"], agent.predict(observations))


TORCHSCRIPT_CHECK = """
    import json
    import numpy as np
    import torch

    model, obs_file = sys.argv[1:]
    extra = {"pylander.json": ""}
    policy = torch.jit.load(model, _extra_files=extra)
    obs = torch.from_numpy(np.load(obs_file))
    with torch.no_grad():
        logits, actions = policy(obs)
        _, one = policy(obs[:1])
    print(json.dumps({"actions": actions.tolist(), "one": one.tolist(),
                      "logits": logits.tolist(), "meta": json.loads(extra["pylander.json"])}))
"""


def test_torchscript_matches_predict(agent, observations, tmp_path):
    path = export(agent, tmp_path / "policy.pt", "torchscript")
    np.save(tmp_path / "obs.npy", observations)
    out = run_without_pylander(TORCHSCRIPT_CHECK, path, tmp_path / "obs.npy")
    assert out["actions"] == agent.predict(observations).tolist()
    assert out["one"] == [agent.predict(observations[0])]
    np.testing.assert_allclose(out["logits"], agent.logits(observations).numpy(), atol=1e-6)
    assert out["meta"]["env_id"] == "CartPole-v1" and out["meta"]["num_actions"] == 2


def test_default_output_is_beside_the_checkpoint(run_dir, tmp_path, capsys):
    shutil.copy(run_dir / "checkpoint.pt", tmp_path / "checkpoint.pt")
    assert main([str(tmp_path), "--format", "torchscript"]) == 0
    written = tmp_path / "checkpoint.torchscript.pt"
    assert written.is_file()
    assert capsys.readouterr().out.startswith(f"wrote {written}: TorchScript")
    assert {p.name for p in tmp_path.iterdir()} == {written.name, "checkpoint.pt"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing.pt"], "no checkpoint at"),
        (["{tmp}"], "neither best.pt nor checkpoint.pt"),
        (
            ["{run}", "--format", "tflite"],
            "--format must be one of onnx, torchscript, got 'tflite'",
        ),
        (["{run}", "--output", "{tmp}/no/such/dir/p.onnx"], "folder .* does not exist"),
        (["{run}", "--output", "{run}/config.toml/p.onnx"], "folder .* is not a folder"),
        (["{run}", "--output", "{tmp}"], "is a directory; give a file name"),
        (
            ["{run}/best.pt", "--format", "torchscript", "--output", "{run}/best.pt"],
            "is the checkpoint itself",
        ),
    ],
    ids=[
        "missing",
        "empty-dir",
        "format",
        "no-folder",
        "folder-is-file",
        "output-is-dir",
        "overwrite",
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(run_dir, tmp_path, capsys, args, message):
    before = sorted(run_dir.iterdir())
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert re.search(message, captured.err), captured.err
    assert sorted(run_dir.iterdir()) == before and list(tmp_path.iterdir()) == []


def test_missing_onnx_packages_say_how_to_install(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    assert main([str(run_dir), "--output", str(tmp_path / "p.onnx")]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: ONNX export needs the onnxscript package, which is not installed: "
        "pip install 'pylander[export]'\n"
    )


def test_a_failed_write_leaves_no_file(agent, tmp_path, monkeypatch):
    import pylander.export as export_module

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(export_module._WRITERS, "torchscript", fail)
    with pytest.raises(ValueError, match="cannot write .*p.pt: No space left on device"):
        export(agent, tmp_path / "p.pt", "torchscript")
    assert list(tmp_path.iterdir()) == []
